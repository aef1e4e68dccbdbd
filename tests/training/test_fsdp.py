"""FSDP2 with the wrap choice of chexpert_hf.training.fsdp, on CPU: two gloo processes prepare each transformer
family the way
training does (accelerate_configs/fsdp.yaml's settings, then accelerate's own FSDP2 preparation), take one step
under every freeze policy, gather the full state dict, and compare it with the same step without sharding."""

from __future__ import annotations

import copy
import json
import os
import types
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_SIZE, free_port, tiny_model

from chexpert_hf.models import FAMILIES, build_model
from chexpert_hf.models.freeze import POLICIES, apply_freeze_policy, param_groups
from chexpert_hf.training.arguments import ConfigurationError
from chexpert_hf.training.fsdp import apply_fsdp_wrap_policy, fsdp_block_classes, fsdp_wrapped_modules

SHARDED = [name for name, family in FAMILIES.items() if family.fsdp_block]
FSDP_CONFIG = str(ROOT / "accelerate_configs" / "fsdp.yaml")
BATCH = 4  # two images per process


def test_every_transformer_family_names_a_block():
    assert set(SHARDED) == set(FAMILIES) - {"densenet121"}
    with pytest.raises(ConfigurationError, match="densenet121"):
        fsdp_block_classes("densenet121")


def _final_norm(model: torch.nn.Module) -> str | None:
    """The module accelerate's FSDP2 preparation makes the tail unit: the base model's last direct child norm."""
    prefix = model.base_model_prefix
    norms = [name for name, module in getattr(model, prefix).named_children() if "Norm" in type(module).__name__]
    return f"{prefix}.{norms[-1]}" if norms else None


@pytest.mark.parametrize("family", SHARDED)
def test_wrapped_units_do_not_nest(family):
    """Every unit FSDP2 makes (the blocks, the input embeddings, the final norm) is disjoint from the others."""
    model = tiny_model(family).model
    blocks = fsdp_wrapped_modules(model, family)
    assert blocks, f"no {fsdp_block_classes(family)} in {type(model).__name__}"
    names = {module: name for name, module in model.named_modules()}
    units = [*blocks, names[model.get_input_embeddings()], _final_norm(model)]
    assert None not in units
    for outer in units:
        for inner in units:
            assert outer == inner or not inner.startswith(outer + "."), f"{inner} is inside the unit {outer}"


def test_the_hybrid_has_input_embeddings():
    model = tiny_model("resnet_vit").model
    assert model.get_input_embeddings() is model.resnet_vit.embeddings.projection
    assert model.resnet_vit.get_input_embeddings() is model.resnet_vit.embeddings.projection


def test_wrap_policy_without_fsdp_changes_nothing():
    assert apply_fsdp_wrap_policy(types.SimpleNamespace(state=types.SimpleNamespace()), "vit") is None


def test_wrap_policy_needs_transformer_based_wrap():
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    plugin = types.SimpleNamespace(auto_wrap_policy=size_based_auto_wrap_policy, transformer_cls_names_to_wrap=None)
    with pytest.raises(ConfigurationError, match="TRANSFORMER_BASED_WRAP"):
        apply_fsdp_wrap_policy(types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=plugin)), "vit")


