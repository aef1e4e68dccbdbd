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

import csv
import gzip
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chexpert_hf.labels import CHEXPERT_LABELS, canonical_label

SPLIT_FOLDERS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_GROUNDTRUTH = ("groundtruth.csv", "test/groundtruth.csv")
MAX_AGE = 150
_LABEL_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": math.nan, "nan": math.nan}
# [dataset folder/]split/patientN/studyN/file: the leading folder (CheXpert-v1.0-small, CheXpert-v1.0, ...)
# is optional because CSV paths are relative to the parent of the data root.
_IMAGE_PATH = rf"^(?:\./)?(?:[^/]+/)?({'|'.join(SPLIT_FOLDERS)})/(patient\d+)/(study\d+)/([^/]+)$"


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
    line: int  # line of the row in its CSV file (the header is line 1)
    problem: str | None = None  # set when the row cannot yield an image (e.g. an empty study folder)


@dataclass
class CsvTable:
    """The cells of a CSV (stripped strings) and the file line of each row, for error messages."""

    path: Path
    frame: pd.DataFrame
    lines: list[int]

    def where(self, row: int, column: str | None = None) -> str:
        return f"{self.path}: line {self.lines[row]}" + (f", column {column!r}" if column else "")

    def column(self, wanted: str) -> str | None:
        """The column whose name matches ``wanted`` ignoring case, spaces and punctuation."""
        matches = [name for name in self.frame.columns if _key(name) == _key(wanted)]
        return matches[0] if matches else None


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def read_table(csv_path: Path) -> CsvTable:
    """Read a CSV strictly: a repeated column name or a row with the wrong number of fields is an error."""
    if not csv_path.is_file():
        raise CheXpertFormatError(f"{csv_path}: file not found")
    opener = gzip.open if csv_path.suffix == ".gz" else open
    rows, lines = [], []
    try:
        with opener(csv_path, "rt", newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if not any(header):
                raise CheXpertFormatError(f"{csv_path}: empty file, no header")
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise CheXpertFormatError(f"{csv_path}: column(s) {repeated} appear more than once in the header")
            width = len(header)
            for row in reader:
                if len(row) != width:
                    if len(row) <= 1 and not "".join(row).strip():
                        continue  # a blank line
                    raise CheXpertFormatError(
                        f"{csv_path}: line {reader.line_num} has {len(row)} fields but the header has {len(header)} "
                        "(a cut-off or malformed row)"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as error:
        raise CheXpertFormatError(f"{csv_path}: not a readable CSV ({error})") from error
    frame = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header, dtype=str)
    return CsvTable(csv_path, frame, lines)


def label_columns(table: CsvTable, require_all: bool = True) -> dict[str, str]:
    """Map each canonical label to its column; two columns for one label are an error, and so are missing labels
    unless ``require_all`` is false (a ground-truth file may hold only the labels it scores)."""
    found: dict[str, str] = {}
    for column in table.frame.columns:
        label = canonical_label(column)
        if label is None:
            continue
        if label in found:
            raise CheXpertFormatError(
                f"{table.path}: columns {found[label]!r} and {column!r} both name label {label!r}"
            )
        found[label] = column
    missing = [label for label in CHEXPERT_LABELS if label not in found]
    if missing and (require_all or len(missing) == len(CHEXPERT_LABELS)):
        raise CheXpertFormatError(
            f"{table.path}: missing label column(s) {missing}; the header is {list(table.frame.columns)}"
        )
    return found


def parse_labels(table: CsvTable, require_all: bool = True) -> np.ndarray:
    """The label block as float32 (rows x 14, canonical order); a value outside 1/0/-1/blank is an error. With
    ``require_all`` false, missing label columns are NaN (blank)."""
    columns = label_columns(table, require_all)
    block = np.full((len(table.frame), len(CHEXPERT_LABELS)), np.nan, dtype=np.float32)
    for index, label in enumerate(CHEXPERT_LABELS):
        if label not in columns:
            continue
        cells = table.frame[columns[label]].str.strip().str.lower()
        unknown = ~cells.isin(list(_LABEL_VALUES))
        if unknown.any():
            row = int(np.argmax(unknown.to_numpy()))
            raise CheXpertFormatError(
                f"{table.where(row, columns[label])}: label value {table.frame[columns[label]].iat[row]!r} "
                "is not one of 1, 0, -1 or blank"
            )
        block[:, index] = cells.map(_LABEL_VALUES).to_numpy(dtype=np.float32)
    return block


def parse_ages(table: CsvTable, column: str | None) -> list[int | None]:
    """Ages as integers (None where blank); anything but a whole number from 0 to MAX_AGE is an error."""
    if column is None:
        return [None] * len(table.frame)
    cells = table.frame[column].str.strip()
    numbers = pd.to_numeric(cells.replace("", None), errors="coerce").to_numpy(dtype=np.float64)
    blank = (cells == "").to_numpy()
    bad = ~blank & ~(np.isfinite(numbers) & (numbers == np.round(numbers)) & (numbers >= 0) & (numbers <= MAX_AGE))
    if bad.any():
        row = int(np.argmax(bad))
        raise CheXpertFormatError(
            f"{table.where(row, column)}: age {cells.iat[row]!r} is not a whole number of years from 0 to {MAX_AGE}"
        )
    return [None if is_blank else int(age) for is_blank, age in zip(blank.tolist(), numbers.tolist(), strict=True)]


def split_image_path(path: str) -> tuple[str, str, str, str] | None:
    """``(split, patient, study, file)`` of a CheXpert path, with or without its leading dataset folder."""
    match = re.match(_IMAGE_PATH, path.strip().replace("\\", "/"))
    return match.groups() if match else None  # type: ignore[return-value]


def split_study_path(path: str) -> tuple[str, str, str] | None:
    """``(split, patient, study)`` of a CheXpert study path such as ``test/patient64741/study1``."""
    parsed = split_image_path(path.strip().replace("\\", "/").rstrip("/") + "/_")
    return parsed[:3] if parsed else None


def view_from_file_name(name: str) -> str:
    lowered = name.lower()
    return "frontal" if "frontal" in lowered else "lateral" if "lateral" in lowered else ""


def _reject_duplicates(table: CsvTable, keys: pd.Series, column: str) -> None:
    """Two rows that name the same image (or study), however the path is written, are an error."""
    repeated = keys.duplicated(keep=False).to_numpy()
    if repeated.any():
        first = int(np.argmax(repeated))
        rows = np.flatnonzero((keys == keys.iat[first]).to_numpy()).tolist()
        raise CheXpertFormatError(
            f"{table.path}: lines {[table.lines[row] for row in rows]} (column {column!r}) all name {keys.iat[first]!r}"
        )


def _check_split(table: CsvTable, splits: pd.Series, expected: str | None, column: str) -> None:
    if expected is None:
        return
    wrong = (splits != expected).to_numpy()
    if wrong.any():
        row = int(np.argmax(wrong))
        raise CheXpertFormatError(
            f"{table.where(row, column)}: {table.frame[column].iat[row].strip()!r} lies under {splits.iat[row]}/, "
            f"but this file lists the {expected} split"
        )


def read_image_csv(csv_path: str | Path, data_root: str | Path, split: str | None = None) -> list[ImageRecord]:
    """Records of a ``train.csv`` / ``valid.csv``; image files are resolved under ``data_root``.

    With ``split`` given, every path must lie under that split's folder (so that, say, validation images
    cannot leak into a training CSV unnoticed).
    """
    table = read_table(Path(csv_path))
    path_column = table.column("Path")
    if path_column is None:
        raise CheXpertFormatError(f"{table.path}: no 'Path' column; the header is {list(table.frame.columns)}")
    labels = parse_labels(table)
    meta = {name: table.column(name) for name in ("Sex", "Frontal/Lateral", "AP/PA")}
    # Plain lists: per-cell pandas access would dominate on the 223k rows of the real train.csv.
    columns = {
        name: table.frame[column].str.strip().tolist() if column else [""] * len(table.frame)
        for name, column in meta.items()
    }
    ages = parse_ages(table, table.column("Age"))

    paths = table.frame[path_column].str.strip()
    parts = paths.str.replace("\\", "/", regex=False).str.extract(_IMAGE_PATH)
    malformed = parts.isna().any(axis=1).to_numpy()
    if malformed.any():
        row = int(np.argmax(malformed))
        raise CheXpertFormatError(
            f"{table.where(row, path_column)}: {paths.iat[row]!r} is not a CheXpert image path "
            "(expected [CheXpert-v1.0-small/]train/patientNNNNN/studyN/viewN_frontal.jpg)"
        )
    _check_split(table, parts[0], split, path_column)
    _reject_duplicates(table, parts[0] + "/" + parts[1] + "/" + parts[2] + "/" + parts[3], path_column)

    views = [view.lower() for view in columns["Frontal/Lateral"]]
    root = str(Path(data_root))
    label_rows = [tuple(values) for values in labels.tolist()]
    rows = zip(paths.tolist(), *(parts[i].tolist() for i in range(4)), strict=True)
    records = []
    for row, (path, folder, patient, study, file) in enumerate(rows):
        records.append(
            ImageRecord(
                path=path,
                file=f"{root}/{folder}/{patient}/{study}/{file}",
                split=folder,
                patient_id=patient,
                study_id=f"{patient}/{study}",
                view=views[row] if views[row] in ("frontal", "lateral") else view_from_file_name(file),
                ap_pa=columns["AP/PA"][row],
                sex=columns["Sex"][row],
                age=ages[row],
                labels=label_rows[row],
                line=table.lines[row],
            )
        )
    return records


def read_study_csv(csv_path: str | Path, data_root: str | Path, split: str | None = None) -> list[ImageRecord]:
    """Records of a study-level ``groundtruth.csv``: one per image file found in each study folder."""
    table = read_table(Path(csv_path))
    study_column = table.column("Study")
    if study_column is None:
        raise CheXpertFormatError(f"{table.path}: no 'Study' column; the header is {list(table.frame.columns)}")
    labels = parse_labels(table)
    studies = table.frame[study_column].str.strip()
    parts = studies.map(split_study_path)
    malformed = parts.isna().to_numpy()
    if malformed.any():
        row = int(np.argmax(malformed))
        raise CheXpertFormatError(
            f"{table.where(row, study_column)}: {studies.iat[row]!r} is not a CheXpert study path "
            "(expected [CheXpert-v1.0/]test/patientNNNNN/studyN)"
        )
    _check_split(table, parts.str[0], split, study_column)
    _reject_duplicates(table, parts.str.join("/"), study_column)

    data_root = Path(data_root)
    records = []
    for row, (study_path, (folder_name, patient, study)) in enumerate(zip(studies, parts, strict=True)):
        study_path = study_path.replace("\\", "/").rstrip("/")
        folder = data_root / folder_name / patient / study
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        common = dict(
            split=folder_name,
            patient_id=patient,
            study_id=f"{patient}/{study}",
            ap_pa="",
            sex="",
            age=None,
            labels=tuple(labels[row].tolist()),
            line=table.lines[row],
        )
        if not files:
            problem = "study folder not found" if not folder.is_dir() else "no images in study folder"
            records.append(ImageRecord(path=study_path, file=str(folder), view="", problem=problem, **common))
        for file in files:
            records.append(
                ImageRecord(
                    path=f"{study_path}/{file.name}", file=str(file), view=view_from_file_name(file.name), **common
                )
            )
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
    """The records of one split's CSV, every path checked to lie under that split's folder."""
    reader = read_study_csv if split == "test" else read_image_csv
    return reader(csv_path, data_root, split=split)
