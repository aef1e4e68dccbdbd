"""Performance per subgroup (sex, age band, view): the check reviewers ask for since Seyyed-Kalantari et al. (Nature
Medicine 2021) found chest X-ray classifiers under-diagnose some groups more than others.

Groups
------
* ``sex``: as recorded (``Male``, ``Female``); a blank or ``Unknown`` sex is unassigned;
* ``age``: the bands of :data:`AGE_BANDS` (0–39, 40–59, 60–79, 80+); an unknown age is unassigned;
* ``view``: the projection of the frontal images, ``AP`` or ``PA``, ``mixed`` when a study has both; a study with no
  AP/PA frontal image (lateral only, or LL/RL) is unassigned.

At study level (:func:`study_groups`) a study's sex and age are those of its first image and its view comes from all
its frontal images; at image level (:func:`image_groups`) each image has its own.

Scores
------
:func:`subgroup_scores` scores each group's rows with :func:`chexpert_hf.evaluation.metrics.score` (the project's one
AUROC scorer, with its bootstrap intervals), for the competition labels only. A group with fewer than
:data:`MIN_CLASS` positives or negatives for a label is *too small* for that label and is not scored there: its AUROC
would be noise. With decision thresholds (the model's saved ones), each group also gets the false-negative rate at
the threshold (``1 − sensitivity``, score at or above the threshold called positive, as
:func:`chexpert_hf.evaluation.thresholds.operating_point` counts): the under-diagnosis rate of the paper above.

The grouping is a plain group-by, not fairlearn's ``MetricFrame``: ``score`` takes all labels' columns at once and
returns nested results with intervals, where ``MetricFrame`` applies a scalar metric to one ``(y_true, y_pred)`` pair.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chexpert_hf.evaluation.metrics import BOOTSTRAP_RESAMPLES, score
from chexpert_hf.evaluation.thresholds import operating_point
from chexpert_hf.labels import COMPETITION_LABELS, canonical_label, check_label_names
from chexpert_hf.outputs import SUBGROUPS_JSON, SUBGROUPS_MD, SUBGROUPS_PNG
from chexpert_hf.utils import atomic_write, json_safe, markdown_table, write_text

#: The attributes grouped by, in report order.
ATTRIBUTES: tuple[str, ...] = ("sex", "age", "view")
#: Age bands: ``(lowest age, highest age or None, name)``, both ends included.
AGE_BANDS: tuple[tuple[int, int | None, str], ...] = (
    (0, 39, "0–39"),
    (40, 59, "40–59"),
    (60, 79, "60–79"),
    (80, None, "80+"),
)
#: A group needs at least this many positives and this many negatives for a label to be scored on it.
MIN_CLASS = 10
#: The view groups, in report order.
VIEW_GROUPS: tuple[str, ...] = ("AP", "PA", "mixed")

_PROJECTIONS = ("AP", "PA")
_UNASSIGNED_SEX = ("", "unknown")


@dataclass
class ImageMeta:
    """What is known of each image (one entry per image, in the rows' order)."""

    sex: Sequence[str | None]
    age: Sequence[int | None]
    view: Sequence[str]  # "frontal" / "lateral" (any case)
    ap_pa: Sequence[str]  # "AP", "PA", "LL", "RL" or ""

    def __len__(self) -> int:
        return len(self.sex)

    def check(self) -> int:
        """The number of images; a ValueError when the fields differ in length."""
        lengths = {name: len(getattr(self, name)) for name in ("sex", "age", "view", "ap_pa")}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"ImageMeta fields differ in length: {lengths}")
        return lengths["sex"]


def age_band(age: int | float | None) -> str | None:
    """The name of the band of :data:`AGE_BANDS` that holds ``age``; None for an unknown (None, NaN) or negative age."""
    if age is None:
        return None
    value = float(age)
    if math.isnan(value) or value < 0:
        return None
    for low, high, name in AGE_BANDS:
        if value >= low and (high is None or value < high + 1):
            return name
    return None