def _launch_environment() -> dict[str, str]:
    """The FSDP settings ``accelerate launch --config_file accelerate_configs/fsdp.yaml`` gives its processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", FSDP_CONFIG, "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = {key: value for key, value in prepare_multi_gpu_env(args).items() if key.startswith(("FSDP_", "ACCELERATE_"))}
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    # bf16 would change the numbers of both runs alike, not what is sharded: compare in float32.
    env["ACCELERATE_MIXED_PRECISION"] = "no"
    return env


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(BATCH, 3, TINY_SIZE, TINY_SIZE, generator=generator)
    labels = torch.randint(0, 2, (BATCH, 5), generator=generator).float()
    return pixels, labels


def _step(model, optimizer, pixels, labels) -> None:
    model(pixel_values=pixels, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _optimizer(model, family: str) -> torch.optim.Optimizer:
    """The Trainer's parameter groups (trainable parameters only, weight decay, layer ids) under SGD with momentum:
    AdamW's first step is about lr * sign(gradient), which would hide a gradient summed instead of averaged over
    the processes and turn rounding noise on a zero gradient (a key bias) into a full step."""
    return torch.optim.SGD(param_groups(model, family, lr=0.1, weight_decay=0.01), lr=0.1, momentum=0.9)


def _sharded_step(accelerator, family: str, policy: str, folder: str) -> None:
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    rank = accelerator.process_index
    # accelerate uses FSDP only on accelerators: give the gloo accelerator the plugin that fsdp.yaml's settings
    # build, and the distributed type that goes with it (accelerate keeps it in both states).
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    assert accelerator.is_fsdp2
    assert apply_fsdp_wrap_policy(accelerator, family) == [FAMILIES[family].fsdp_block]

    torch.manual_seed(0)
    model = tiny_model(family).model
    apply_freeze_policy(model, family, policy)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reference = copy.deepcopy(model)
    # Evaluation mode: Swin's stochastic depth would draw differently in the two runs; gradients flow alike.
    model.eval()
    reference.eval()
    pixels, labels = _batch()
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)

    model, optimizer = accelerator.prepare(model, _optimizer(model, family))
    assert type(model).__name__.startswith("FSDP")
    _step(model, optimizer, pixels[half], labels[half])  # gradients are averaged over the two halves
    with torch.no_grad():
        sharded_logits = model(pixel_values=pixels).logits
    assert accelerator.is_fsdp2
    state = accelerator.get_state_dict(model)  # the full state dict, on rank 0 (the Trainer's FULL_STATE_DICT)
    if rank == 0:
        _step(reference, _optimizer(reference, family), pixels, labels)
        expected = reference.state_dict()
        assert state.keys() == expected.keys()
        trainable = {name for name, parameter in reference.named_parameters() if parameter.requires_grad}
        for name, tensor in state.items():
            torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6, msg=f"{family} {policy} {name}")
            if name not in trainable:
                assert torch.equal(tensor, initial[name]), f"{family} {policy}: frozen {name} changed"
        assert any(not torch.equal(state[name], initial[name]) for name in trainable)
        model.save_pretrained(folder, state_dict=state)  # as Trainer._save does with the gathered state dict
        assert type(model).__name__.startswith("FSDP")
        # The same files as without sharding: for the hybrid, its own code files and auto_map, not torch's FSDP ones.
        reference.save_pretrained(folder + "_reference")
        saved, unsharded = Path(folder), Path(folder + "_reference")
        assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in unsharded.iterdir())
        assert json.loads((saved / "config.json").read_text()) == json.loads((unsharded / "config.json").read_text())
        loaded = build_model(family, model_name_or_path=folder).model.eval()
        with torch.no_grad():
            reference_logits = reference(pixel_values=pixels).logits
            loaded_logits = loaded(pixel_values=pixels).logits
        torch.testing.assert_close(loaded_logits, reference_logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded_logits, sharded_logits, rtol=1e-5, atol=1e-6)
    accelerator.wait_for_everyone()
    accelerator.free_memory()


def _worker(rank: int, port: int, env: dict[str, str], root: str) -> None:
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)  # gloo, as accelerate_configs/cpu.yaml
    for family in SHARDED:
        for policy in POLICIES:
            _sharded_step(accelerator, family, policy, os.path.join(root, family, policy))
    torch.distributed.destroy_process_group()


def test_fsdp_step_matches_unsharded_step(tmp_path):
    """Each family and freeze policy (mixed requires_grad inside one unit), sharded over two processes."""
    torch.multiprocessing.spawn(_worker, args=(free_port(), _launch_environment(), str(tmp_path)), nprocs=2)
