"""``chexpert-hf prepare``: a raw CheXpert tree to a self-contained dataset folder, atomically.

The output folder ``OUT`` holds what ``datasets.load_from_disk(OUT)`` reads (a ``DatasetDict`` with
``train``, ``validation`` and ``test`` where present), ``skipped.csv`` (every row left out, with the
reason) and ``prepare_info.json`` (source, settings, counts). Everything is built in a temporary
sibling folder and renamed to ``OUT`` only when complete, so a failed or interrupted run never leaves
something at ``OUT`` that looks like a finished dataset.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError

from chexpert_hf.data.builder import CheXpert, StrictSkipError
from chexpert_hf.labels import CHEXPERT_LABELS
from chexpert_hf.outputs import DATASET_DICT_JSON, PREPARE_INFO_JSON, SKIPPED_CSV

INFO_JSON = PREPARE_INFO_JSON  # the name this module has always exported


@dataclass
class PrepareSummary:
    output: str
    source: str
    image_size: int
    frontal_only: bool
    images: dict[str, int]
    skipped: dict[str, int]
    left_out_lateral: dict[str, int]
    seconds: float
    label_names: list[str] = field(default_factory=lambda: list(CHEXPERT_LABELS))

    def lines(self) -> list[str]:
        """A human summary, one line per split plus where the skips are listed."""
        out = []
        for split, count in self.images.items():
            line = f"{split:>10}: {count:>7,} images"
            if self.skipped.get(split):
                line += f", {self.skipped[split]:,} skipped"
            if self.left_out_lateral.get(split):
                line += f", {self.left_out_lateral[split]:,} lateral left out (--frontal-only)"
            out.append(line)
        total = sum(self.skipped.values())
        out.append(f"{total:,} row(s) skipped" + (f": see {Path(self.output) / SKIPPED_CSV}" if total else ""))
        return out


def prepare(
    data_dir: str | Path,
    output: str | Path,
    *,
    image_size: int = 320,
    num_proc: int = 1,
    strict: bool = False,
    frontal_only: bool = False,
    overwrite: bool = False,
) -> PrepareSummary:
    """Prepare the CheXpert tree at ``data_dir`` (the folder holding ``train.csv``) into ``output``."""
    started = time.perf_counter()
    data_dir, output = Path(data_dir).resolve(), Path(output).resolve()
    if output == data_dir or output in data_dir.parents:
        raise ValueError(f"the output {output} would replace the data it is made from ({data_dir}); pick another")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        builder = CheXpert(
            cache_dir=str(staging / "cache"),
            data_dir=str(data_dir),
            image_size=image_size,
            frontal_only=frontal_only,
            strict=strict,
        )
        try:
            builder.download_and_prepare(num_proc=num_proc if num_proc > 1 else None)
        except DatasetGenerationError as error:
            strict_failure = _strict_failure(error)
            if strict_failure is not None:
                raise strict_failure from None
            raise
        dataset = _as_dataset_dict(builder)
        built = staging / "dataset"
        # an empty split saved with the default sharding writes no data file and then fails to load
        dataset.save_to_disk(str(built), num_shards={name: 1 for name, part in dataset.items() if not len(part)})
        skipped = builder.skipped_rows()
        _write_skipped(built / SKIPPED_CSV, skipped)
        summary = PrepareSummary(
            output=str(output),
            source=str(data_dir),
            image_size=image_size,
            frontal_only=frontal_only,
            images={split: len(part) for split, part in dataset.items()},
            skipped={split: sum(row["split"] == split for row in skipped) for split in dataset},
            left_out_lateral=getattr(builder, "left_out_lateral", {}),
            seconds=round(time.perf_counter() - started, 1),
        )
        (built / INFO_JSON).write_text(json.dumps(asdict(summary), indent=2) + "\n")
        del dataset, builder
        _replace(output, built, staging / "previous")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _as_dataset_dict(builder: CheXpert) -> datasets.DatasetDict:
    """Every split the builder generated, an empty one included (``as_dataset`` refuses those)."""
    splits = {}
    for name, info in builder.info.splits.items():
        if info.num_examples:
            splits[name] = builder.as_dataset(split=name)
        else:
            empty = {column: [] for column in builder.info.features}
            splits[name] = datasets.Dataset.from_dict(
                empty, features=builder.info.features, info=builder.info.copy(), split=name
            )
    return datasets.DatasetDict(splits)


def _strict_failure(error: BaseException) -> StrictSkipError | None:
    """The strict-mode skip behind a generation error; from a worker process it arrives only as text."""
    while error is not None:
        if isinstance(error, StrictSkipError):
            return error
        found = re.search(rf"{StrictSkipError.__name__}: (.+)", str(error))
        if found:
            return StrictSkipError(found.group(1).strip())
        error = error.__cause__ or error.__context__
    return None


def _replace(output: Path, built: Path, previous: Path) -> None:
    """Move ``built`` to ``output``; an existing output is set aside first and restored if the move fails."""
    had_output = output.exists()
    if had_output:
        output.rename(previous)
    try:
        built.rename(output)
    except BaseException:
        if had_output:
            previous.rename(output)
        raise


def _write_skipped(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason", "split", "source"])
        writer.writerows([row["path"], row["reason"], row["split"], row["source"]] for row in rows)


def load_prepared(path: str | Path) -> datasets.DatasetDict:
    """The ``DatasetDict`` of a folder written by :func:`prepare`, with a clear error for anything else."""
    path = Path(path)
    if not (path / DATASET_DICT_JSON).is_file():
        hint = " (it holds a CSV: run `chexpert-hf prepare` on it first)" if any(path.glob("*.csv")) else ""
        raise FileNotFoundError(f"{path} is not a prepared CheXpert dataset{hint}")
    return datasets.load_from_disk(str(path))
