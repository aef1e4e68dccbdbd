"""Run under ``accelerate launch``: the training job (``chexpert_hf.training.train.main``) whose data stage must
finish within
a process-group timeout of SECONDS, as ``ddp_timeout`` bounds every collective on GPUs (Transformers leaves the
default 30 minutes under ``use_cpu``). The timeout goes back to the default once the data is resolved; READY is
created when the process reaches the data stage.

    accelerate launch ... tests/scripts/train_with_timeout.py SECONDS READY [train arguments ...]
"""

import sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from torch.distributed import distributed_c10d

from chexpert_hf.training import train

parse_recipe, resolve_prepared = train.parse_recipe, train.resolve_prepared


def _set_timeout(seconds: float) -> None:
    if dist.is_initialized():
        set_timeout = getattr(distributed_c10d, "set_timeout", None) or distributed_c10d._set_pg_timeout
        set_timeout(timedelta(seconds=seconds))


def parse_with_timeout(argv=None):
    recipe = parse_recipe(argv)  # the training arguments start the process group
    _set_timeout(float(sys.argv[1]))
    Path(sys.argv[2]).touch()
    return recipe


def resolve_then_default_timeout(*args, **kwargs):
    prepared = resolve_prepared(*args, **kwargs)
    _set_timeout(1800)
    return prepared


if __name__ == "__main__":
    train.parse_recipe, train.resolve_prepared = parse_with_timeout, resolve_then_default_timeout
    sys.exit(train.main(sys.argv[3:]))
