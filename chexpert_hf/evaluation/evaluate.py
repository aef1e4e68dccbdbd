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
    parse_ages,
    parse_labels,
    read_table,
    split_image_path,
    split_study_path,
)
from chexpert_hf.evaluation.ensemble import check_same_labels, column_order, combine
from chexpert_hf.evaluation.metrics import BOOTSTRAP_RESAMPLES, evaluation_targets, score, scored_rows
from chexpert_hf.evaluation.reports import write_reports
from chexpert_hf.evaluation.subgroups import ImageMeta, scored_groups, write_subgroups
from chexpert_hf.evaluation.thresholds import saved_thresholds
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
    meta: ImageMeta | None = None  # sex, age, view, AP/PA per row, where the file has them (subgroups)
    text: list[str] | None = None  # the key column's cells as written (``CheXpert-v1.0-small/valid/...``)

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
    keys: np.ndarray | None = None  # the scored rows' studies (or images), in their order
    groups: dict[str, np.ndarray] | None = None  # each scored row's subgroup per attribute (sex, age, view)
    predictions: pd.DataFrame | None = None  # an ensemble's combined scores, in the format read_predictions reads


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


def named_label_columns(table: CsvTable, key_column: str, kind: str, cells: str) -> dict[str, str]:
    """``{label: column}`` for every column but the key, each naming a CheXpert label (canonical names, any spelling
    :func:`canonical_label` knows, any order); an unknown column, two columns for one label, or none at all is an
    error naming the file. ``kind`` and ``cells`` say in the message what the file is and holds."""
    columns: dict[str, str] = {}
    unknown = []
    for column in table.frame.columns:
        if column == key_column:
            continue
        label = canonical_label(column)
        if label is None:
            unknown.append(column)
        elif label in columns:
            raise CheXpertFormatError(
                f"{table.path}: columns {columns[label]!r} and {column!r} both name label {label!r}"
            )
        else:
            columns[label] = column
    if unknown:
        raise CheXpertFormatError(
            f"{table.path}: unknown column(s) {unknown}; {kind} has a Study or Path column and one {cells} column "
            f"per CheXpert label, named among: {', '.join(CHEXPERT_LABELS)}"
        )
    if not columns:
        raise CheXpertFormatError(
            f"{table.path}: no label column; expected {cells} columns named among: {', '.join(CHEXPERT_LABELS)}"
        )
    return columns


def read_predictions(path: str | os.PathLike) -> KeyedRows:
    """A predictions file: its key column and its probability columns, validated (see the module doc)."""
    table = read_table(Path(path))
    level, key_column = _key_columns(table)
    label_columns = named_label_columns(table, key_column, "a predictions file", "probability")
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
    text = table.frame[key_column].str.strip().tolist()
    meta = _table_meta(table)
    return KeyedRows(Path(path), level, study, image, raw[:, present], labels, table.lines, meta, text)


def _table_meta(table: CsvTable) -> ImageMeta | None:
    """Sex, age and view per row from CheXpert's ``Sex``, ``Age``, ``Frontal/Lateral`` and ``AP/PA`` columns (a
    ``valid.csv``); None when the file has none of them (the test set's study-level ``groundtruth.csv``)."""
    columns = {name: table.column(name) for name in ("Sex", "Age", "Frontal/Lateral", "AP/PA")}
    if not any(columns.values()):
        return None
    blank = [""] * len(table.frame)

    def cells(name: str) -> list[str]:
        return table.frame[columns[name]].str.strip().tolist() if columns[name] else blank

    ages = [None] * len(table.frame)
    if columns["Age"]:
        try:
            ages = parse_ages(table, columns["Age"])
        except CheXpertFormatError as error:  # scoring does not need ages: only the age subgroups are lost
            logger.warning("ages not read, so no age subgroups: %s", error)
    views = [view.lower() for view in cells("Frontal/Lateral")]
    return ImageMeta(sex=cells("Sex"), age=ages, view=views, ap_pa=cells("AP/PA"))


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
    rows = KeyedRows(source, "image", study, image, part.raw, list(CHEXPERT_LABELS), list(range(len(paths))))
    rows.meta = prepared_meta(part.rows)
    return rows


