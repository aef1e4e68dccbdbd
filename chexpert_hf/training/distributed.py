"""Process-group housekeeping for runs under ``accelerate launch``."""

import atexit

import torch


def end_process_group() -> None:
    """Destroy the default process group, where one was started, while the interpreter is fully alive.

    A process that exits with a Gloo group still open can abort (SIGABRT, "terminate called without an active
    exception") during interpreter shutdown, when Gloo's worker threads release tensors that hold Python references
    (pytorch/pytorch#179291): the run then fails with -6 after it had finished, or after it had stopped with a clear
    error. Call this only where every process got to the same point (after training, or at the same check), never
    from one process alone: destroying a group is collective for some backends.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState().destroy_process_group()


_registered = False


def end_process_group_at_exit() -> None:
    """Have :func:`end_process_group` run when the interpreter exits (once, however often this is called), so that
    a process can run several trainings on one group (a notebook, a test) and still close it before shutdown."""
    global _registered
    if not _registered:
        atexit.register(end_process_group)
        _registered = True
