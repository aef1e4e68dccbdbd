"""Steady-state training throughput of one model family x size x freeze strategy (or a set of them).

    python benchmarks/train_throughput.py --family vit --size base --strategy full [--image-size 224] [--compile]
        [--device cuda|cpu] [--batch-size N] [--data PREPARED_DIR --workers 14]
    python benchmarks/train_throughput.py --set h100          # the set benchmarks/gpu_check.sh runs, one table
    python benchmarks/train_throughput.py --set h100 --quick  # the same set with tiny models, 32 px, on CPU

What one row measures, after ``--warmup`` untimed steps:

* ``img/s synthetic``: full training steps (forward, masked-free BCE loss, backward, AdamW with weight decay 0.01)
  on a batch of random ``uint8`` images already on the device, normalised there as the Trainer does: the model's
  own speed, no input pipeline;
* ``GFLOP/img`` and ``TFLOP/s``: the forward + backward FLOPs of one training step counted by torch's
  ``FlopCounterMode`` (eager model), and that count times the measured steps per second;
* ``peak GiB``: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the process's peak resident memory;
* with ``--data``: ``img/s pipeline`` through the project's real input path (a prepared Arrow dataset, its batch
  decoding collate function, a ``DataLoader`` with ``--workers`` processes), and ``data wait``, the share of each
  step spent waiting for the next batch (the rest is compute, measured with the device synchronised).

Models are built from their configuration (random weights: speed does not depend on them), so nothing is
downloaded. Only torch, transformers, accelerate and timm are imported at module level (through
``chexpert_hf.models`` and ``chexpert_hf.models.freeze``); ``datasets`` is imported only for ``--data``, so the script
runs on a machine where it is not installed.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from chexpert_hf.labels import CHEXPERT_LABELS
from chexpert_hf.models import FAMILIES, build_model
from chexpert_hf.models.freeze import POLICIES, apply_freeze_policy
from chexpert_hf.models.tiny import TINY_IMAGE_SIZE, tiny_config
from chexpert_hf.utils import markdown_table

# Tiny configurations for --quick (seconds on a CPU; the code path is the full-size one).
_QUICK_VIT = dict(num_attention_heads=2, intermediate_size=64)  # over chexpert_hf.models.tiny's sizes
QUICK_CONFIGS = {
    "vit": tiny_config("vit", **_QUICK_VIT),
    "deit": tiny_config("deit", **_QUICK_VIT),
    "swin": tiny_config("swin", depths=[1, 1], num_heads=[2, 2]),
    "resnet_vit": tiny_config("resnet_vit", **_QUICK_VIT),
    "densenet121": tiny_config("densenet121"),
}
QUICK_SIZE = TINY_IMAGE_SIZE

# The set that matters on one H100 (benchmarks/gpu_check.sh): family, size, strategy, compiled.
SETS = {
    "h100": [("vit", "base", strategy, compiled) for compiled in (False, True) for strategy in POLICIES]
    + [
        ("vit", "large", "full", False),
        ("swin", "base", "full", False),
        ("deit", "base", "full", False),
        ("resnet_vit", "base", "full", False),
        ("densenet121", "base", "full", False),
    ],
}


@dataclass
class Row:
    family: str
    size: str
    strategy: str
    compiled: bool
    device: str
    dtype: str
    image_size: int
    batch_size: int
    trainable_share: float
    images_per_s: float
    gflop_per_image: float
    tflop_per_s: float
    peak_gib: float
    pipeline_images_per_s: float | None = None
    data_wait_share: float | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def normalise(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """``uint8 (B, 1, S, S)`` → float in [-1, 1], grey repeated to the model's channels (as a view)."""
    return pixels.float().mul_(2.0 / 255.0).sub_(1.0).expand(-1, channels, -1, -1)


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, channels: int, dtype: str):
    device_type = next(model.parameters()).device.type

    def step(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(pixel_values=normalise(pixels, channels)).logits
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def flops_per_image(
    model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, channels: int, dtype: str
) -> float:
    """Forward + backward FLOPs of one training step on the eager model, per image."""
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(pixel_values=normalise(pixels, channels)).logits
        F.binary_cross_entropy_with_logits(logits.float(), labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / pixels.shape[0]


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def build(family: str, size: str, strategy: str, image_size: int, quick: bool, device: torch.device):
    built = build_model(
        family,
        variant=size,
        from_scratch=True,
        image_size=image_size,
        config_overrides=QUICK_CONFIGS[family] if quick else None,
        labels=CHEXPERT_LABELS,
    )
    model = built.model.to(device)
    summary = apply_freeze_policy(model, family, strategy)
    model.train()
    return model, summary


def measure(
    family: str,
    size: str | None,
    strategy: str,
    *,
    compiled: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    image_size: int = 224,
    batch_size: int | None = None,
    steps: int = 30,
    warmup: int = 5,
    quick: bool = False,
    data: str | None = None,
    workers: int = 14,
) -> Row:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or ("bf16" if device.type == "cuda" else "fp32")
    size = size or FAMILIES[family].default_variant
    if quick:
        image_size, steps, warmup = QUICK_SIZE, min(steps, 3), min(warmup, 1)
    batch_size = batch_size or (128 if device.type == "cuda" else 8)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, summary = build(family, size, strategy, image_size, quick, device)
    channels = int(getattr(model.config, "num_channels", 3))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    pixels = torch.randint(
        0, 256, (batch_size, 1, image_size, image_size), dtype=torch.uint8, device=device, generator=generator
    )
    labels = torch.randint(0, 2, (batch_size, len(CHEXPERT_LABELS)), device=device, generator=generator).float()
    flops = flops_per_image(model, pixels, labels, channels, dtype)
    # --quick traces with dynamo but skips inductor's code generation (minutes on a CPU, and it needs a compiler)
    runner = torch.compile(model, backend="eager" if quick else "inductor") if compiled else model
    step = make_step(runner, optimizer, channels, dtype)
    for _ in range(warmup):
        step(pixels, labels)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(pixels, labels)
    synchronize(device)
    seconds = time.perf_counter() - start
    images_per_s = steps * batch_size / seconds
    row = Row(
        family,
        size,
        strategy,
        compiled,
        device.type,
        dtype,
        image_size,
        batch_size,
        summary.trainable_params / max(1, summary.trainable_params + summary.frozen_params),
        images_per_s,
        flops / 1e9,
        flops * images_per_s / 1e12,
        peak_memory_gib(device),
    )
    if data:
        row.pipeline_images_per_s, row.data_wait_share = measure_pipeline(
            step, data, image_size, batch_size, steps, warmup, workers, device
        )
    return row


def measure_pipeline(
    step, data: str, image_size: int, batch_size: int, steps: int, warmup: int, workers: int, device: torch.device
) -> tuple[float, float]:
    """Images/s and the share of step time spent waiting for data, through the project's training input path."""
    from chexpert_hf.data.loading import DecodeCollator, load_training_splits, resolve_prepared

    splits = load_training_splits(resolve_prepared(data, image_size=max(image_size, 64)), list(CHEXPERT_LABELS))
    loader = torch.utils.data.DataLoader(
        splits.train,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        collate_fn=DecodeCollator(image_size),
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    if len(loader) < warmup + 1:
        raise ValueError(
            f"{data} has {len(splits.train)} training images: too few for {warmup + 1} batches of {batch_size}"
        )
    waited = computed = 0.0
    measured = 0
    batches = iter(loader)
    for index in range(warmup + steps):
        before = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        fetched = time.perf_counter()
        targets = torch.nan_to_num(batch["labels"], nan=0.0).to(device, non_blocking=True)
        step(batch["pixel_values"].to(device, non_blocking=True), targets)
        synchronize(device)
        done = time.perf_counter()
        if index >= warmup:
            waited += fetched - before
            computed += done - fetched
            measured += batch["pixel_values"].shape[0]
    return measured / (waited + computed), waited / (waited + computed)


def table(rows: list[Row]) -> str:
    header = [
        *("family", "size", "strategy", "compiled", "device", "dtype", "px", "batch"),
        *("trainable", "img/s synthetic", "GFLOP/img", "TFLOP/s", "peak GiB", "img/s pipeline", "data wait"),
    ]
    cells = []
    for r in rows:
        pipeline = "" if r.pipeline_images_per_s is None else f"{r.pipeline_images_per_s:,.1f}"
        wait = "" if r.data_wait_share is None else f"{100 * r.data_wait_share:.1f}%"
        cells.append(
            [
                *(r.family, r.size, r.strategy, "yes" if r.compiled else "no", r.device, r.dtype),
                *(str(r.image_size), str(r.batch_size), f"{100 * r.trainable_share:.3g}%", f"{r.images_per_s:,.1f}"),
                *(f"{r.gflop_per_image:.3g}", f"{r.tflop_per_s:.3g}", f"{r.peak_gib:.2f}", pipeline, wait),
            ]
        )
    return "\n".join(markdown_table(header, cells, "l" * 8 + "r" * 7, tight_rule=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=list(FAMILIES), default="vit")
    parser.add_argument("--size", default=None, help="the family's variant (default: its default variant)")
    parser.add_argument("--strategy", choices=POLICIES, default="full", help="freeze policy (default: full)")
    parser.add_argument("--set", choices=list(SETS), default=None, help="run a set of configurations instead")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on a GPU, 8 on a CPU")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default: 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument(
        "--dtype", choices=("bf16", "fp32"), default=None, help="autocast dtype (default: bf16 on a GPU, fp32 on a CPU)"
    )
    parser.add_argument(
        "--data", default=None, help="also measure the real input pipeline on this prepared dataset or CheXpert root"
    )
    parser.add_argument("--workers", type=int, default=14, help="data loader workers with --data (default: 14)")
    parser.add_argument("--quick", action="store_true", help="tiny models at 32 px, 3 steps: a check that it runs")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of the table")
    args = parser.parse_args(argv)
    configs = SETS[args.set] if args.set else [(args.family, args.size, args.strategy, args.compile)]
    rows = []
    for family, size, strategy, compiled in configs:
        row = measure(
            family,
            size,
            strategy,
            compiled=compiled,
            device=args.device,
            dtype=args.dtype,
            image_size=args.image_size,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            quick=args.quick,
            data=args.data,
            workers=args.workers,
        )
        rows.append(row)
        if args.json:
            print(json.dumps(asdict(row)), flush=True)
        else:
            print(
                f"measured {family} {size} {strategy}{' compiled' if compiled else ''}: "
                f"{row.images_per_s:,.1f} images/s",
                file=sys.stderr,
                flush=True,
            )
    if not args.json:
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