def prepared_meta(rows) -> ImageMeta:
    """Sex, age, view and AP/PA per image of a prepared split (the columns ``chexpert-hf prepare`` writes)."""
    return ImageMeta(sex=rows["sex"][:], age=rows["age"][:], view=rows["view"][:], ap_pa=rows["ap_pa"][:])


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
    predictions: str | os.PathLike | Sequence[str | os.PathLike],
    groundtruth: str | os.PathLike,
    *,
    per_image: bool = False,
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    ensemble: str = "mean",
) -> tuple[Scored, dict[str, Any]]:
    """Score a predictions file against ground truth; returns the scores and a summary of the matching. Several
    files are an ensemble (:mod:`chexpert_hf.evaluation.ensemble`): each is matched to the ground truth, then
    their scores are combined per label and scored as one model."""
    paths = [predictions] if isinstance(predictions, str | os.PathLike) else list(predictions)
    truth = read_groundtruth(groundtruth)
    members = [match_to_groundtruth(read_predictions(path), truth, per_image=per_image) for path in paths]
    names = [Path(path).name for path in paths]
    for path, matched in zip(paths, members, strict=True):
        if matched.unscored:
            logger.warning(
                "%d %s(s) of %s are not in %s and were not scored", matched.unscored, matched.unit, path, truth.path
            )
    matched = _combine_matched(names, members, ensemble)
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
        "predictions": names[0] if len(names) == 1 else f"ensemble of {len(names)}",
        "groundtruth": truth.path.name,
        "level": matched.unit,
        "unscored_predictions": int(max(member.unscored for member in members)),
    }
    if len(names) > 1:
        summary["ensemble"] = {"members": names, "combination": ensemble}
        mark_rank_scores(scores, ensemble)
    groups = _groups(truth, matched.keys, per_image)
    scored = Scored(scores, matched.scores, matched.targets, matched.labels, matched.keys, groups)
    if len(names) > 1:  # written as predictions.csv: compare reads an ensemble like any other model
        keys, key_column = _key_text(truth, matched.keys, per_image), "Path" if per_image else "Study"
        scored.predictions = predictions_frame(keys, matched.scores, matched.labels, key_column)
    return scored, summary


def _key_text(truth: KeyedRows, keys: np.ndarray, per_image: bool) -> list[str]:
    """The ground truth's own path for each key (a study of image rows: its first image's folder), so that a file
    written with them reads back with the same keys."""
    text: dict[str, str] = {}
    if per_image:
        text = dict(zip(truth.image, truth.text, strict=True))
    else:
        for study, cell in zip(truth.study, truth.text, strict=True):
            text.setdefault(study, cell if truth.level == "study" else cell.rsplit("/", 1)[0])
    return [text[key] for key in keys]


def mark_rank_scores(scores: dict[str, Any], combination: str) -> None:
    """Mean ranks lie in (0, 1] but are not probabilities: say so in the scores, so that nothing calibrates them."""
    if combination == "rank":
        scores["scores_are_probabilities"] = False
        scores["scores_kind"] = "mean ranks of the ensemble's members"


def _combine_matched(names: list[str], members: list[Matched], how: str) -> Matched:
    """One member as it is; several combined into one (same studies: each was matched to the same ground truth)."""
    if len(members) == 1:
        return members[0]
    check_same_labels(names, [member.labels for member in members])
    labels = members[0].labels
    combined = combine([member.scores[:, column_order(member.labels, labels)] for member in members], how)
    first = members[0]
    return Matched(first.keys, combined, first.targets, labels, first.unit, max(m.unscored for m in members))


