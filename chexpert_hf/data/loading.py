"""From a recipe's ``data_dir`` to the training and validation sets the Trainer reads.

``data_dir`` may be a folder written by ``chexpert-hf prepare``, a raw CheXpert root (prepared on first use into
a cache folder keyed by the source and its CSVs, and reused after), or empty: then a synthetic CheXpert is
generated into the cache (the demo). Labels are found by name and put in the model's label order; the
uncertainty policy turns raw labels into training targets; images are decoded a batch at a time by
:class:`DecodeCollator` (or once, into memory, with ``decode_cache``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from chexpert_hf.data.builder import label_names
from chexpert_hf.data.chexpert_csv import CheXpertFormatError, find_split_files
from chexpert_hf.data.prepare import load_prepared, prepare
from chexpert_hf.data.splits import frontal_only, patient_split
from chexpert_hf.data.synthetic import DATASET_FOLDER, GENERATOR_REVISION, generator_revision, synthesize
from chexpert_hf.data.transforms import decode_batch, image_bytes
from chexpert_hf.labels import apply_uncertainty_policy, reorder_labels
from chexpert_hf.outputs import DATASET_DICT_JSON

logger = logging.getLogger(__name__)

CACHE_ENV = "CHEXPERT_HF_CACHE"
MISSING_DATA = (
    "CheXpert comes from Stanford (https://stanfordmlgroup.github.io/competitions/chexpert/, free registration; "
    "CheXpert-v1.0-small is 11 GB). Point data_dir at the folder that holds train.csv and valid.csv (it is "
    "prepared on first use) or at a folder made by `chexpert-hf prepare --data-dir ... --output ...`. "
    "`--recipe demo` needs no download: it generates a synthetic CheXpert."
)


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """Where prepared and synthetic datasets are kept: ``explicit``, ``$CHEXPERT_HF_CACHE`` or ~/.cache/chexpert_hf."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "chexpert_hf").expanduser()


