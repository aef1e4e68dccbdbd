"""The training job (``chexpert_hf.training.train.main``) of which one SLURM job, in its first attempt, stops after
its first checkpoint and waits to be preempted: the first grid run (``.../runs/RECIPE/seedS``) to create READY
(its run folder and step written in it) sleeps until SLURM kills it. Every other run, a later attempt
(``SLURM_RESTART_COUNT`` > 0) and a run outside SLURM train straight through.

    python tests/scripts/pause_after_first_save.py READY [train arguments ...]
"""

import os
import sys
import time
from pathlib import Path

from chexpert_hf.training import train
from chexpert_hf.training.nonfinite import NonFiniteLossGuard

original = NonFiniteLossGuard.on_save


def wait_after_first_save(self, args, state, control, **kwargs):
    result = original(self, args, state, control, **kwargs)
    NonFiniteLossGuard.on_save = original  # one pause per process at most
    if "runs" not in Path(args.output_dir).parts:  # a benchmark's grid runs only, not the recipes they start from
        return result
    try:
        with open(sys.argv[1], "x") as ready:  # only the first job to get here pauses
            ready.write(f"{Path(args.output_dir).resolve()} {state.global_step}\n")
    except FileExistsError:
        return result
    while True:  # until the job is requeued (SIGTERM, then SIGKILL)
        time.sleep(1)


if __name__ == "__main__":
    first_attempt = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) == 0
    if first_attempt:
        NonFiniteLossGuard.on_save = wait_after_first_save
    sys.exit(train.main(sys.argv[2:]))