def _groups(truth: KeyedRows, keys: np.ndarray, per_image: bool) -> dict[str, np.ndarray] | None:
    """Each scored row's subgroup (sex, age band, view) from the ground truth's columns; None without them."""
    if truth.meta is None:
        return None
    studies, groups = scored_groups(truth.study, truth.meta, per_image)
    if studies is not None and not np.array_equal(studies, keys):  # both in the ground truth's first-appearance order
        raise AssertionError("subgroups and scored studies are in different orders")
    return groups


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
    model_name_or_path: str | Sequence[str],
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
    ensemble: str = "mean",
) -> tuple[Scored, pd.DataFrame, dict]:
    """Run a model (or several: an ensemble, see :mod:`chexpert_hf.evaluation.ensemble`) over a prepared split and
    score it; returns the scores, the per-image predictions table and a summary of what was scored. ``data`` is a
    prepared folder, or a CheXpert root prepared (once, into the cache) at ``prepare_image_size``. The summary holds
    the model's saved decision thresholds (``thresholds``, ``threshold_source``) when it has some; an ensemble has
    none."""
    from chexpert_hf.data.loading import check_views, load_prepared_split
    from chexpert_hf.evaluation.inference import load_classifier, predict_split

    check_views(views)  # before the model is loaded
    names = [model_name_or_path] if isinstance(model_name_or_path, str) else list(model_name_or_path)
    members, labels, part = [], None, None
    for name in names:
        loaded = load_classifier(name, trust_remote_code=trust_remote_code, device=device)
        if labels is None:
            labels = loaded.labels
            part = load_prepared_split(
                data, labels, split=split, views=views, image_size=prepare_image_size, cache_dir=data_cache_dir
            )
            logger.info("evaluating on %d %s images of %s", len(part.rows), split, part.prepared)
        check_same_labels([names[0], name], [labels, loaded.labels])
        logger.info("running %s", name)
        probabilities = predict_split(loaded, part.rows, batch_size=batch_size, progress=progress)
        members.append(probabilities[:, column_order(loaded.labels, labels)])
        thresholds, source = saved_thresholds(loaded.model.config)
        del loaded
    probabilities = combine(members, ensemble) if len(members) > 1 else members[0]
    rows, raw = part.rows, part.raw
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
        labels,
        study_ids=None if per_image else studies,
        row_ids=image_keys,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    scored_probabilities, scored_targets = scored_rows(probabilities, targets, None if per_image else studies)
    keys, groups = scored_groups(studies, prepared_meta(rows), per_image)
    keys = image_keys if per_image else keys
    summary = {
        "model": _public_name(names[0]) if len(names) == 1 else f"ensemble of {len(names)}",
        "split": split,
        "views": views,
        "level": "image" if per_image else "study",
        "images": len(rows),
    }
    if len(names) > 1:
        summary["ensemble"] = {"members": [_public_name(name) for name in names], "combination": ensemble}
        mark_rank_scores(scores, ensemble)
    elif thresholds:
        summary["thresholds"], summary["threshold_source"] = thresholds, source
    return (
        Scored(scores, scored_probabilities, scored_targets, labels, np.asarray(keys), groups),
        predictions_frame(paths, probabilities, labels),
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


def _detail(value: Any) -> str:
    if isinstance(value, dict) and "members" in value:  # an ensemble
        return f"{value['combination']} of {', '.join(value['members'])}"
    return str(value)


def write_evaluation(
    output: str | os.PathLike,
    scored: Scored,
    summary: dict[str, Any],
    *,
    title: str,
    predictions: pd.DataFrame | None = None,
    subgroups: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """``metrics.json``, ``metrics.md``, ``roc.png`` (``calibration.png`` for probabilities), ``predictions.csv``
    when given, and ``subgroups.json``/``.md``/``.png`` when given, in ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    details = [f"{key}: {_detail(value)}" for key, value in summary.items()]
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
    if subgroups is not None:
        paths.update(write_subgroups(output, subgroups, f"Subgroups: {title}"))
    return paths


def save_model_thresholds(model_folder: str | os.PathLike, thresholds: dict[str, float], source: dict) -> Path:
    """Write thresholds into a local model folder's ``config.json`` (rewritten whole, atomically; every other key
    kept as it was, in the key order ``save_pretrained`` writes); returns its path."""
    import json

    from chexpert_hf.evaluation.thresholds import CONFIG_THRESHOLD_SOURCE, CONFIG_THRESHOLDS
    from chexpert_hf.outputs import MODEL_CONFIG
    from chexpert_hf.utils import write_text

    config_path = Path(model_folder) / MODEL_CONFIG
    if not config_path.is_file():
        raise ValueError(
            f"--set-thresholds writes into a local model folder's {MODEL_CONFIG}; {model_folder} has none "
            "(a Hub model: download it with `huggingface-cli download` first)"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config[CONFIG_THRESHOLDS], config[CONFIG_THRESHOLD_SOURCE] = thresholds, source
    write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config_path
