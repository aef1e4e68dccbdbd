"""Reading CheXpert's CSV files into image records, with errors that name the file, line and column.

Handles the official layouts:

* ``train.csv`` / ``valid.csv``: one row per image, ``Path`` like
  ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` (relative to the parent of the data
  root; the leading folder is optional), metadata columns, and the 14 label columns;
* the test set's study-level ``groundtruth.csv``: a ``Study`` column (``test/patient64741/study1``) and 0/1
  labels; its images are the files found in each study folder under ``test/``.

Label columns are picked by name, never by position, and ``Pleural_Effusion`` matches ``Pleural Effusion``.
Structural problems raise :class:`CheXpertFormatError`; a study folder without images is returned as a
record with ``problem`` set, so the caller can skip and count it like any unreadable image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..labels import CHEXPERT_LABELS, canonical_label

SPLIT_FOLDERS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_GROUNDTRUTH = ("groundtruth.csv", "test/groundtruth.csv")
_LABEL_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": math.nan, "nan": math.nan}
# [dataset folder/]split/patientN/studyN/file: the leading folder (CheXpert-v1.0-small, CheXpert-v1.0, ...)
# is optional because CSV paths are relative to the parent of the data root.
_IMAGE_PATH = r"^(?:\./)?(?:[^/]+/)?(train|valid|test)/(patient\d+)/(study\d+)/([^/]+)$"


class CheXpertFormatError(ValueError):
    """A CSV or data folder that does not follow the CheXpert format; the message says where."""


@dataclass(slots=True)
class ImageRecord:
    """One image row: where its file is, who it belongs to, and its raw labels in canonical order."""

    path: str  # as written in the CSV (or the study path plus file name for the test set)
    file: str  # the image file on disk
    split: str
    patient_id: str
    study_id: str  # "patient00001/study1": unique across the dataset
    view: str  # "frontal", "lateral" or "" when unknown
    ap_pa: str  # AP, PA, LL, RL or ""
    sex: str
    age: int | None
    labels: tuple[float, ...]  # 14 values: 1, 0, -1, NaN (blank)
    line: int  # line in the CSV (the header is line 1)
    problem: str | None = None  # set when the row cannot yield an image (e.g. an empty study folder)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _column(frame: pd.DataFrame, wanted: str) -> str | None:
    matches = [column for column in frame.columns if _key(column) == _key(wanted)]
    return matches[0] if matches else None


def label_columns(columns, csv_path: Path) -> dict[str, str]:
    """Map each canonical label to its column in ``columns``; missing or repeated labels are errors."""
    found: dict[str, str] = {}
    for column in columns:
        label = canonical_label(str(column))
        if label is None:
            continue
        if label in found:
            raise CheXpertFormatError(f"{csv_path}: columns {found[label]!r} and {column!r} both name label {label!r}")
        found[label] = column
    missing = [label for label in CHEXPERT_LABELS if label not in found]
    if missing:
        raise CheXpertFormatError(f"{csv_path}: missing label column(s) {missing}; the header is {list(columns)}")
    return found


def parse_labels(frame: pd.DataFrame, columns: dict[str, str], csv_path: Path) -> np.ndarray:
    """The label block as float32 (rows x 14, canonical order); a value outside 1/0/-1/blank is an error."""
    block = np.empty((len(frame), len(CHEXPERT_LABELS)), dtype=np.float32)
    for index, label in enumerate(CHEXPERT_LABELS):
        cells = frame[columns[label]].str.strip().str.lower()
        unknown = ~cells.isin(list(_LABEL_VALUES))
        if unknown.any():
            row = int(np.argmax(unknown.to_numpy()))
            raise CheXpertFormatError(
                f"{csv_path}: line {row + 2}, column {columns[label]!r}: label value "
                f"{frame[columns[label]].iloc[row]!r} is not one of 1, 0, -1 or blank"
            )
        block[:, index] = cells.map(_LABEL_VALUES).to_numpy(dtype=np.float32)
    return block


def split_image_path(path: str) -> tuple[str, str, str, str] | None:
    """``(split, patient, study, file)`` of a CheXpert path, with or without its leading dataset folder."""
    match = re.match(_IMAGE_PATH, path.strip().replace("\\", "/"))
    return match.groups() if match else None  # type: ignore[return-value]


def split_study_path(path: str) -> tuple[str, str, str] | None:
    """``(split, patient, study)`` of a CheXpert study path such as ``test/patient64741/study1``."""
    parsed = split_image_path(path.rstrip("/") + "/_")
    return parsed[:3] if parsed else None


def view_from_file_name(name: str) -> str:
    lowered = name.lower()
    return "frontal" if "frontal" in lowered else "lateral" if "lateral" in lowered else ""


def _read_frame(csv_path: Path) -> pd.DataFrame:
    if not csv_path.is_file():
        raise CheXpertFormatError(f"{csv_path}: file not found")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise CheXpertFormatError(f"{csv_path}: not a readable CSV ({error})") from error
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def _ages(values: list[str], csv_path: Path, column: str | None) -> list[int | None]:
    """Ages as integers (None where blank); a value that is not a number is an error naming its line."""
    numbers = pd.to_numeric(pd.Series(values, dtype=object).replace("", None), errors="coerce")
    bad = (numbers.isna() & (pd.Series(values) != "")).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise CheXpertFormatError(f"{csv_path}: line {row + 2}, column {column!r}: age {values[row]!r} is not a number")
    return [None if math.isnan(age) else int(age) for age in numbers.tolist()]


def read_image_csv(csv_path: str | Path, data_root: str | Path) -> list[ImageRecord]:
    """Records of a ``train.csv`` / ``valid.csv``; image files are resolved under ``data_root``."""
    csv_path, data_root = Path(csv_path), Path(data_root)
    frame = _read_frame(csv_path)
    path_column = _column(frame, "Path")
    if path_column is None:
        raise CheXpertFormatError(f"{csv_path}: no 'Path' column; the header is {list(frame.columns)}")
    labels = parse_labels(frame, label_columns(frame.columns, csv_path), csv_path)
    meta = {name: _column(frame, name) for name in ("Sex", "Age", "Frontal/Lateral", "AP/PA")}
    # Plain lists: per-cell pandas access would dominate on the 223k rows of the real train.csv.
    columns = {name: frame[column].str.strip().tolist() if column else [""] * len(frame)
               for name, column in meta.items()}

    paths = frame[path_column]
    parts = paths.str.strip().str.replace("\\", "/", regex=False).str.extract(_IMAGE_PATH)
    malformed = parts.isna().any(axis=1).to_numpy()
    if malformed.any():
        row = int(np.argmax(malformed))
        raise CheXpertFormatError(
            f"{csv_path}: line {row + 2}, column {path_column!r}: {paths.iat[row]!r} is not a CheXpert image path "
            "(expected [CheXpert-v1.0-small/]train/patientNNNNN/studyN/viewN_frontal.jpg)"
        )
    repeated = paths.duplicated(keep=False).to_numpy()
    if repeated.any():
        lines = (np.flatnonzero(paths == paths.iat[int(np.argmax(repeated))]) + 2).tolist()
        raise CheXpertFormatError(f"{csv_path}: lines {lines} all list {paths.iat[lines[0] - 2]!r}")
    views = [view.lower() for view in columns["Frontal/Lateral"]]
    ages = _ages(columns["Age"], csv_path, meta["Age"])
    root = str(data_root)
    records = []
    rows = zip(paths.tolist(), parts[0].tolist(), parts[1].tolist(), parts[2].tolist(), parts[3].tolist(), strict=True)
    label_rows = [tuple(values) for values in labels.tolist()]
    for row, (path, split, patient, study, file) in enumerate(rows):
        line = row + 2
        records.append(ImageRecord(
            path=path,
            file=f"{root}/{split}/{patient}/{study}/{file}",
            split=split,
            patient_id=patient,
            study_id=f"{patient}/{study}",
            view=views[row] if views[row] in ("frontal", "lateral") else view_from_file_name(file),
            ap_pa=columns["AP/PA"][row],
            sex=columns["Sex"][row],
            age=ages[row],
            labels=label_rows[row],
            line=line,
        ))
    return records


def read_study_csv(csv_path: str | Path, data_root: str | Path) -> list[ImageRecord]:
    """Records of a study-level ``groundtruth.csv``: one per image file found in each study folder."""
    csv_path, data_root = Path(csv_path), Path(data_root)
    frame = _read_frame(csv_path)
    study_column = _column(frame, "Study")
    if study_column is None:
        raise CheXpertFormatError(f"{csv_path}: no 'Study' column; the header is {list(frame.columns)}")
    labels = parse_labels(frame, label_columns(frame.columns, csv_path), csv_path)

    records, seen = [], {}
    for row, study_path in enumerate(frame[study_column]):
        line = row + 2
        parts = split_study_path(study_path)
        if parts is None:
            raise CheXpertFormatError(
                f"{csv_path}: line {line}, column {study_column!r}: {study_path!r} is not a CheXpert study path "
                "(expected [CheXpert-v1.0/]test/patientNNNNN/studyN)"
            )
        if study_path in seen:
            raise CheXpertFormatError(f"{csv_path}: lines {seen[study_path]} and {line} both list {study_path!r}")
        seen[study_path] = line
        split, patient, study = parts
        folder = data_root / split / patient / study
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        common = dict(split=split, patient_id=patient, study_id=f"{patient}/{study}", ap_pa="", sex="", age=None,
                      labels=tuple(labels[row].tolist()), line=line)
        if not files:
            problem = "study folder not found" if not folder.is_dir() else "no images in study folder"
            records.append(ImageRecord(path=study_path.rstrip("/"), file=str(folder), view="", problem=problem,
                                       **common))
        for file in files:
            records.append(ImageRecord(path=f"{study_path.rstrip('/')}/{file.name}", file=str(file),
                                       view=view_from_file_name(file.name), **common))
    return records


def find_split_files(data_root: str | Path) -> dict[str, Path]:
    """The CSV of each split present under ``data_root``; a folder with none of them is an error."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise CheXpertFormatError(f"{data_root}: data directory not found")
    candidates = {split: data_root / f"{split}.csv" for split in ("train", "valid")}
    found = {split: path for split, path in candidates.items() if path.is_file()}
    for candidate in TEST_GROUNDTRUTH:
        if (data_root / candidate).is_file():
            found["test"] = data_root / candidate
            break
    if not found:
        raise CheXpertFormatError(
            f"{data_root}: no train.csv, valid.csv or groundtruth.csv here; point --data-dir at the folder that "
            "holds them (e.g. .../CheXpert-v1.0-small)"
        )
    return found


def read_split(split: str, csv_path: Path, data_root: Path) -> list[ImageRecord]:
    return read_study_csv(csv_path, data_root) if split == "test" else read_image_csv(csv_path, data_root)
