"""Helpers every stage shares: the one atomic file write (fsync, the umask's mode), and the one way to render a
Markdown table and a duration, so that cards, reports and benchmark summaries print them alike."""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

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


def new_file_mode() -> int:
    """The mode an ordinary new file gets here: ``0666`` less the umask (``umask 022``: ``0644``)."""
    return 0o666 & ~current_umask()


def give_new_file_mode(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Give the files of ``folder`` that match ``pattern`` the mode of an ordinary new file; returns them.

    For files that a library writes through a private temporary file: safetensors 0.8 saves every
    ``*.safetensors`` as 0600 whatever the umask (safetensors/safetensors#782), so on a shared cluster nobody else
    could load a model whose ``config.json`` beside it they can read.
    """
    paths = sorted(Path(folder).glob(pattern))
    for path in paths:
        os.chmod(path, new_file_mode())
    return paths


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
        os.chmod(temporary, new_file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, directory=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) at ``path``, written by :func:`atomic_write`."""
    atomic_write(path, lambda name: Path(name).write_text(text, encoding="utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither: a mean over no label is null), numpy scalars
    and arrays as Python numbers and lists, and dict keys as strings; for ``json.dumps(..., allow_nan=False)``."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple) or hasattr(value, "tolist"):
        return [json_safe(item) for item in (value.tolist() if hasattr(value, "tolist") else value)]
    return value


_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None, *, tight_rule: bool = False
) -> list[str]:
    """The lines of a Markdown table: ``| a | b |`` rows under ``header``; cells are written as given (escape ``|``
    before). ``align`` has one letter per column, ``l``, ``r`` or ``c`` (default: all left); ``tight_rule`` writes
    the rule as ``|---|---:|`` rather than ``| --- | ---: |``. A row shorter than the header ends in empty cells
    (``| |``), for summary rows under a wider table.
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - set(_RULES):
        raise ValueError(f"align needs one of l, r, c per column ({len(header)}), got {align!r}")
    rule = [_RULES[side] for side in align]
    rule_line = "|" + "|".join(rule) + "|" if tight_rule else "| " + " | ".join(rule) + " |"
    lines = ["| " + " | ".join(header) + " |", rule_line]
    for row in rows:
        cells = list(row)
        if not cells or len(cells) > len(header):
            raise ValueError(f"a row needs 1 to {len(header)} cells, got {len(cells)}")
        lines.append("| " + " | ".join(cells) + " |" + " |" * (len(header) - len(cells)))
    return lines


def format_duration(seconds: float | None, missing: str = "not recorded") -> str:
    """``207.4`` -> ``"3 min 27 s"``; ``5400`` -> ``"1 h 30 min"``; None -> ``missing``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return missing
    total = round(seconds)
    if total < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{total} s"
    hours, remainder = divmod(total, 3600)
    minutes, secs = divmod(remainder, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"
