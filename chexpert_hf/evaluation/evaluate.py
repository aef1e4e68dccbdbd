"""``chexpert-hf evaluate``: score a model on a prepared split, or score a predictions file as the leaderboard did.

Predictions files (``PRED.csv``) have a ``Study`` or a ``Path`` column and one score column per scored label (any
subset of the 14 CheXpert labels, named as in CheXpert's CSVs, in any order). A score is any finite real number:
probabilities, logits, or sums of several models' outputs, as leaderboard files hold; AUROC needs only their order,
and ``metrics.json`` says in ``scores_are_probabilities`` whether they all lie in [0, 1]. Ground truth (``GT.csv``) is a
CheXpert ``valid.csv`` (image rows; a study's label is the maximum over its images) or the test set's study-level
``groundtruth.csv``. Scoring is per study by default: an image-level PRED is aggregated to studies by the maximum
probability over each study's images, as in the CheXpert paper. Studies (or images) are matched on
``patientNNNNN/studyN[/file]``, so ``CheXpert-v1.0-small/valid/...`` and ``valid/...`` name the same study.

Everything that could make a score wrong is an error naming the file, line and column: a GT study without a
prediction, a row repeated, a score that is not a finite number, a column that is not a CheXpert label.
Predictions for studies that are not in GT are not scored; they are counted and reported.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexpert_hf.data.chexpert_csv import (
    CheXpertFormatError,
    CsvTable,
    label_columns,
    parse_labels,
    read_table,
    split_image_path,
    split_study_path,
)
from chexpert_hf.evaluation.metrics import BOOTSTRAP_RESAMPLES, evaluation_targets, score, scored_rows
from chexpert_hf.evaluation.reports import write_reports
from chexpert_hf.labels import CHEXPERT_LABELS, canonical_label
from chexpert_hf.outputs import PREDICTIONS_CSV, RECIPE_YAML
from chexpert_hf.utils import atomic_write

logger = logging.getLogger(__name__)

PROBABILITY_FORMAT = "%.17g"  # enough digits to read back the exact float64
_SHOWN = 5  # rows or studies named in an error message


@dataclass
class KeyedRows:
    """Rows of a predictions or ground-truth file, keyed by study and (for image rows) image."""

    path: Path
    level: str  # "image" or "study"
    study: np.ndarray  # "patientNNNNN/studyN" per row
    image: np.ndarray | None  # "patientNNNNN/studyN/file" per row (image level only)
    values: np.ndarray  # (rows, labels): probabilities, or raw labels (1/0/-1/NaN)
    labels: list[str]
    lines: list[int]

    @property
    def keys(self) -> np.ndarray:
        return self.image if self.level == "image" else self.study


@dataclass
class Scored:
    """What was scored: the scores and the rows they were computed on (for the ROC figure)."""

    scores: dict[str, Any]
    probabilities: np.ndarray
    targets: np.ndarray
    labels: list[str]


def _key_columns(table: CsvTable) -> tuple[str, str]:
    """``(level, column)`` of the key column: ``Path`` (images) or ``Study``; exactly one must be present."""
    path_column, study_column = table.column("Path"), table.column("Study")
    if path_column and study_column:
        raise CheXpertFormatError(
            f"{table.path}: has both a {path_column!r} and a {study_column!r} column; keep "
            "one (Path: one row per image; Study: one row per study)"
        )
    if not path_column and not study_column:
        raise CheXpertFormatError(
            f"{table.path}: no 'Study' or 'Path' column; the header is {list(table.frame.columns)}"
        )
    return ("image", path_column) if path_column else ("study", study_column)


def _chexpert_tail(path: str, parts: int) -> str:
    """The last ``parts`` components of a path: ``valid/patientN/studyN/file`` of the absolute path that
    ``chexpert-hf predict --output`` writes for an image inside a CheXpert tree."""
    return "/".join(path.strip().replace("\\", "/").rstrip("/").split("/")[-parts:])


def _parse_keys(table: CsvTable, level: str, column: str) -> tuple[np.ndarray, np.ndarray | None]:
    cells = table.frame[column].str.strip()
    if level == "image":
        parts = cells.map(lambda cell: split_image_path(cell) or split_image_path(_chexpert_tail(cell, 4)))
        expected = "[CheXpert-v1.0-small/]valid/patientNNNNN/studyN/viewN_frontal.jpg"
    else:
        parts = cells.map(lambda cell: split_study_path(cell) or split_study_path(_chexpert_tail(cell, 3)))
        expected = "[CheXpert-v1.0/]test/patientNNNNN/studyN"
    malformed = parts.isna().to_numpy()
    if malformed.any():
        row = int(np.argmax(malformed))
        raise CheXpertFormatError(
            f"{table.where(row, column)}: {cells.iat[row]!r} is not a CheXpert "
            f"{'image' if level == 'image' else 'study'} path (expected {expected})"
        )
    study = np.array([f"{p[1]}/{p[2]}" for p in parts], dtype=object)
    image = np.array([f"{p[1]}/{p[2]}/{p[3]}" for p in parts], dtype=object) if level == "image" else None
    keys = image if level == "image" else study
    repeated = pd.Series(keys).duplicated(keep=False).to_numpy()
    if repeated.any():
        first = keys[int(np.argmax(repeated))]
        lines = [table.lines[row] for row in np.flatnonzero(keys == first)]
        raise CheXpertFormatError(
            f"{table.path}: lines {lines} (column {column!r}) all name {first!r}; each {level} must appear once"
        )
    return study, image


def read_predictions(path: str | os.PathLike) -> KeyedRows:
    """A predictions file: its key column and its probability columns, validated (see the module doc)."""
    table = read_table(Path(path))
    level, key_column = _key_columns(table)
    label_columns: dict[str, str] = {}
    unknown = []
    for column in table.frame.columns:
        if column == key_column:
            continue
        label = canonical_label(column)
        if label is None:
            unknown.append(column)
        elif label in label_columns:
            raise CheXpertFormatError(
                f"{table.path}: columns {label_columns[label]!r} and {column!r} both name label {label!r}"
            )
        else:
            label_columns[label] = column
    if unknown:
        raise CheXpertFormatError(
            f"{table.path}: unknown column(s) {unknown}; a predictions file has a Study or "
            f"Path column and one probability column per CheXpert label, named among: "
            f"{', '.join(CHEXPERT_LABELS)}"
        )
    if not label_columns:
        raise CheXpertFormatError(
            f"{table.path}: no label column; expected probability columns named among: {', '.join(CHEXPERT_LABELS)}"
        )
    study, image = _parse_keys(table, level, key_column)
    labels = list(label_columns)
    values = np.empty((len(table.frame), len(labels)))
    for index, label in enumerate(labels):
        column = label_columns[label]
        cells = table.frame[column].str.strip()
        numbers = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers)
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(f"line {table.lines[row]}: {cells.iat[row]!r}" for row in rows[:_SHOWN])
            more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
            raise CheXpertFormatError(
                f"{table.path}, column {column!r}: {len(rows)} value(s) are not finite numbers "
                f"(a score may be any real number, but not NaN, infinite or text): {shown}{more}"
            )
        values[:, index] = numbers
    return KeyedRows(Path(path), level, study, image, values, labels, table.lines)


def read_groundtruth(path: str | os.PathLike) -> KeyedRows:
    """Ground truth: a CheXpert ``valid.csv`` (``Path``, image rows), the test set's ``groundtruth.csv`` (``Study``)
    or a training run's ``validation_labels.csv``, with raw labels (1 / 0 / -1 / blank) for the label columns it has
    (CheXpert's order); other columns (Sex, Age, ...) are not read."""
    table = read_table(Path(path))
    level, key_column = _key_columns(table)
    raw = parse_labels(table, require_all=False)
    found = label_columns(table, require_all=False)
    present = [index for index, label in enumerate(CHEXPERT_LABELS) if label in found]
    study, image = _parse_keys(table, level, key_column)
    labels = [CHEXPERT_LABELS[index] for index in present]
    return KeyedRows(Path(path), level, study, image, raw[:, present], labels, table.lines)


def groundtruth_from_prepared(
    data: str | os.PathLike, split: str = "validation", views: str = "all", cache_dir: str | None = None
) -> KeyedRows:
    """Ground truth from a prepared dataset's split (image rows, every label it was prepared with): what
    ``evaluate --model`` scores against, for predictions files."""
    from chexpert_hf.data.loading import load_prepared_split

    part = load_prepared_split(data, list(CHEXPERT_LABELS), split=split, views=views, cache_dir=cache_dir)
    paths = part.rows["path"][:]
    keys = [split_image_path(path) for path in paths]
    unreadable = [path for path, key in zip(paths, keys, strict=True) if key is None]
    if unreadable:
        raise CheXpertFormatError(f"{part.prepared}: {split} image path {unreadable[0]!r} is not a CheXpert path")
    study = np.array([f"{k[1]}/{k[2]}" for k in keys], dtype=object)
    image = np.array([f"{k[1]}/{k[2]}/{k[3]}" for k in keys], dtype=object)
    source = Path(f"{part.prepared}[{split}]")
    return KeyedRows(source, "image", study, image, part.raw, list(CHEXPERT_LABELS), list(range(len(paths))))


def _by_study(study: np.ndarray, values: np.ndarray, reduce: np.ufunc, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """One row per study, in order of first appearance, reducing its rows with ``reduce`` (``np.maximum`` for
    scores; ``np.fmax`` for targets, which ignores NaN unless every row is NaN)."""
    studies, first, inverse = np.unique(study, return_index=True, return_inverse=True)
    out = np.full((len(studies), values.shape[1]), fill)
    reduce.at(out, inverse.reshape(-1), values)
    order = np.argsort(first)
    return studies[order], out[order]


@dataclass
class Matched:
    """Predictions matched to ground truth: one row per ground-truth study (or image), in its order."""

    keys: np.ndarray  # "patientNNNNN/studyN" (or ".../file" per image)
    scores: np.ndarray  # (rows, labels of the predictions)
    targets: np.ndarray  # evaluation targets (1 / 0 / NaN = left out) for the same labels
    labels: list[str]
    unit: str  # "study" or "image"
    unscored: int  # predictions for studies (images) ground truth does not have


def match_to_groundtruth(pred: KeyedRows, truth: KeyedRows, *, per_image: bool = False) -> Matched:
    """Every ground-truth study (image) with its prediction: an image-level file is first reduced to studies by the
    maximum over a study's images (scores and labels alike). A study without a prediction, or a predicted label
    the ground truth has no column for, is an error naming it."""
    absent = [label for label in pred.labels if label not in truth.labels]
    if absent:
        raise CheXpertFormatError(
            f"{pred.path} scores label(s) {absent} but {truth.path} has no column for them; it has: "
            f"{', '.join(truth.labels)}"
        )
    columns = [truth.labels.index(label) for label in pred.labels]
    targets = evaluation_targets(truth.values[:, columns])
    if per_image:
        for rows in (pred, truth):
            if rows.level != "image":
                raise CheXpertFormatError(
                    f"{rows.path}: --per-image needs one row per image (a Path column); this file has one row per study"
                )
        pred_keys, pred_values = pred.image, pred.values
        truth_keys, truth_values, truth_lines = truth.image, targets, truth.lines
        unit = "image"
    else:
        if pred.level == "image":
            pred_keys, pred_values = _by_study(pred.study, pred.values, np.maximum, -np.inf)
        else:
            pred_keys, pred_values = pred.study, pred.values
        if truth.level == "image":
            truth_keys, truth_values = _by_study(truth.study, targets, np.fmax, np.nan)
            first_line = {}
            for study, line in zip(truth.study, truth.lines, strict=True):
                first_line.setdefault(study, line)
            truth_lines = [first_line[study] for study in truth_keys]
        else:
            truth_keys, truth_values, truth_lines = truth.study, targets, truth.lines
        unit = "study"
    position = {key: row for row, key in enumerate(pred_keys)}
    missing = [(key, line) for key, line in zip(truth_keys, truth_lines, strict=True) if key not in position]
    if missing:
        shown = ", ".join(f"{key} (line {line})" for key, line in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise CheXpertFormatError(
            f"{len(missing)} {unit}(ies) of {truth.path} have no prediction in {pred.path}: {shown}{more}"
        )
    matched = np.array([position[key] for key in truth_keys], dtype=np.int64)
    unscored = len(pred_keys) - len(matched)
    return Matched(np.asarray(truth_keys), pred_values[matched], truth_values, list(pred.labels), unit, unscored)


def score_predictions(
    predictions: str | os.PathLike,
    groundtruth: str | os.PathLike,
    *,
    per_image: bool = False,
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[Scored, dict[str, Any]]:
    """Score a predictions file against ground truth; returns the scores and a summary of the matching."""
    pred, truth = read_predictions(predictions), read_groundtruth(groundtruth)
    matched = match_to_groundtruth(pred, truth, per_image=per_image)
    if matched.unscored:
        logger.warning(
            "%d %s(s) of %s are not in %s and were not scored", matched.unscored, matched.unit, pred.path, truth.path
        )
    scores = score(
        matched.scores,
        matched.targets,
        matched.labels,
        study_ids=None if per_image else matched.keys,
        row_ids=matched.keys,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    summary = {
        "predictions": pred.path.name,
        "groundtruth": truth.path.name,
        "level": matched.unit,
        "unscored_predictions": int(matched.unscored),
    }
    return Scored(scores, matched.scores, matched.targets, matched.labels), summary


def write_predictions_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a predictions table with :func:`chexpert_hf.utils.atomic_write` (never a half-written file).

    Probabilities are written with 17 significant digits, which give back the exact float64: a confident study's
    probability (``0.99999999999987...``, from a logit near 30) stays apart from its neighbours', so scoring the
    file again (``evaluate --predictions``) gives what the model scored, bit for bit. Logits above about 36 have
    probability 1.0 in float64 too and tie in the file as in every score.
    """
    atomic_write(
        Path(path),
        lambda name: frame.to_csv(name, index=False, float_format=PROBABILITY_FORMAT, quoting=csv.QUOTE_MINIMAL),
    )


def groundtruth_frame(paths: Sequence[str], raw: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Raw labels (1 / 0 / -1 / NaN) per image in the format of CheXpert's ``valid.csv`` (``Path`` and one column
    per label, blank for NaN), which :func:`read_groundtruth` reads: a training run's ``validation_labels.csv``."""
    cells = {label: _label_cells(np.asarray(raw)[:, column]) for column, label in enumerate(labels)}
    return pd.DataFrame({"Path": list(paths), **cells})


def _label_cells(values: np.ndarray) -> list[str]:
    return ["" if np.isnan(value) else str(int(value)) for value in values.tolist()]


def predictions_frame(
    keys: Sequence[str], probabilities: np.ndarray, labels: Sequence[str], key_column: str = "Path"
) -> pd.DataFrame:
    """A predictions table in the format :func:`read_predictions` accepts, probabilities in float64 (see
    :func:`write_predictions_csv`)."""
    frame = pd.DataFrame(np.asarray(probabilities, dtype=np.float64), columns=list(labels))
    frame.insert(0, key_column, list(keys))
    return frame


def evaluate_model(
    model_name_or_path: str,
    data: str | os.PathLike,
    *,
    split: str = "validation",
    per_image: bool = False,
    views: str = "all",
    batch_size: int = 64,
    device: str | None = None,
    trust_remote_code: bool = False,
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    prepare_image_size: int = 320,
    data_cache_dir: str | None = None,
    progress: bool = True,
) -> tuple[Scored, pd.DataFrame, dict]:
    """Run a model over a prepared split and score it; returns the scores, the per-image predictions table and a
    summary of what was scored. ``data`` is a prepared folder, or a CheXpert root prepared (once, into the cache)
    at ``prepare_image_size``."""
    from chexpert_hf.data.loading import check_views, load_prepared_split
    from chexpert_hf.evaluation.inference import load_classifier, predict_split

    check_views(views)  # before the model is loaded
    loaded = load_classifier(model_name_or_path, trust_remote_code=trust_remote_code, device=device)
    part = load_prepared_split(
        data, loaded.labels, split=split, views=views, image_size=prepare_image_size, cache_dir=data_cache_dir
    )
    rows, raw = part.rows, part.raw
    logger.info("evaluating %s on %d %s images of %s", model_name_or_path, len(rows), split, part.prepared)
    probabilities = predict_split(loaded, rows, batch_size=batch_size, progress=progress)
    targets = evaluation_targets(raw)
    studies = np.asarray(rows["study_id"][:])
    paths = rows["path"][:]
    image_keys = np.array(
        [f"{p[1]}/{p[2]}/{p[3]}" if (p := split_image_path(path)) else path for path in paths], dtype=object
    )
    # float64 probabilities from the logits, as the Trainer's SplitScorer computes them: the same score
    scores = score(
        probabilities,
        targets,
        loaded.labels,
        study_ids=None if per_image else studies,
        row_ids=image_keys,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    scored_probabilities, scored_targets = scored_rows(probabilities, targets, None if per_image else studies)
    summary = {
        "model": _public_name(model_name_or_path),
        "split": split,
        "views": views,
        "level": "image" if per_image else "study",
        "images": len(rows),
    }
    return (
        Scored(scores, scored_probabilities, scored_targets, loaded.labels),
        predictions_frame(paths, probabilities, loaded.labels),
        summary,
    )


def recipe_settings(model_name_or_path: str) -> dict[str, Any]:
    """``views`` and ``prepare_image_size`` from a local model folder's ``recipe.yaml`` (how it was validated during
    training), for the evaluation defaults; empty for a Hub id or a folder without one."""
    import yaml

    recipe = Path(model_name_or_path) / RECIPE_YAML
    if not recipe.is_file():
        return {}
    values = yaml.safe_load(recipe.read_text()) or {}
    settings = {}
    if values.get("views") in ("all", "frontal"):
        settings["views"] = values["views"]
    if isinstance(values.get("prepare_image_size"), int):
        settings["prepare_image_size"] = values["prepare_image_size"]
    return settings


def _public_name(model_name_or_path: str) -> str:
    """A Hub id as it is; a local folder by its name only (reports never hold absolute paths)."""
    path = Path(model_name_or_path)
    return path.resolve().name if path.exists() else str(model_name_or_path)


def write_evaluation(
    output: str | os.PathLike,
    scored: Scored,
    summary: dict[str, Any],
    *,
    title: str,
    predictions: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """``metrics.json``, ``metrics.md``, ``roc.png`` (and ``predictions.csv``) in ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    details = [f"{key}: {value}" for key, value in summary.items()]
    paths = write_reports(
        output,
        scored.scores,
        scored.probabilities,
        scored.targets,
        scored.labels,
        title=title,
        details=details,
        extra=summary,
    )
    if predictions is not None:
        paths[PREDICTIONS_CSV] = output / PREDICTIONS_CSV
        write_predictions_csv(paths[PREDICTIONS_CSV], predictions)
    return paths
