"""The Trainer subclass's parts: sampling weights and draws (also across 2 processes), the masked loss, the
optimizer and the non-finite-loss stop."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import SCRIPTS, run_from_root, two_process_command
from scripts.tiny_training import Rows, cpu_arguments, tiny_vit

from chexpert_hf.training.augmentation import light_affine
from chexpert_hf.training.losses import balanced_pos_weight, masked_bce_with_logits
from chexpert_hf.training.sampling import WeightedEpochSampler, positive_rates, sample_weights

nan = np.nan


# --- sampling weights ------------------------------------------------------------------------------------------


def test_weights_follow_the_documented_formula_by_hand():
    targets = np.array([[1, 0], [0, 0], [0, 1], [0, nan]], dtype=np.float32)
    # label 0: p = 1/4; label 1: p = 1/3 (one masked row)
    p0, p1 = 1 / 4, 1 / 3
    by_hand = np.array(
        [
            (1 / (2 * p0) + 1 / (2 * (1 - p1))) / 2,
            (1 / (2 * (1 - p0)) + 1 / (2 * (1 - p1))) / 2,
            (1 / (2 * (1 - p0)) + 1 / (2 * p1)) / 2,
            1 / (2 * (1 - p0)),  # the masked entry is left out of the row's mean
        ]
    )
    np.testing.assert_allclose(positive_rates(targets), [p0, p1])
    np.testing.assert_allclose(sample_weights(targets, "inverse_frequency"), by_hand / by_hand.mean(), rtol=1e-6)
    soft = np.sqrt(by_hand)
    np.testing.assert_allclose(sample_weights(targets, "sqrt_inverse_frequency"), soft / soft.mean(), rtol=1e-6)


def test_one_label_positives_and_negatives_carry_equal_weight():
    targets = (np.random.default_rng(0).random((1000, 1)) < 0.07).astype(np.float32)
    weights = sample_weights(targets, "inverse_frequency")
    positive = targets[:, 0] == 1
    assert weights[positive].sum() == pytest.approx(weights[~positive].sum())
    assert weights.mean() == pytest.approx(1.0)


def test_weighted_draws_raise_the_share_of_rare_positives():
    rng = np.random.default_rng(1)
    targets = (rng.random((4000, 3)) < [0.02, 0.2, 0.5]).astype(np.float32)
    weights = sample_weights(targets, "inverse_frequency")
    draws = WeightedEpochSampler(weights, seed=0).draws(0)
    drawn = targets[draws].mean(axis=0)
    assert drawn[0] > 5 * targets[:, 0].mean()  # the rarest label is drawn far more often
    assert np.all(np.abs(drawn - 0.5) < np.abs(targets.mean(axis=0) - 0.5) + 0.02)  # every label moves toward 1/2


def test_bad_sampling_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown sampling 'uniform'"):
        sample_weights(np.zeros((3, 2)), "uniform")
    with pytest.raises(ValueError, match="non-negative"):
        WeightedEpochSampler([0.0, 0.0])


def test_sampler_is_seeded_per_epoch():
    sampler = WeightedEpochSampler(np.arange(1, 21, dtype=float), seed=5)
    assert len(sampler) == 20 and len(list(sampler)) == 20
    first = list(sampler)
    assert first == list(sampler) == sampler.draws(0)  # the same epoch gives the same draws
    sampler.set_epoch(1)
    assert list(sampler) != first and list(sampler) == sampler.draws(1)
    assert WeightedEpochSampler(np.arange(1, 21, dtype=float), seed=6).draws(0) != first


def test_two_processes_share_one_epoch_of_draws(tmp_path):
    """Under ``accelerate launch --num_processes 2`` every rank draws the same sequence and takes every other
    batch, so together they see exactly the draws one process would; when the draws do not fill the last pair of
    batches, Accelerate completes it from the start of the same sequence."""
    batch, seed = 4, 3
    command = two_process_command(
        SCRIPTS / "sampler_draws.py",
        str(tmp_path),
        str(batch),
        str(seed),
        "48",
        "50",
    )
    result = run_from_root(command, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    for rows in (48, 50):
        targets = (np.random.default_rng(0).random((rows, 3)) < [0.1, 0.3, 0.6]).astype(np.float32)
        sampler = WeightedEpochSampler(sample_weights(targets, "inverse_frequency"), seed=seed)
        for epoch in ("0", "1"):
            batches_0, batches_1 = ranks[0]["rows"][str(rows)][epoch], ranks[1]["rows"][str(rows)][epoch]
            assert len(batches_0) == len(batches_1) == math.ceil(rows / (2 * batch))
            interleaved = [row for pair in zip(batches_0, batches_1, strict=True) for b in pair for row in b]
            draws = sampler.draws(int(epoch))
            assert interleaved[:rows] == draws  # every draw once, in order
            assert interleaved[rows:] == draws[: len(interleaved) - rows]  # padding: 48 fill evenly, 50 need 6
        assert ranks[0]["rows"][str(rows)]["0"] != ranks[0]["rows"][str(rows)]["1"]


# --- loss ------------------------------------------------------------------------------------------------------


def test_masked_bce_equals_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1.0, nan, 0.0], [0.7, 1.0, nan]])  # a soft target (u_smooth) and two masked entries
    pos_weight = torch.tensor([2.0, 1.0, 3.0])

    def bce(x, y, w=1.0):
        sigmoid = 1 / (1 + math.exp(-x))
        return -(w * y * math.log(sigmoid) + (1 - y) * math.log(1 - sigmoid))

    known = [(0, 0), (0, 2), (1, 0), (1, 1)]
    plain = sum(bce(logits[i, j].item(), targets[i, j].item()) for i, j in known) / 4
    weighted = sum(bce(logits[i, j].item(), targets[i, j].item(), pos_weight[j].item()) for i, j in known) / 4
    assert masked_bce_with_logits(logits, targets).item() == pytest.approx(plain, rel=1e-6)
    assert masked_bce_with_logits(logits, targets, pos_weight).item() == pytest.approx(weighted, rel=1e-6)


def test_masked_entries_get_no_gradient_and_an_all_masked_batch_gives_zero():
    logits = torch.zeros(2, 2, requires_grad=True)
    masked_bce_with_logits(logits, torch.tensor([[1.0, nan], [nan, 0.0]])).backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0 and logits.grad[0, 0] != 0
    assert masked_bce_with_logits(torch.ones(2, 2), torch.full((2, 2), nan)).item() == 0.0


def test_balanced_pos_weight_is_negatives_over_positives():
    targets = np.array([[1, 0], [0, 0], [0, 1], [0, 1]], dtype=np.float32)
    np.testing.assert_allclose(balanced_pos_weight(targets), [3.0, 1.0])


def test_light_augmentation_keeps_shape_and_laterality():
    torch.manual_seed(0)
    image = torch.zeros(8, 1, 64, 64)
    image[..., 8:56, 4:20] = 1.0  # a bright band on the image's left
    moved = light_affine(image)
    assert moved.shape == image.shape and not torch.equal(moved, image)
    left, right = moved[..., :32].sum(dim=(1, 2, 3)), moved[..., 32:].sum(dim=(1, 2, 3))
    assert torch.all(left > 5 * right)  # never mirrored


# --- the Trainer: optimizer log line and the non-finite stop ------------------------------------------------------


def _trainer(tmp_path, **training):

    from chexpert_hf.models.freeze import apply_freeze_policy
    from chexpert_hf.training.trainer import CheXpertTrainer

    torch.manual_seed(0)
    model = tiny_vit(layers=2)
    apply_freeze_policy(model, "vit", "last_block")
    settings = dict(
        per_device_train_batch_size=8,
        save_strategy="steps",
        save_steps=2,
        max_steps=8,
        logging_steps=1,
        learning_rate=1e-3,
    )
    args = cpu_arguments(tmp_path, **{**settings, **training})
    return CheXpertTrainer(
        model=model,
        args=args,
        train_dataset=Rows(),
        family="vit",
        image_mean=[0.5],
        image_std=[0.5],
        num_channels=1,
        layer_decay=0.8,
    )


def test_optimizer_is_adamw_over_trainable_groups_and_logs_the_counts(tmp_path, caplog):
    trainer = _trainer(tmp_path)
    with caplog.at_level(logging.INFO, logger="chexpert_hf.training.trainer"):
        optimizer = trainer.create_optimizer()
    assert "adamw" in type(optimizer).__name__.lower()
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert in_groups == trainable and len(trainable) < len(list(trainer.model.parameters()))
    decays = {group["weight_decay"] for group in optimizer.param_groups}
    assert decays == {0.0, 0.01}
    assert len({group["lr"] for group in optimizer.param_groups}) > 1  # layer decay: block and head differ
    assert optimizer.param_groups[0]["lr"] == trainer.args.learning_rate  # the rate the Trainer logs: the head's
    frozen = sum(p.numel() for p in trainer.model.parameters() if not p.requires_grad)
    assert f"{frozen:,} frozen" in caplog.text and "layer_decay 0.8" in caplog.text


@pytest.mark.parametrize("logging_steps", [1, 100])  # the check also runs at saves and epoch ends, not only logs
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, logging_steps):
    from chexpert_hf.training.nonfinite import NonFiniteLossError

    trainer = _trainer(tmp_path, logging_steps=logging_steps)
    model = trainer.model

    def poison(module, inputs, output):  # from the 5th optimizer step on, the logits are NaN
        if trainer.state.global_step >= 4 and module.training:
            output.logits = output.logits * float("nan")
        return output

    model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    message = str(error.value)
    assert "at step 5" in message and str(tmp_path / "checkpoint-4") in message
    saved = sorted(path.name for path in tmp_path.glob("checkpoint-*"))
    assert saved == ["checkpoint-2", "checkpoint-4"]  # checkpoint-6 would hold NaN weights: never written
    state = torch.load(tmp_path / "checkpoint-4" / "rng_state.pth", weights_only=False)  # a complete checkpoint
    assert state is not None


@pytest.mark.parametrize("family", ["vit", "deit", "swin", "resnet_vit", "densenet121"])
@pytest.mark.parametrize("policy", ["head", "last_block", "full"])
def test_every_trainable_parameter_gets_a_gradient(family, policy):
    """The GPU recipes set ``ddp_find_unused_parameters: false`` (DDP then skips a search through the graph every
    step); that is only right if each trainable parameter takes part in the loss."""
    from conftest import TINY_SIZE, tiny_model

    from chexpert_hf.models.freeze import apply_freeze_policy

    model = tiny_model(family).model
    apply_freeze_policy(model, family, policy)
    model.train()
    logits = model(pixel_values=torch.randn(2, 3, TINY_SIZE, TINY_SIZE)).logits
    masked_bce_with_logits(logits, torch.ones_like(logits)).backward()
    idle = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not idle


def test_a_nan_on_one_process_stops_every_process(tmp_path):
    """Under DDP a NaN on one rank reaches every rank's weights through the gradient all-reduce: all ranks must
    stop at the same check, name the same step, and write no checkpoint after it."""
    command = two_process_command(
        SCRIPTS / "nan_on_one_rank.py",
        str(tmp_path),
    )
    result = run_from_root(command, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    messages = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    for message in messages:
        assert "not finite" in message and "at step 3" in message, message
        assert str(tmp_path / "run" / "checkpoint-2") in message
    assert sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_checkpoint_that_does_not_fit_is_refused_not_half_loaded(tmp_path):
    from safetensors.torch import load_file, save_file

    trainer = _trainer(tmp_path)
    trainer.model.save_pretrained(tmp_path / "checkpoint-1")
    weights = load_file(tmp_path / "checkpoint-1" / "model.safetensors")
    assert trainer._load_weights_from(str(tmp_path / "checkpoint-1"))  # a complete checkpoint loads
    del weights["classifier.weight"]
    save_file(weights, tmp_path / "checkpoint-1" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="classifier.weight"):
        trainer._load_weights_from(str(tmp_path / "checkpoint-1"))
