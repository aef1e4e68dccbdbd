"""The CheXpert ``datasets`` builder: a raw CheXpert tree in, an Arrow dataset with embedded images out.

Current ``datasets`` no longer runs loading scripts, so the builder is a class used directly::

    builder = CheXpert(data_dir=".../CheXpert-v1.0-small", cache_dir="...", image_size=320)
    builder.download_and_prepare(num_proc=8)
    dataset = builder.as_dataset()          # DatasetDict: train / validation / test (where present)

:func:`chexpert_hf.data.prepare.prepare` wraps this with an atomic output folder and ``skipped.csv``.
Labels are stored raw (1, 0, -1, NaN) in the canonical CheXpert order; uncertainty policies are applied
at training time. Rows whose image cannot be read are skipped and logged (``skipped_rows()``); with
``strict=True`` the first such row stops the build instead.

Used directly, the builder caches like any ``datasets`` builder: the cache key covers the configuration
(``data_dir`` as a string, image size, ...), not the files, so after fixing images in place pass
``download_mode="force_redownload"``. ``prepare`` always builds in a fresh folder.
"""

from __future__ import annotations

import csv
import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import datasets

from chexpert_hf.data.chexpert_csv import ImageRecord, find_split_files, read_split
from chexpert_hf.data.images import UnreadableImage, load_radiograph
from chexpert_hf.labels import CHEXPERT_LABELS

try:  # datasets >= 4.1 identifies examples by (original shard, item)
    from datasets.builder import Key
except ImportError:  # pragma: no cover - older datasets take any unique key
    Key = None

SPLIT_NAMES = {"train": datasets.Split.TRAIN, "valid": datasets.Split.VALIDATION, "test": datasets.Split.TEST}
LABELS_LINE = "labels: "  # the line of the dataset description that carries the label names (JSON)
SKIP_LOG_PREFIX = "skipped-"

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "labels": datasets.List(datasets.Value("float32"), length=len(CHEXPERT_LABELS)),
        "path": datasets.Value("string"),
        "patient_id": datasets.Value("string"),
        "study_id": datasets.Value("string"),
        "view": datasets.Value("string"),
        "ap_pa": datasets.Value("string"),
        "sex": datasets.Value("string"),
        "age": datasets.Value("int32"),
    }
)

DESCRIPTION = (
    "CheXpert chest radiographs (Irvin et al., 2019) prepared by chexpert_hf: 8-bit grayscale JPEG images "
    "embedded in Arrow, raw labels (1 positive, 0 negative, -1 uncertain, NaN blank) in the order below.\n"
    + LABELS_LINE
    + json.dumps(list(CHEXPERT_LABELS))
)
CITATION = """@inproceedings{irvin2019chexpert,
  title={CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison},
  author={Irvin, Jeremy and Rajpurkar, Pranav and Ko, Michael and others},
  booktitle={AAAI}, year={2019}
}"""


class StrictSkipError(RuntimeError):
    """Raised in strict mode for the first row whose image cannot be used."""


def label_names(dataset: datasets.Dataset | datasets.DatasetDict) -> list[str]:
    """The label names of a prepared dataset, in the order of its ``labels`` column."""
    info = next(iter(dataset.values())).info if isinstance(dataset, datasets.DatasetDict) else dataset.info
    for line in (info.description or "").splitlines():
        if line.startswith(LABELS_LINE):
            return json.loads(line[len(LABELS_LINE) :])
    raise ValueError("this dataset was not prepared by chexpert_hf: its description carries no label names")


@dataclass
class CheXpertConfig(datasets.BuilderConfig):
    """Variant of the prepared dataset; ``data_dir`` is the folder that holds ``train.csv`` / ``valid.csv``."""

    image_size: int = 320  # shorter side after resizing, aspect ratio kept
    frontal_only: bool = False
    strict: bool = False  # an unreadable image stops the build instead of being skipped
    rows_per_shard: int = 64  # the largest unit of work handed to one of the num_proc workers


class CheXpert(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = CheXpertConfig
    BUILDER_CONFIGS = [
        CheXpertConfig(name="default", description="All views, shorter side 320 px."),
        CheXpertConfig(name="frontal", frontal_only=True, description="Frontal views only, shorter side 320 px."),
    ]
    DEFAULT_CONFIG_NAME = "default"
    VERSION = datasets.Version("1.0.0")

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=DESCRIPTION,
            features=FEATURES,
            homepage="https://stanfordmlgroup.github.io/competitions/chexpert/",
            citation=CITATION,
        )

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise ValueError("CheXpert needs data_dir: the folder that holds train.csv and valid.csv")
        if self.config.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.config.image_size}")
        data_root = Path(self.config.data_dir)
        self.left_out_lateral: dict[str, int] = {}
        generators = []
        for split, csv_path in find_split_files(data_root).items():
            records = read_split(split, csv_path, data_root)
            if self.config.frontal_only:
                kept = [record for record in records if record.view != "lateral"]
                self.left_out_lateral[str(SPLIT_NAMES[split])] = len(records) - len(kept)
                records = kept
            # at least ~16 shards where possible, so that small splits are spread over the workers too
            step = max(1, min(self.config.rows_per_shard, math.ceil(len(records) / 16)))
            shards = [records[start : start + step] for start in range(0, len(records), step)] or [[]]
            generators.append(
                datasets.SplitGenerator(
                    name=SPLIT_NAMES[split],
                    gen_kwargs={"shards": shards, "split": str(SPLIT_NAMES[split]), "csv_name": csv_path.name},
                )
            )
        return generators

    def _generate_examples(self, shards: list[list[ImageRecord]], split: str, csv_name: str):
        log_path = Path(self._output_dir) / f"{SKIP_LOG_PREFIX}{split}-{uuid.uuid4().hex}.csv"
        for shard_index, shard in enumerate(shards):
            for row, record in enumerate(shard):
                problem = record.problem
                if problem is None:
                    try:
                        image = load_radiograph(record.file, self.config.image_size)
                    except UnreadableImage as error:
                        problem = str(error)
                if problem is not None:
                    where = f"{csv_name} line {record.line}"
                    if self.config.strict:
                        raise StrictSkipError(f"{record.path} ({where}): {problem} [strict mode stops at any skip]")
                    _append_skip(log_path, split, record, where, problem)
                    continue
                key = Key(shard_index, row) if Key is not None else f"{shard_index}-{row}"
                yield (
                    key,
                    {
                        "image": {"bytes": image, "path": None},
                        "labels": list(record.labels),
                        "path": record.path,
                        "patient_id": record.patient_id,
                        "study_id": record.study_id,
                        "view": record.view,
                        "ap_pa": record.ap_pa,
                        "sex": record.sex,
                        "age": record.age,
                    },
                )

    def skipped_rows(self) -> list[dict[str, str]]:
        """Rows left out of the prepared splits: ``split, path, source, reason`` in CSV order."""
        rows = []
        for log in Path(self.cache_dir).glob(f"{SKIP_LOG_PREFIX}*.csv"):
            with open(log, newline="") as handle:
                rows += list(csv.DictReader(handle))
        order = {str(name): index for index, name in enumerate(SPLIT_NAMES.values())}
        return sorted(rows, key=lambda row: (order[row["split"]], int(row["source"].rsplit(" ", 1)[-1])))


def _append_skip(log_path: Path, split: str, record: ImageRecord, where: str, problem: str) -> None:
    new = not log_path.exists()
    with open(log_path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["split", "path", "source", "reason"])
        writer.writerow([split, record.path, where, problem])