def _source_key(data_root: Path, image_size: int) -> str:
    """A cache key that changes when the source folder, its CSVs or the image size change."""
    digest = hashlib.sha256(f"{data_root.resolve()}|{image_size}".encode())
    for csv_path in sorted(find_split_files(data_root).values()):
        stat = csv_path.stat()
        digest.update(f"|{csv_path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{data_root.name}-{image_size}px-{digest.hexdigest()[:12]}"


def synthetic_root(cache: Path, patients: int, valid_patients: int, seed: int, num_proc: int = 1) -> Path:
    """A synthetic CheXpert tree in the cache, generated the first time it is asked for."""
    folder = cache / "synthetic" / f"p{patients}-v{valid_patients}-s{seed}"
    with cache_lock(folder, "generating a synthetic CheXpert"):
        tree = folder / DATASET_FOLDER
        if (tree / "valid.csv").is_file() and generator_revision(tree) != GENERATOR_REVISION:
            logger.warning(
                "the synthetic CheXpert in %s was made by an older generator (revision %s, now %d): making it again",
                folder,
                generator_revision(tree),
                GENERATOR_REVISION,
            )
        if not (tree / "valid.csv").is_file() or generator_revision(tree) != GENERATOR_REVISION:
            logger.info("generating a synthetic CheXpert (%d + %d patients) in %s", patients, valid_patients, folder)
            synthesize(folder, patients, valid_patients=valid_patients, seed=seed, num_proc=num_proc, overwrite=True)
    return folder / DATASET_FOLDER


@contextmanager
def cache_lock(path: Path, what: str) -> Iterator[None]:
    """Hold ``path``'s lock file: one writer per cache entry, also across the processes of a multi-GPU run and the
    nodes that share the cache folder (where its file system supports locks).

    Every process of a run takes the entry's lock instead of waiting in a collective barrier: the first prepares,
    the others wait here without a timeout however long that takes (a barrier gives up after ``ddp_timeout``),
    then find the entry ready. A process that has to wait says so once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process %s (%s.lock)", what, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def default_num_proc() -> int:
    """The CPUs this process may use (``os.sched_getaffinity``: what a container's or SLURM's CPU limits leave),
    not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_prepared(
    data_dir: str | os.PathLike | None,
    *,
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 320,
    synthetic: tuple[int, int, int] = (1500, 300, 0),
    num_proc: int | None = None,
) -> Path:
    """A prepared dataset folder for ``data_dir`` (see the module doc); ``synthetic`` = (patients, valid, seed).

    Safe to call from every process of a run at once (:func:`cache_lock`); ``num_proc`` (default: the CPUs this
    process may use) is how many worker processes prepare."""
    num_proc = num_proc or default_num_proc()
    cache = cache_root(cache_dir)
    if data_dir is None or str(data_dir) == "":
        data_root = synthetic_root(cache, *synthetic, num_proc=num_proc)
    else:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data_dir {path} does not exist. {MISSING_DATA}")
        if (path / DATASET_DICT_JSON).is_file():
            return path
        if not any((path / name).is_file() for name in ("train.csv", "valid.csv")):
            raise FileNotFoundError(
                f"data_dir {path} is neither a prepared dataset nor a CheXpert root "
                f"(no train.csv or valid.csv in it). {MISSING_DATA}"
            )
        data_root = path
    prepared = cache / "prepared" / _source_key(data_root, image_size)
    with cache_lock(prepared, f"preparing {data_root}"):
        if not (prepared / DATASET_DICT_JSON).is_file():
            logger.info("preparing %s into %s (once; later runs reuse it)", data_root, prepared)
            summary = prepare(data_root, prepared, image_size=image_size, num_proc=num_proc, overwrite=True)
            for line in summary.lines():
                logger.info("  %s", line)
    return prepared


class LabelledImages(torch.utils.data.Dataset):
    """Rows of a prepared split with their targets; a batch is fetched from Arrow in one read.

    ``targets`` are the training targets (the uncertainty policy applied, NaN = left out of the loss) and
    ``raw`` the labels as prepared (1 / 0 / -1 / NaN), both in the model's label order; ``study_ids`` group
    the rows for study-level scoring.
    """

    def __init__(self, dataset: datasets.Dataset, targets: np.ndarray, raw: np.ndarray, label_names: list[str]):
        self.dataset = dataset
        self.targets = np.ascontiguousarray(targets, dtype=np.float32)
        self.raw = np.asarray(raw, dtype=np.float32)
        self.label_names = list(label_names)
        self.study_ids = np.asarray(dataset["study_id"][:])
        self.decoded: torch.Tensor | None = None
        self.features: np.ndarray | None = None  # pooled backbone features instead of images (cache_features)

    def __len__(self) -> int:
        return len(self.dataset)

    def decode_all(self, image_size: int, batch_size: int = 256) -> None:
        """Decode every image once into memory (``uint8``, ``len x 1 x S x S``); later batches skip JPEG decoding."""
        decoded = torch.empty((len(self), 1, image_size, image_size), dtype=torch.uint8)
        for start in tqdm(range(0, len(self), batch_size), desc="decoding images into memory", unit=" batches"):
            stop = min(start + batch_size, len(self))
            decoded[start:stop] = decode_batch(image_bytes(self.dataset, start, stop), image_size)
        self.decoded = decoded

    def __getitems__(self, indices: list[int]) -> dict:
        rows = np.asarray(indices, dtype=np.int64)
        batch = {"labels": self.targets[rows], "row_index": rows}
        if self.features is not None:
            batch["features"] = torch.from_numpy(self.features[rows])
        elif self.decoded is not None:
            batch["pixels"] = self.decoded[torch.from_numpy(rows)]
        else:
            table = self.dataset.with_format("arrow")[indices]
            batch["images"] = table.column("image").combine_chunks().field("bytes").to_pylist()
        return batch

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])


@dataclass
class DecodeCollator:
    """The batch the model reads: ``pixel_values`` (``uint8``; the Trainer normalises on the device),
    ``labels`` (float, NaN = masked) and ``row_index`` (to score per study after a multi-process gather).
    A split with cached features passes them as ``pixel_values`` (float32, what the head reads)."""

    image_size: int

    def __call__(self, batch: dict | list[dict]) -> dict[str, torch.Tensor]:
        if isinstance(batch, list):  # a sampler that fetched rows one by one
            batch = {key: [value for item in batch for value in item[key]] for key in batch[0]}
        pixels = batch.get("features", batch.get("pixels"))
        if pixels is None:
            pixels = decode_batch(batch["images"], self.image_size)
        elif isinstance(pixels, list):
            pixels = torch.stack(pixels)
        return {
            "pixel_values": pixels,
            "labels": torch.as_tensor(np.asarray(batch["labels"], dtype=np.float32)),
            "row_index": torch.as_tensor(np.asarray(batch["row_index"], dtype=np.int64)),
        }


