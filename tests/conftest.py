"""Shared fixtures and helpers: a small synthetic CheXpert tree, its prepared dataset, hand-made image files, the
tiny models, the two-process launch, and the model-card information the card, privacy and file-mode tests share."""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # before datasets is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from chexpert_hf.data import prepare, synthesize  # noqa: E402
from chexpert_hf.data.synthetic import TRAIN_HEADER  # noqa: E402
from chexpert_hf.hub.model_card import CardInfo  # noqa: E402
from chexpert_hf.labels import COMPETITION_LABELS  # noqa: E402
from chexpert_hf.models.tiny import TINY_FAMILIES, TINY_IMAGE_SIZE, tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the repository
SCRIPTS = ROOT / "tests" / "scripts"  # programs the tests run under ``accelerate launch``

# Tiny configurations of every model family (a few thousand parameters, 32 px; chexpert_hf.models.tiny); the tests
# build them from these and load them back through the real from_pretrained path.
TINY_SIZE = TINY_IMAGE_SIZE
TINY_CONFIGS = {family: tiny_config(family) for family in TINY_FAMILIES}
# The same, taking one-channel input.
TINY_ONE_CHANNEL = {family: tiny_config(family, num_channels=1) for family in TINY_FAMILIES}


def tiny_model(family: str, labels=None, one_channel: bool = False, image_size: int = TINY_SIZE):
    from chexpert_hf.labels import COMPETITION_LABELS
    from chexpert_hf.models import build_model

    overrides = (TINY_ONE_CHANNEL if one_channel else TINY_CONFIGS)[family]
    return build_model(
        family,
        from_scratch=True,
        config_overrides=overrides,
        image_size=image_size,
        labels=labels or COMPETITION_LABELS,
    )


