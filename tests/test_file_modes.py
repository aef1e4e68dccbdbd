"""Results are ordinary files: every atomic write (a ``mkstemp`` file renamed into place) leaves the mode a new file
gets under the umask, not mkstemp's private 0600, and puts the bytes on disk before the rename."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_info

from chexpert_hf import utils
from chexpert_hf.evaluation.evaluate import predictions_frame, write_evaluation, write_predictions_csv
from chexpert_hf.evaluation.metrics import score
from chexpert_hf.evaluation.reports import write_reports
from chexpert_hf.hub.model_card import write_model_card
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.utils import atomic_write, current_umask, write_text


@pytest.fixture(params=[(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"])
def umask(request):
    """The process umask set for one test (and put back after it); yields ``(umask, expected file mode)``."""
    mask, mode = request.param
    previous = os.umask(mask)
    try:
        yield mask, mode
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def scored_rows(rows: int = 40):
    rng = np.random.default_rng(0)
    probabilities = rng.random((rows, len(COMPETITION_LABELS)))
    targets = (rng.random((rows, len(COMPETITION_LABELS))) < 0.4).astype(np.float64)
    return probabilities, targets, score(probabilities, targets, COMPETITION_LABELS)


def test_the_umask_is_read_without_being_changed(umask):
    mask, _ = umask
    assert current_umask() == mask
    assert os.umask(mask) == mask  # still what the test set


def test_the_umask_is_read_where_proc_is_not_there(umask, monkeypatch):
    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(utils, "open", no_proc, raising=False)
    mask, _ = umask
    assert current_umask() == mask
    assert os.umask(mask) == mask


def test_atomic_writes_keep_the_umask_mode(umask, tmp_path):
    _, expected = umask
    write_text(tmp_path / "a" / "notes.txt", "text\n")
    atomic_write(tmp_path / "array.npy", lambda name: np.save(name, np.zeros(3)))

    def by_stream(name: str) -> None:  # as chexpert_hf.training.feature_cache writes its arrays
        with open(name, "wb") as stream:
            np.save(stream, np.ones(2))

    atomic_write(tmp_path / "streamed.npy", by_stream)
    for name in ("a/notes.txt", "array.npy", "streamed.npy"):
        assert mode(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "array.npy", "streamed.npy"]  # no temporary left


def test_reports_predictions_and_the_card_keep_the_umask_mode(umask, tmp_path):
    _, expected = umask
    probabilities, targets, scores = scored_rows()
    paths = write_reports(tmp_path / "reports", scores, probabilities, targets, COMPETITION_LABELS, title="t")
    assert sorted(paths) == ["metrics.json", "metrics.md", "roc.png"]
    keys = [f"valid/patient{index:05d}/study1/view1_frontal.jpg" for index in range(len(probabilities))]
    frame = predictions_frame(keys, probabilities, COMPETITION_LABELS)
    write_predictions_csv(tmp_path / "predict" / "predictions.csv", frame)
    from chexpert_hf.evaluation.evaluate import Scored

    evaluation = write_evaluation(
        tmp_path / "eval",
        Scored(scores, probabilities, targets, COMPETITION_LABELS),
        {"split": "validation"},
        title="t",
        predictions=frame,
    )
    card = write_model_card(tmp_path / "card", make_info())
    written = [*paths.values(), tmp_path / "predict" / "predictions.csv", *evaluation.values(), card]
    assert len(written) == 9
    for path in written:
        assert mode(path) == expected, path.name


def test_an_atomic_write_is_on_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(handle):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{handle}"))))
        real_fsync(handle)

    def replace(source, target):
        events.append(("replace", os.path.basename(source)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text(tmp_path / "metrics.json", "{}\n")
    temporary = next(name for event, name in events if event == "replace")
    assert temporary.startswith(".metrics.json.")
    # the file's bytes before the rename, the folder's entry after it
    assert events == [("fsync", temporary), ("replace", temporary), ("fsync", tmp_path.name)]
    assert (tmp_path / "metrics.json").read_text() == "{}\n"


def test_a_synthetic_tree_and_a_prepared_dataset_keep_the_umask_mode(umask, tmp_path):
    """Both are built in a staging folder and moved into place: neither may stay mkdtemp's 0700."""
    from chexpert_hf.data import prepare, synthesize

    mask, _ = umask
    root = synthesize(tmp_path / "raw", 3, valid_patients=2, seed=0, progress=False).root
    prepared = tmp_path / "prepared"
    prepare(root, prepared, image_size=32)
    for folder in (root, prepared):
        assert mode(folder) == 0o777 & ~mask, folder
    assert mode(root / "train.csv") == 0o666 & ~mask


@pytest.mark.parametrize("cached_features", [False, True], ids=["model", "head-on-cached-features"])
def test_saved_weights_keep_the_umask_mode(umask, tmp_path, cached_features):
    """safetensors 0.8 writes every weights file 0600 (safetensors/safetensors#782): the checkpoints and the final
    model of a run must still be as readable as the config.json beside them."""
    import torch
    from safetensors.torch import save_file
    from scripts.tiny_training import Rows, cpu_arguments, tiny_vit

    from chexpert_hf.training.feature_cache import FeatureHeadModel
    from chexpert_hf.training.trainer import CheXpertTrainer

    mask, expected = umask
    save_file({"x": torch.zeros(1)}, str(tmp_path / "library.safetensors"))  # what the library leaves alone
    library_mode = mode(tmp_path / "library.safetensors")
    torch.manual_seed(0)
    model = FeatureHeadModel(tiny_vit()) if cached_features else tiny_vit()
    arguments = cpu_arguments(tmp_path / "run", per_device_train_batch_size=8, max_steps=1, save_strategy="steps")
    trainer = CheXpertTrainer(
        model=model,
        args=arguments,
        train_dataset=Rows(),
        family="vit",
        image_mean=[0.5],
        image_std=[0.5],
        num_channels=1,
    )
    if not cached_features:
        trainer.train()  # checkpoint-1 through the Trainer's checkpoint path
    trainer.save_model()
    folders = [tmp_path / "run"] + ([] if cached_features else [tmp_path / "run" / "checkpoint-1"])
    for folder in folders:
        assert mode(folder / "model.safetensors") == mode(folder / "config.json") == expected, folder
    if mask != 0o077:  # the library's own mode differs: without the chmod these folders would show it
        assert library_mode != expected
