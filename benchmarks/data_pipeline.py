"""Images/s per core from a prepared Arrow dataset to model-ready batches, against JPEG files + HF processor.

    python benchmarks/data_pipeline.py                       # synthesizes a small CheXpert tree first
    python benchmarks/data_pipeline.py --raw .../CheXpert-v1.0-small --prepared OUT_320 [--prepared OUT_224]

Everything runs in one process with one torch thread, so each number is per core; a data loader with N
workers scales it by about N. Paths measured, all ending in a (B, C, 224, 224) tensor:

* ``arrow -> uint8``: embedded bytes read from Arrow, decoded and resized into one uint8 tensor
  (what the training collate function does; normalisation then runs on the GPU);
* ``arrow -> float``: the same plus float conversion, 3-channel repeat and normalisation on the CPU;
* ``files + <processor>``: each JPEG opened with PIL and passed through a transformers ViT image
  processor (the usual ``set_transform`` recipe), for the PIL and the torchvision backends.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from chexpert_hf.data import load_prepared, prepare, synthesize
from chexpert_hf.data.transforms import decode_batch, image_bytes, to_float


def _rate(run, count: int, repeats: int = 2) -> float:
    """Best of ``repeats`` runs, in images/s (the first touch also warms the page cache)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def arrow_paths(prepared: Path, split: str, count: int, size: int, batch: int) -> dict[str, float]:
    dataset = load_prepared(prepared)[split]
    count = min(count, len(dataset))

    def to_uint8():
        for start in range(0, count, batch):
            decode_batch(image_bytes(dataset, start, min(start + batch, count)), size)

    def to_normalised():
        for start in range(0, count, batch):
            to_float(
                decode_batch(image_bytes(dataset, start, min(start + batch, count)), size),
                (0.5,) * 3,
                (0.5,) * 3,
                channels=3,
            )

    stored = load_prepared(prepared)[split][0]["image"].size
    tag = f"arrow ({min(stored)} px stored)"
    return {f"{tag} -> uint8": _rate(to_uint8, count), f"{tag} -> float": _rate(to_normalised, count)}


def file_paths(files: list[str], size: int, batch: int) -> dict[str, float]:
    from transformers import ViTImageProcessor

    processors = {}
    try:
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

        processors["PIL"] = ViTImageProcessorPil(size={"height": size, "width": size})
    except ImportError:  # older transformers: the default processor is the PIL one
        pass
    processors[type(ViTImageProcessor()).__mro__[1].__name__] = ViTImageProcessor(size={"height": size, "width": size})
    results = {}
    for name, processor in processors.items():

        def run(processor=processor):
            for start in range(0, len(files), batch):
                images = [Image.open(path).convert("RGB") for path in files[start : start + batch]]
                processor(images, return_tensors="pt")

        results[f"files + ViT processor ({name})"] = _rate(run, len(files))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, help="CheXpert tree (folder with train.csv) for the file path")
    parser.add_argument(
        "--prepared",
        type=Path,
        action="append",
        default=[],
        help="prepared dataset(s) of the same tree; repeat to compare stored sizes",
    )
    parser.add_argument("--split", default="train", choices=["train", "valid"])
    parser.add_argument("--num-images", type=int, default=1024, help="images per measurement (default 1024)")
    parser.add_argument("--image-size", type=int, default=224, help="model input size (default 224)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    workdir = tempfile.TemporaryDirectory(prefix="chexpert-bench-")
    if args.raw is None:
        print("no --raw given: synthesizing a CheXpert tree (400 patients) and preparing it at 320 and 224 px")
        args.raw = synthesize(workdir.name, 400, seed=0, progress=False).root
        for stored in (320, args.image_size):
            args.prepared.append(Path(workdir.name) / f"prepared-{stored}")
            prepare(args.raw, args.prepared[-1], image_size=stored, num_proc=min(2, os.cpu_count() or 1))
    if not args.prepared:
        parser.error("--prepared is required with --raw")

    split = "train" if args.split == "train" else "validation"
    # the same images on both paths: the files behind the first rows of the prepared split
    relative = load_prepared(args.prepared[0])[split]["path"][: args.num_images]
    files = [str(Path(args.raw).parent / path) for path in relative]
    results = file_paths(files, args.image_size, args.batch_size)
    for prepared in args.prepared:
        results.update(arrow_paths(prepared, split, args.num_images, args.image_size, args.batch_size))

    baseline = max(rate for name, rate in results.items() if name.startswith("files"))
    print(
        f"\nimages/s per core, batches of {args.batch_size} at {args.image_size} px "
        f"(torch {torch.__version__}, {os.cpu_count()} CPUs visible, 1 thread used)"
    )
    print(f"{'path':<44}{'images/s':>10}{'vs best file path':>20}")
    for name, rate in results.items():
        print(f"{name:<44}{rate:>10,.0f}{rate / baseline:>19.1f}x")
    workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