@pytest.fixture
def seeded():
    """torch's, numpy's and Python's global generators seeded (0) for one test and put back as they were after it:
    a module opts in with ``pytestmark = pytest.mark.usefixtures("seeded")``, and its results then do not depend on
    which tests ran before it."""
    import random

    import torch

    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        yield
    np.random.set_state(numpy_state)
    random.setstate(python_state)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A synthetic CheXpert-v1.0-small tree: 12 training, 8 validation and 3 test patients."""
    summary = synthesize(
        tmp_path_factory.mktemp("synthetic"), 12, valid_patients=8, test_patients=3, seed=7, progress=False
    )
    return summary.root


@pytest.fixture(scope="session")
def prepared_dir(synthetic_root, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("prepared") / "chexpert"
    prepare(synthetic_root, output, image_size=160)
    return output


def free_port() -> int:
    """A TCP port nobody listens on now, for a test's ``accelerate launch --main_process_port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_process_command(script: Path, *arguments) -> list[str]:
    """``accelerate launch`` running ``script arguments...`` as 2 CPU processes over gloo, on a free port."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / "cpu.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        str(script),
        *map(str, arguments),
    ]


def run_from_root(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` in the repository root, capturing its output as text."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def jpeg_bytes(size=(200, 240), mode="L", value=128, quality=92) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def gradient(size=(200, 240)) -> np.ndarray:
    """A horizontal ramp 0..255 (uint8, height x width), to see that content survives decoding."""
    width, height = size
    return np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1)).astype(np.uint8)


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def image_row(relative: str, labels=None, view="Frontal", ap_pa="AP", sex="Female", age=60) -> list:
    """A train.csv row for ``relative`` (``train/patientN/studyN/file``) with the given 14 label cells."""
    labels = labels if labels is not None else ["1.0"] + [""] * 13
    return [f"CheXpert-v1.0-small/{relative}", sex, age, view, ap_pa if view == "Frontal" else "", *labels]


def make_tree(root: Path, files: dict[str, bytes], header=TRAIN_HEADER, rows=None, valid_rows=None) -> Path:
    """A CheXpert-v1.0-small tree at ``root`` with the given image files and CSV rows (one per file by default)."""
    for relative, data in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    train = rows if rows is not None else [image_row(name) for name in files if name.startswith("train/")]
    write_csv(root / "train.csv", header, train)
    valid = (
        valid_rows
        if valid_rows is not None
        else [image_row(name, ["0.0"] * 14) for name in files if name.startswith("valid/")]
    )
    write_csv(root / "valid.csv", header, valid)
    return root


# --- a model card's information (chexpert_hf.hub.model_card) ---------------------------------------------------

# Values with many significant digits, so rounding anywhere on the way would show.
PER_LABEL = {
    "Atelectasis": (0.8123456789012345, (0.7712345678901234, 0.8498765432109876), 0.6234567890123456, 62, 238),
    "Cardiomegaly": (0.8345678901234567, (0.7912345678901234, 0.8787654321098765), 0.5123456789012345, 39, 261),
    "Consolidation": (0.9012345678901234, (0.8601234567890123, 0.9387654321098765), 0.4123456789012345, 34, 266),
    "Edema": (0.9234567890123456, (0.8998765432109876, 0.9476543210987654), 0.7654321098765432, 81, 219),
    "Pleural Effusion": (0.9387654321098765, (0.9176543210987654, 0.9598765432109876), 0.8765432109876543, 113, 187),
    "Support Devices": (0.8812345678901234, (0.8498765432109876, 0.9123456789012345), 0.9012345678901234, 150, 150),
}


def make_metrics() -> dict:
    per_label = {
        label: {"auroc": auroc, "auroc_ci95": list(ci), "auprc": auprc, "positives": pos, "negatives": neg}
        for label, (auroc, ci, auprc, pos, neg) in PER_LABEL.items()
    }
    competition = [per_label[label]["auroc"] for label in COMPETITION_LABELS]
    metrics = {
        "mean_auroc": sum(competition) / len(competition),
        "mean_auroc_ci95": [0.8712345678901234, 0.9098765432109876],
        "mean_auroc_all": sum(result["auroc"] for result in per_label.values()) / len(per_label),
        "n_studies": 300,
        "per_label": per_label,
        "skipped_labels": ["Fracture"],
        "bootstrap": {"resamples": 1000, "seed": 0, "confidence": 0.95},
    }
    # The caller hands over metrics.json as read back from disk.
    return json.loads(json.dumps(metrics))


def make_info(**changes) -> CardInfo:
    info = CardInfo(
        model_name="vit_base_full",
        family="vit",
        variant="base",
        base_model="google/vit-base-patch16-224-in21k",
        freeze_policy="full",
        trainable_parameters=85_807_118,
        total_parameters=85_807_118,
        image_size=224,
        labels=[*COMPETITION_LABELS, "Fracture", "Support Devices"],
        uncertainty_policy="u_mixed",
        blank_policy="negative",
        sampling="inverse_frequency",
        pos_weight="balanced",
        hyperparameters={
            "learning_rate": 3.0e-5,
            "layer_decay": 0.75,
            "epochs": 5,
            "effective_batch_size": 64,
            "lr_scheduler": "cosine",
            "precision": "bf16",
            "seed": 0,
            "optimizer": "adamw_torch",
        },
        hardware="1 × NVIDIA H100 80GB HBM3",
        wall_time_seconds=207.4,
        synthetic_data=False,
        dataset_id="chexpert",
        dataset_description="CheXpert-v1.0-small, prepared at 320 px",
        views="frontal",
        split_sizes={"train": 191027, "validation": 202},
        evaluated_split="validation",
        eval_level="study",
        metrics=make_metrics(),
    )
    return dataclasses.replace(info, **changes)


@pytest.fixture(scope="session")
def slurm_partition() -> str:
    """The default partition of a running SLURM; the test skips where there is none (a developer machine), and
    fails where ``CHEXPERT_HF_REQUIRE_SLURM`` is set (CI, whose ``.ci/run`` starts one)."""
    import shutil

    why = ""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        why = "SLURM is not installed here (no sbatch)"
    else:
        listed = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=60)
        partitions = [line.split() for line in listed.stdout.splitlines() if line.strip()]
        default = [name.rstrip("*") for name, available in partitions if name.endswith("*") and available == "up"]
        if listed.returncode != 0 or not default:
            why = f"SLURM is installed but not running (sinfo: {listed.stderr.strip() or listed.stdout.strip()})"
        else:
            return default[0]
    if os.environ.get("CHEXPERT_HF_REQUIRE_SLURM"):
        pytest.fail(f"{why}, but CHEXPERT_HF_REQUIRE_SLURM is set: CI must run the SLURM tests")
    pytest.skip(f"{why}; .ci/run installs and starts a one-node SLURM (docs/development.md)")
