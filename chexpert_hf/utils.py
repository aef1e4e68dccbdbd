"""Helpers every stage shares: the one atomic file write (fsync, the umask's mode)."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows.

    ``os.umask`` can only be read by setting it, which for an instant changes the mode of files other threads
    create; Linux shows it in ``/proc/self/status`` (since 4.7), read first. Elsewhere it is set and put back under
    a lock (threads of this module at least do not race each other).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    try:
        handle = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:  # a folder cannot be opened everywhere (Windows); the rename is still atomic
            return
        raise
    try:
        os.fsync(handle)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(handle)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """``write(temporary_name)``, then rename the temporary file to ``path``: never half a file at ``path``.

    The temporary file is put on disk (fsync) before the rename and the folder after it, so a crash leaves the
    previous file or the new one. ``mkstemp`` creates its file readable by its owner only (0600); it is given the
    mode an ordinary new file gets (``0666`` less the umask) before it takes ``path``'s place, so a run's results
    are as readable as any other file the user writes (``umask 022``: everyone can read them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the same suffix, for writers that go by it (np.save adds ".npy" to a name without it)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        _fsync_path(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, directory=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) at ``path``, written by :func:`atomic_write`."""
    atomic_write(path, lambda name: Path(name).write_text(text, encoding="utf-8"))
