"""benchmarks/train_throughput.py in its quick mode: the H100 set runs on a CPU without `datasets`, the FLOP count
is a training step's, and the real input pipeline is measured when a prepared dataset is given."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_model

pytestmark = pytest.mark.usefixtures("seeded")  # every test from the same random state (conftest)

SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_the_gpu_set_runs_in_quick_mode_without_datasets():
    """`datasets` is made unimportable, as on the GPU machine; every configuration of the set reports a row."""
    code = (
        "import runpy, sys; sys.modules['datasets'] = None; "
        f"sys.argv = ['train_throughput.py', '--set', 'h100', '--quick', '--device', 'cpu', '--json']; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["family"], r["strategy"], r["compiled"]) for r in rows] == [
        ("vit", "head", False),
        ("vit", "last_block", False),
        ("vit", "full", False),
        ("vit", "head", True),
        ("vit", "last_block", True),
        ("vit", "full", True),
        ("vit", "full", False),
        ("swin", "full", False),
        ("deit", "full", False),
        ("resnet_vit", "full", False),
        ("densenet121", "full", False),
    ]
    for row in rows:
        assert row["images_per_s"] > 0 and row["gflop_per_image"] > 0 and row["peak_gib"] > 0
        assert row["tflop_per_s"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"] / 1e3, rel=1e-6)
    shares = [row["trainable_share"] for row in rows[:3]]
    assert shares[0] < shares[1] < shares[2] == 1.0
    flops = [row["gflop_per_image"] for row in rows[:3]]
    assert flops[0] < flops[1] < flops[2]  # a frozen backbone skips its weight gradients


def test_the_flop_count_is_forward_plus_backward(throughput):
    """A full-training step costs about three forward passes (forward, input and weight gradients)."""
    model = tiny_model("vit").model.train()
    pixels = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    labels = torch.zeros(4, 5)
    step = throughput.flops_per_image(model, pixels, labels, 3, "fp32")
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixel_values=throughput.normalise(pixels, 3))
    forward = counter.get_total_flops() / 4
    assert 2.5 < step / forward <= 3.05
    assert all(parameter.grad is None for parameter in model.parameters())  # counting leaves no gradients behind


def test_the_input_pipeline_is_measured_on_a_prepared_dataset(throughput, prepared_dir):
    row = throughput.measure(
        "vit", None, "full", quick=True, device="cpu", data=str(prepared_dir), workers=0, batch_size=4
    )
    assert row.pipeline_images_per_s > 0
    assert 0.0 < row.data_wait_share < 1.0
    text = throughput.table([row])
    assert "| vit | base | full | no | cpu | fp32 | 32 | 4 | 100% |" in text and "%" in text.splitlines()[-1]


def test_the_trainer_overhead_benchmark_runs_and_reports_a_ratio():
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "trainer_overhead.py"),
            "--steps",
            "4",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--batch-size",
            "8",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [text for text in done.stdout.splitlines() if text.startswith("bare loop")]
    assert "CheXpertTrainer" in line and "ms/step" in line and line.rstrip().endswith("%")


def test_the_cached_head_epoch_benchmark_trains_every_row_once_per_epoch():
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "cached_head_epoch.py"),
            "--rows",
            "640",
            "--dim",
            "16",
            "--batch-size",
            "64",
            "--epochs",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("rows/s" in line for line in epochs)
    assert "16 → 14, 640 rows, batch 64" in done.stdout