class MissingSplitError(CheXpertFormatError):
    """A prepared dataset lacks a split that training needs (reported in one line, naming the splits it has)."""


@dataclass
class TrainingSplits:
    train: LabelledImages
    validation: LabelledImages


def load_training_splits(
    prepared: str | os.PathLike,
    labels: list[str],
    *,
    validation_fraction: float | None = None,
    views: str = "frontal",
    uncertainty_policy: str = "u_mixed",
    blank_policy: str = "negative",
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> TrainingSplits:
    """Training and validation sets of a prepared dataset, with targets for ``labels`` (in that order)."""
    dataset = load_prepared(prepared)
    names = label_names(dataset)
    if "train" not in dataset:  # e.g. a test-only folder: one line, as every error a user can fix (not a traceback)
        raise MissingSplitError(f"{prepared} has no train split to train on; its splits are: {', '.join(dataset)}")
    train = dataset["train"]
    if validation_fraction is None:
        if "validation" not in dataset or not len(dataset["validation"]):
            raise MissingSplitError(
                f"{prepared} has no official validation split (its splits are: "
                f"{', '.join(dataset)}); use validation_split: patients:0.1"
            )
        validation = dataset["validation"]
    else:
        train, validation = patient_split(train, validation_fraction, seed=seed)
    if views == "frontal":
        train, validation = frontal_only(train), frontal_only(validation)
    if max_train_samples is not None:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples is not None:
        validation = validation.select(range(min(max_eval_samples, len(validation))))
    for split_name, split in (("training", train), ("validation", validation)):
        if not len(split):
            raise MissingSplitError(f"the {split_name} set of {prepared} is empty (views={views!r})")

    rng = np.random.default_rng(seed)

    def labelled(split: datasets.Dataset) -> LabelledImages:
        raw = reorder_labels(np.asarray(split["labels"][:], dtype=np.float32), names, labels)
        targets = apply_uncertainty_policy(raw, labels, uncertainty_policy, blank=blank_policy, rng=rng)
        return LabelledImages(split, targets, raw, labels)

    return TrainingSplits(labelled(train), labelled(validation))


VIEWS = ("all", "frontal")


def check_views(views: str) -> None:
    """A ValueError for a ``views`` setting other than ``all`` or ``frontal`` (callers check before slow work)."""
    if views not in VIEWS:
        raise ValueError(f"views must be 'all' or 'frontal', got {views!r}")


@dataclass
class PreparedSplit:
    """One split of a prepared dataset as :func:`load_prepared_split` filtered it."""

    prepared: Path  # the prepared folder it came from
    rows: datasets.Dataset
    raw: np.ndarray  # raw labels (1 / 0 / -1 / NaN) in the order asked for, one row per image


def load_prepared_split(
    data: str | os.PathLike | None,
    labels: list[str],
    *,
    split: str = "validation",
    views: str = "all",
    limit: int = 0,
    image_size: int = 320,
    cache_dir: str | os.PathLike | None = None,
) -> PreparedSplit:
    """The images of one split of ``data`` (prepared, or prepared now into the cache: :func:`resolve_prepared`), only
    the frontal ones with ``views="frontal"``, the first ``limit`` of them (0: all), with raw labels in ``labels``'
    order: what evaluating and explaining a model read, the same way."""
    check_views(views)
    prepared = resolve_prepared(data, cache_dir=cache_dir, image_size=image_size)
    dataset = load_prepared(prepared)
    if split not in dataset:
        raise ValueError(f"{data} has no {split!r} split; its splits are: {', '.join(dataset)}")
    rows = frontal_only(dataset[split]) if views == "frontal" else dataset[split]
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    if not len(rows):
        raise ValueError(f"the {split} split of {data} has no {'frontal ' if views == 'frontal' else ''}images")
    raw = reorder_labels(np.asarray(rows["labels"][:], dtype=np.float32), label_names(dataset), labels)
    return PreparedSplit(Path(prepared), rows, raw)
