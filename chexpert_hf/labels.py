"""CheXpert label names and the uncertainty policies applied to raw labels at training time.

Raw labels follow the CheXpert CSV convention: ``1`` positive, ``0`` negative, ``-1`` uncertain and
``NaN`` for a blank cell (the finding was not mentioned). A policy turns them into training targets in
``[0, 1]`` with ``NaN`` marking entries that must be left out of the loss.

Policies address labels by name, never by column position, so a label matrix in any column order
(or a subset such as the five competition labels) gets the treatment written for each label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: The 14 observations in the column order of CheXpert's ``train.csv``.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: The five labels of the CheXpert competition; the headline AUROC is their mean.
COMPETITION_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

_BY_KEY = {name.lower(): name for name in CHEXPERT_LABELS}


def canonical_label(name: str) -> str | None:
    """The canonical CheXpert name for ``name`` (``Pleural_Effusion``, ``pleural effusion`` ...), or None."""
    return _BY_KEY.get(" ".join(name.replace("_", " ").split()).lower())


def check_label_names(label_names: Sequence[str]) -> list[str]:
    """Canonical names for ``label_names``; an unknown or repeated name is a ValueError that lists the known ones."""
    canonical = []
    for name in label_names:
        found = canonical_label(name)
        if found is None:
            raise ValueError(f"unknown CheXpert label {name!r}; known labels: {', '.join(CHEXPERT_LABELS)}")
        if found in canonical:
            raise ValueError(f"label {name!r} appears twice in {list(label_names)}")
        canonical.append(found)
    return canonical


def reorder_labels(labels: np.ndarray, from_names: Sequence[str], to_names: Sequence[str]) -> np.ndarray:
    """Columns of ``labels`` (named ``from_names``) picked by name into the order of ``to_names``."""
    source = check_label_names(from_names)
    target = check_label_names(to_names)
    missing = [name for name in target if name not in source]
    if missing:
        raise ValueError(f"labels {missing} are not among the available labels {source}")
    return np.asarray(labels)[..., [source.index(name) for name in target]]


# --- uncertainty policies ------------------------------------------------------------------------------
# Each returns the target value for `count` uncertain entries of one label.
UncertainValues = Callable[[str, int, np.random.Generator, tuple[float, float]], np.ndarray]

#: Labels that U-Ones helps in the CheXpert paper's ablation; U-Zeros is better for the rest.
U_MIXED_ONES: frozenset[str] = frozenset({"Atelectasis", "Edema"})


def _u_ignore(label: str, count: int, rng: np.random.Generator, smooth_range: tuple[float, float]) -> np.ndarray:
    return np.full(count, np.nan, dtype=np.float32)


def _u_zeros(label: str, count: int, rng: np.random.Generator, smooth_range: tuple[float, float]) -> np.ndarray:
    return np.zeros(count, dtype=np.float32)


def _u_ones(label: str, count: int, rng: np.random.Generator, smooth_range: tuple[float, float]) -> np.ndarray:
    return np.ones(count, dtype=np.float32)


def _u_mixed(label: str, count: int, rng: np.random.Generator, smooth_range: tuple[float, float]) -> np.ndarray:
    return np.full(count, 1.0 if label in U_MIXED_ONES else 0.0, dtype=np.float32)


def _u_smooth(label: str, count: int, rng: np.random.Generator, smooth_range: tuple[float, float]) -> np.ndarray:
    low, high = smooth_range
    return rng.uniform(low, high, size=count).astype(np.float32)


UNCERTAINTY_POLICIES: dict[str, UncertainValues] = {
    "u_ignore": _u_ignore,  # uncertain entries are masked out of the loss
    "u_zeros": _u_zeros,  # uncertain -> negative
    "u_ones": _u_ones,  # uncertain -> positive
    "u_mixed": _u_mixed,  # U-Ones for Atelectasis and Edema, U-Zeros for the rest
    "u_smooth": _u_smooth,  # uncertain -> a random soft target in smooth_range (label smoothing)
}

BLANK_POLICIES = ("negative", "mask")


def apply_uncertainty_policy(
    labels: np.ndarray,
    label_names: Sequence[str],
    policy: str,
    *,
    blank: str = "negative",
    smooth_range: tuple[float, float] = (0.55, 0.85),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Training targets from raw labels (1 / 0 / -1 / NaN); ``NaN`` in the result means "leave out of the loss".

    ``labels`` has shape ``(..., len(label_names))``. ``blank`` decides what a blank cell becomes:
    ``"negative"`` (0, the usual reading of an unmentioned finding) or ``"mask"``.
    """
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(f"unknown uncertainty policy {policy!r}; choose one of {', '.join(UNCERTAINTY_POLICIES)}")
    if blank not in BLANK_POLICIES:
        raise ValueError(f"unknown blank policy {blank!r}; choose one of {', '.join(BLANK_POLICIES)}")
    low, high = smooth_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"smooth_range must satisfy 0 <= low <= high <= 1, got {smooth_range}")
    names = check_label_names(label_names)
    raw = np.asarray(labels, dtype=np.float32)
    if raw.shape[-1] != len(names):
        raise ValueError(f"labels have {raw.shape[-1]} columns but {len(names)} label names were given")
    bad = ~(np.isnan(raw) | np.isin(raw, (-1.0, 0.0, 1.0)))
    if bad.any():
        raise ValueError(f"raw labels must be 1, 0, -1 or NaN; found {sorted(set(raw[bad].tolist()))[:5]}")
    rng = rng if rng is not None else np.random.default_rng()
    uncertain_values = UNCERTAINTY_POLICIES[policy]

    targets = raw.copy()
    targets[np.isnan(raw)] = np.nan if blank == "mask" else 0.0
    for column, name in enumerate(names):
        uncertain = raw[..., column] == -1.0
        count = int(uncertain.sum())
        if count:
            targets[..., column][uncertain] = uncertain_values(name, count, rng, smooth_range)
    return targets