def _sex_group(sex: str | None) -> str | None:
    if sex is None or (isinstance(sex, float) and math.isnan(sex)):
        return None
    text = str(sex).strip()
    return None if text.lower() in _UNASSIGNED_SEX else text


def _projection(view: str | None, ap_pa: str | None) -> str | None:
    """``AP`` or ``PA`` for a frontal image with that projection, else None."""
    if str(view or "").strip().lower() != "frontal":
        return None
    projection = str(ap_pa or "").strip().upper()
    return projection if projection in _PROJECTIONS else None


def _view_group(projections: set[str]) -> str | None:
    if not projections:
        return None
    return "mixed" if len(projections) > 1 else next(iter(projections))


def _check_attributes(attributes: Sequence[str]) -> list[str]:
    unknown = [name for name in attributes if name not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; choose from {', '.join(ATTRIBUTES)}")
    return list(attributes)


def image_groups(meta: ImageMeta, attributes: Sequence[str] = ATTRIBUTES) -> dict[str, np.ndarray]:
    """Each image's group per attribute (object arrays, None = unassigned), for image-level scoring; an image's view
    is its own projection when it is a frontal AP or PA image."""
    attributes = _check_attributes(attributes)
    meta.check()
    groups: dict[str, np.ndarray] = {}
    for attribute in attributes:
        if attribute == "sex":
            values = [_sex_group(sex) for sex in meta.sex]
        elif attribute == "age":
            values = [age_band(age) for age in meta.age]
        else:
            values = [_projection(view, ap_pa) for view, ap_pa in zip(meta.view, meta.ap_pa, strict=True)]
        groups[attribute] = _object_array(values)
    return groups


def study_groups(
    study_ids: Sequence[Any] | np.ndarray, meta: ImageMeta, attributes: Sequence[str] = ATTRIBUTES
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The studies (in order of first appearance, as :func:`~chexpert_hf.evaluation.metrics.aggregate_studies` gives
    them) and each study's group per attribute (object arrays, None = unassigned).

    Sex and age are the study's first image's; the view is ``AP`` or ``PA`` from the study's frontal images,
    ``mixed`` when it has both, None when it has no AP/PA frontal image.
    """
    attributes = _check_attributes(attributes)
    ids = np.asarray(study_ids)
    rows = meta.check()
    if ids.shape != (rows,):
        raise ValueError(f"study_ids has shape {ids.shape}; expected one id per image, ({rows},)")
    if rows == 0:
        return ids, {attribute: _object_array([]) for attribute in attributes}
    _, first_rows, inverse = np.unique(ids, return_index=True, return_inverse=True)
    appearance = np.argsort(first_rows, kind="stable")
    rank = np.empty_like(appearance)
    rank[appearance] = np.arange(len(appearance))
    study = rank[inverse.reshape(-1)]  # each image's study, numbered by first appearance
    first = first_rows[appearance]  # each study's first image
    per_image = image_groups(meta, attributes)
    groups: dict[str, np.ndarray] = {}
    for attribute in attributes:
        if attribute == "view":
            projections: list[set[str]] = [set() for _ in first]
            for image, projection in enumerate(per_image["view"]):
                if projection is not None:
                    projections[study[image]].add(projection)
            groups[attribute] = _object_array([_view_group(found) for found in projections])
        else:
            groups[attribute] = _object_array(list(per_image[attribute][first]))
    return ids[first], groups


def scored_groups(
    study_ids: Sequence[Any] | np.ndarray, meta: ImageMeta, per_image: bool, attributes: Sequence[str] = ATTRIBUTES
) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The group of every row the scorer scores: with ``per_image`` each image's own (:func:`image_groups`; no
    study order, None), else each study's (:func:`study_groups`), with the studies in the order the scorer puts
    them (first appearance)."""
    if per_image:
        return None, image_groups(meta, attributes)
    return study_groups(study_ids, meta, attributes)


def _object_array(values: Sequence[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def _group_name(value: Any) -> str | None:
    """A row's group as a string; None (or NaN, or a blank string) is unassigned."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _group_order(attribute: str, names: set[str]) -> list[str]:
    """Groups in their natural order: age bands in band order, views AP, PA, mixed, others alphabetically."""
    known = {"age": [name for _, _, name in AGE_BANDS], "view": list(VIEW_GROUPS)}.get(attribute, [])
    return [name for name in known if name in names] + sorted(names - set(known))


def subgroup_scores(
    scores: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    groups: Mapping[str, Sequence[Any] | np.ndarray],
    thresholds: Mapping[str, float] | None = None,
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    unit: str = "study",
    *,
    row_ids: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, Any]:
    """AUROC (with its bootstrap interval) and, with ``thresholds``, the false-negative rate per group and label.

    ``scores`` and ``targets`` (0, 1, NaN = left out) are the scored rows, ``(N, L)``, with ``labels`` naming the
    columns: studies (aggregated, ``unit="study"``) or images (``unit="image"``). ``groups`` maps an attribute to
    each row's group (None = unassigned). Only the competition labels are scored. ``row_ids`` (the study ids, say)
    are handed to :func:`~chexpert_hf.evaluation.metrics.score` so that the intervals do not depend on the row
    order.

    Returns ``{"attributes": {attribute: {"groups": {group: {"n", "per_label", "mean_auroc", "mean_covers"}},
    "unassigned", "worst", "gap"}}, "min_class", "labels", "thresholds", "unit", "n_bootstrap", "seed"}``;
    ``per_label`` holds ``positives``, ``negatives`` and either ``too_small: True`` or ``auroc``, ``auroc_ci95``
    (and ``false_negative_rate``, ``false_negative_rate_ci95`` with thresholds; None for a label without one).
    ``worst`` and ``gap`` (max − min AUROC) cover the labels scored on at least two groups.
    """
    if unit not in ("study", "image"):
        raise ValueError(f"unknown unit {unit!r}; choose study or image")
    names = check_label_names(labels)
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if scores.ndim != 2 or targets.shape != scores.shape or scores.shape[1] != len(names):
        raise ValueError(
            f"scores {scores.shape} and targets {targets.shape} must both be (N, {len(names)}), one column per label"
        )
    rows = len(scores)
    ids = None if row_ids is None else np.asarray(row_ids)
    if ids is not None and ids.shape != (rows,):
        raise ValueError(f"row_ids has shape {ids.shape}; expected one id per row, ({rows},)")
    by_label = None
    if thresholds is not None:
        by_label = {canonical_label(str(label)) or str(label): float(value) for label, value in thresholds.items()}
    scored = [name for name in COMPETITION_LABELS if name in names]
    columns = [names.index(name) for name in scored]
    scores, targets = scores[:, columns], targets[:, columns]

    attributes: dict[str, Any] = {}
    for attribute, values in groups.items():
        per_row = [_group_name(value) for value in values]
        if len(per_row) != rows:
            raise ValueError(f"groups[{attribute!r}] has {len(per_row)} entries; expected one per row ({rows})")
        member = np.array([name is not None for name in per_row], dtype=bool)
        found = {name for name in per_row if name is not None}
        results = {}
        for group in _group_order(attribute, found):
            picked = np.flatnonzero([name == group for name in per_row])
            results[group] = _score_group(
                scores[picked],
                targets[picked],
                scored,
                by_label,
                n_bootstrap,
                seed,
                None if ids is None else ids[picked],
            )
        worst, gap = {}, {}
        for label in scored:
            aurocs = {
                group: entry["per_label"][label]["auroc"]
                for group, entry in results.items()
                if "auroc" in entry["per_label"][label]
            }
            if len(aurocs) >= 2:
                worst[label] = min(aurocs, key=aurocs.get)  # first of ties in the groups' order
                gap[label] = float(max(aurocs.values()) - min(aurocs.values()))
        attributes[attribute] = {
            "groups": results,
            "unassigned": int(rows - member.sum()),
            "worst": worst,
            "gap": gap,
        }
    return {
        "attributes": attributes,
        "min_class": MIN_CLASS,
        "labels": scored,
        "thresholds": by_label is not None,
        "unit": unit,
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
    }


def _score_group(
    scores: np.ndarray,
    targets: np.ndarray,
    labels: list[str],
    thresholds: dict[str, float] | None,
    n_bootstrap: int,
    seed: int,
    row_ids: np.ndarray | None,
) -> dict[str, Any]:
    per_label: dict[str, dict[str, Any]] = {}
    eligible = []
    for column, label in enumerate(labels):
        truth = targets[:, column]
        positives, negatives = int((truth == 1.0).sum()), int((truth == 0.0).sum())
        per_label[label] = {"positives": positives, "negatives": negatives}
        if positives < MIN_CLASS or negatives < MIN_CLASS:
            per_label[label]["too_small"] = True
        else:
            eligible.append(column)
    if eligible:
        result = score(
            scores[:, eligible],
            targets[:, eligible],
            [labels[column] for column in eligible],
            row_ids=row_ids,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for column in eligible:
            label = labels[column]
            entry = per_label[label]
            entry["auroc"] = result["per_label"][label]["auroc"]
            entry["auroc_ci95"] = result["per_label"][label].get("auroc_ci95")
            if thresholds is not None:
                entry.update(_false_negative_rate(scores[:, column], targets[:, column], thresholds.get(label)))
    aurocs = [per_label[label]["auroc"] for label in labels if "auroc" in per_label[label]]
    return {
        "n": len(scores),
        "per_label": per_label,
        "mean_auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
        "mean_covers": len(aurocs),
    }


def _false_negative_rate(scores: np.ndarray, truth: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """FNR = fn / (tp + fn) at ``threshold`` (score >= threshold called positive) and its interval: one minus the
    sensitivity's Wilson interval, reversed."""
    if threshold is None:
        return {"false_negative_rate": None, "false_negative_rate_ci95": None, "false_negatives": None}
    point = operating_point(scores, truth, threshold)
    sensitivity, interval = point["sensitivity"], point["sensitivity_ci95"]
    return {
        "false_negative_rate": None if sensitivity is None else 1.0 - sensitivity,
        "false_negative_rate_ci95": None if interval is None else [1.0 - interval[1], 1.0 - interval[0]],
        "false_negatives": point["fn"],
    }


# --- reports ------------------------------------------------------------------------------------------------------

_TITLES = {"sex": "Sex", "age": "Age band", "view": "View (frontal projection)"}


def _value(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _interval(interval: Sequence[float] | None, digits: int = 3) -> str:
    if not interval or any(value is None or math.isnan(value) for value in interval):
        return ""
    return f"{interval[0]:.{digits}f}–{interval[1]:.{digits}f}"


def _with_interval(value: float | None, interval: Sequence[float] | None) -> str:
    text, spread = _value(value), _interval(interval)
    return f"{text} ({spread})" if spread else text


def _too_small(entry: dict[str, Any]) -> str:
    return f"too small ({entry['positives']} pos / {entry['negatives']} neg)"


def _units(result: dict[str, Any]) -> str:
    return "images" if result.get("unit") == "image" else "studies"


def _mean_cell(group: dict[str, Any], labels: Sequence[str]) -> str:
    text = _value(group["mean_auroc"])
    covers = group["mean_covers"]
    return text if covers == len(labels) or covers == 0 else f"{text} ({covers} of {len(labels)})"


def subgroups_markdown(result: dict[str, Any], title: str) -> str:
    """``subgroups.md``: the method, a table per attribute (AUROC with interval per competition label, the mean, the
    false-negative rates with thresholds), the worst group and the largest gap per label, and the figure."""
    labels = result["labels"]
    units = _units(result)
    method = (
        f"Each group's {units} are scored alone (AUROC with a 95% percentile bootstrap interval over the group's "
        f"{units}, {result.get('n_bootstrap', BOOTSTRAP_RESAMPLES):,} resamples), for the competition labels. "
        "Groups: sex as recorded (blank or Unknown: unassigned); age in bands "
        + ", ".join(name for _, _, name in AGE_BANDS)
        + " (unknown age: unassigned); view: the projection of the frontal images, AP or PA, *mixed* for a study "
        "with both (a study with no AP/PA frontal image, lateral only or LL/RL, is unassigned). A group with fewer "
        f"than {result['min_class']} positives or fewer than {result['min_class']} negatives for a label is *too "
        "small* and is not scored for that label. The mean is over the labels scored for the group (how many, when "
        "not all)."
    )
    if result["thresholds"]:
        method += (
            " FNR is the false-negative rate at the model's saved decision threshold (score at or above it called "
            "positive): the share of the group's positives the model misses, its under-diagnosis rate "
            "(Seyyed-Kalantari et al., Nature Medicine 2021), with a 95% Wilson interval."
        )
    lines = [f"# {title}", "", method, ""]
    if not labels:
        lines += ["No competition label was scored.", ""]
    for attribute, entry in result["attributes"].items():
        lines += [f"## {_TITLES.get(attribute, attribute)}", ""]
        header = ["group", "n", *(f"{label} AUROC" for label in labels), "mean AUROC"]
        if result["thresholds"]:
            header += [f"{label} FNR" for label in labels]
        rows = []
        for group, scores in entry["groups"].items():
            cells = [group.replace("|", "\\|"), f"{scores['n']:,}"]
            per_label = scores["per_label"]
            for label in labels:
                item = per_label[label]
                cells.append(
                    _too_small(item) if item.get("too_small") else _with_interval(item["auroc"], item["auroc_ci95"])
                )
            cells.append(_mean_cell(scores, labels))
            if result["thresholds"]:
                for label in labels:
                    item = per_label[label]
                    fnr = item.get("false_negative_rate")
                    cells.append(
                        "too small"
                        if item.get("too_small")
                        else _with_interval(fnr, item.get("false_negative_rate_ci95"))
                    )
            rows.append(cells)
        if rows:
            lines += markdown_table(header, rows, "lr" + "r" * (len(header) - 2), tight_rule=True)
        else:
            lines.append("No group.")
        lines.append("")
        if entry["unassigned"]:
            lines += [f"Unassigned (not in any group): {entry['unassigned']:,} {units}.", ""]
        if entry["worst"]:
            worst = []
            for label, group in entry["worst"].items():
                aurocs = {
                    name: item["per_label"][label]["auroc"]
                    for name, item in entry["groups"].items()
                    if "auroc" in item["per_label"][label]
                }
                best = max(aurocs, key=aurocs.get)
                if aurocs[best] == aurocs[group]:  # every group alike: no worst one
                    worst.append(f"- {label}: no gap (every group {aurocs[group]:.3f})")
                    continue
                worst.append(
                    f"- {label}: worst {group} ({aurocs[group]:.3f}); largest gap {entry['gap'][label]:.3f} "
                    f"({best} {aurocs[best]:.3f} vs {group})"
                )
            lines += ["Worst group and largest AUROC gap per label (groups scored for it):", "", *worst, ""]
        else:
            lines += ["No label was scored on two or more groups: no worst group or gap.", ""]
    lines += [f"![Subgroups]({SUBGROUPS_PNG})", ""]
    return "\n".join(lines)


def subgroups_figure(result: dict[str, Any]):
    """One panel per competition label scored; the groups (by attribute) on the y axis, each group's AUROC as a
    point with its 95% interval as a horizontal bar; a too-small group is marked "too small" instead."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    labels = result["labels"]
    rows: list[tuple[str, str, dict[str, Any]]] = []  # (attribute, group, its scores)
    positions: list[float] = []
    y = 0.0
    for attribute, entry in result["attributes"].items():
        for group, scores in entry["groups"].items():
            rows.append((attribute, group, scores))
            positions.append(y)
            y += 1.0
        y += 0.6  # a gap between attributes
    panels = max(len(labels), 1)
    height = max(2.5, 0.32 * (y + 2))
    figure = Figure(figsize=(2.9 * panels + 1.4, height), dpi=120)
    axes_list = figure.subplots(1, panels, sharex=True, sharey=True, squeeze=False)[0]
    if not labels or not rows:
        axes_list[0].text(0.5, 0.5, "no competition label or group scored", ha="center", va="center")
        axes_list[0].set_axis_off()
        return figure
    colours = {attribute: f"C{index}" for index, attribute in enumerate(result["attributes"])}
    lowest = 1.0  # the shared axis must show every panel's points and intervals
    for axes, label in zip(axes_list, labels, strict=False):
        for (attribute, _, scores), position in zip(rows, positions, strict=True):
            item = scores["per_label"][label]
            if item.get("too_small"):
                axes.text(
                    0.03,
                    position,
                    "too small",
                    transform=axes.get_yaxis_transform(),
                    va="center",
                    fontsize=6.5,
                    color="0.5",
                )
                continue
            auroc, interval = item["auroc"], item.get("auroc_ci95")
            error = None
            lowest = min(lowest, auroc)
            if interval and all(value is not None and math.isfinite(value) for value in interval):
                error = [[max(auroc - interval[0], 0.0)], [max(interval[1] - auroc, 0.0)]]
                lowest = min(lowest, interval[0])
            axes.errorbar(auroc, position, xerr=error, fmt="o", markersize=4, capsize=2, color=colours[attribute])
        axes.set_title(label, fontsize=9)
        axes.set_xlabel("AUROC (95% CI)", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(axis="x", color="0.9", linewidth=0.6)
    axes_list[0].set_xlim(lowest - 0.03 * (1.01 - lowest) - 0.005, 1.01)  # shared by every panel
    axes_list[0].set_yticks(positions, [f"{attribute}: {group}" for attribute, group, _ in rows])
    axes_list[0].set_ylim(max(positions) + 0.8, -0.8)  # first group at the top
    figure.suptitle(
        f"AUROC per subgroup ({_units(result)}); fewer than {result['min_class']} positives or negatives: too small",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def write_subgroups(folder: str | os.PathLike, result: dict[str, Any], title: str) -> dict[str, Path]:
    """Write ``subgroups.json`` (NaN as null), ``subgroups.md`` and ``subgroups.png`` into ``folder``, each
    atomically; returns their paths by file name."""
    folder = Path(folder)
    paths = {name: folder / name for name in (SUBGROUPS_JSON, SUBGROUPS_MD, SUBGROUPS_PNG)}
    figure = subgroups_figure(result)
    atomic_write(paths[SUBGROUPS_PNG], lambda name: figure.savefig(name, format="png"))
    write_text(paths[SUBGROUPS_MD], subgroups_markdown(result, title))
    write_text(paths[SUBGROUPS_JSON], json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
    return paths


def subgroups_text(result: dict[str, Any]) -> str:
    """A short terminal table: attribute, group, n, mean AUROC (how many labels it covers) and the group's worst
    label (its lowest AUROC)."""
    labels = result["labels"]
    lines = [f"{'attribute':<10}{'group':<10}{'n':>8}{'mean AUROC':>16}  worst label"]
    for attribute, entry in result["attributes"].items():
        for group, scores in entry["groups"].items():
            aurocs = {label: item["auroc"] for label, item in scores["per_label"].items() if "auroc" in item}
            worst = min(aurocs, key=aurocs.get) if aurocs else None
            worst_text = f"{worst} ({aurocs[worst]:.3f})" if worst else "— (all too small)"
            lines.append(f"{attribute:<10}{group:<10}{scores['n']:>8,}{_mean_cell(scores, labels):>16}  {worst_text}")
        if entry["unassigned"]:
            lines.append(f"{attribute:<10}{'(none)':<10}{entry['unassigned']:>8,}{'unassigned':>16}")
    return "\n".join(lines)
