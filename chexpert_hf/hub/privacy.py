"""What must never reach the Hub, in one place: access tokens, CheXpert patient identifiers and local paths.

The model card refuses a field and the publishing audit refuses a staged file with the same patterns and the same
scan (:func:`find_leaks`), so a text that one of them refuses the other refuses too. Each caller words its own
message; this module says what was found and on which line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

# Hugging Face user/org tokens (also inside a longer word: "xhf_..." is still a token), and the common shapes of other
# providers' keys, which must start a word (so that "risk-adjusted-..." is not an "sk-" key). 20 characters or more.
TOKEN_PATTERN = re.compile(
    r"hf_[A-Za-z0-9]{20,}|\b(?:api_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,})"
)
# CheXpert's folder names (patient00001); any number of digits, any case.
PATIENT_PATTERN = re.compile(r"patient\d+", re.IGNORECASE)
# An absolute path inside free text: a word that starts at "/", "~/" or a drive letter ("C:\", "D:/"). A URL's path
# ("https://x.co/a") and a slash between words ("family / variant") are not.
ABSOLUTE_PATH_PATTERN = re.compile(r"(?:^|[\s\"'`(=,;])(?:/[\w.~-]|~[/\\]|[A-Za-z]:[\\/])")
# Always a local path in a published file: the system's temporary folder (its own root, with the slash).
TEMPORARY_ROOT = "/tmp/"

TOKEN = "token"  # something shaped like an access token
KNOWN_TOKEN = "known token"  # one of the tokens the caller named (the one in use)
PATIENT = "patient"
PATH = "path"  # an absolute path
MACHINE_PATH = "machine path"  # an absolute path of this machine (home, working directory, temporary folder, ...)


@dataclass(frozen=True)
class Leak:
    """One kind of leak found in a text: where it first occurs (1-based line), and for a machine path, which root."""

    kind: str
    line: int
    root: str | None = None

    def describe(self) -> str:
        """What the audit says about it; never the leaked text itself (a token must not reach a log)."""
        if self.kind == KNOWN_TOKEN:
            return "the Hub token"
        if self.kind == TOKEN:
            return f"a Hub token (line {self.line})"
        if self.kind == MACHINE_PATH:
            return f"an absolute path of this machine ({self.root})"
        if self.kind == PATH:
            return f"an absolute path (line {self.line})"
        return f"a CheXpert patient identifier (line {self.line})"


def line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def is_absolute_path(value: str) -> bool:
    """Whether ``value`` is an absolute path (POSIX, Windows, UNC or under ``~``) or holds one inside its text."""
    return (
        PurePosixPath(value).is_absolute()
        or PureWindowsPath(value).is_absolute()
        or value.startswith(("~/", "~\\", "\\\\"))
        or bool(ABSOLUTE_PATH_PATTERN.search(value))
    )


def machine_roots(extra: Iterable[str | os.PathLike] = ()) -> list[str]:
    """The local paths that must not appear in a published file (home, working directory, the temporary folder and
    ``extra``), each also in its resolved form, longest first."""
    roots = {TEMPORARY_ROOT}
    for path in (os.path.expanduser("~"), os.getcwd(), *extra):
        for form in {os.path.abspath(os.fspath(path)), os.path.realpath(os.fspath(path))}:
            form = form.rstrip("/\\")
            if len(form) > 1:
                roots.add(form)
    return sorted(roots, key=len, reverse=True)


def _machine_path_leaks(text: str, extra: Iterable[str | os.PathLike]) -> list[Leak]:
    leaks = []
    for root in machine_roots(extra):
        # a path, not part of a word or a URL path ("https://x.co/root" is not /root)
        end = "" if root.endswith("/") else r"(?![\w.-])"
        found = re.search(r"(?<![\w.~-])" + re.escape(root) + end, text)
        if found:
            leaks.append(Leak(MACHINE_PATH, line_of(text, found.start()), root))
    return leaks


def find_leaks(
    text: str,
    *,
    tokens: Sequence[str] = (),
    machine_paths: Iterable[str | os.PathLike] | None = None,
    value: bool = False,
    any_path: bool = True,
) -> list[Leak]:
    """Each kind of leak in ``text`` once, at its first occurrence, tokens first: the tokens in ``tokens`` (else
    anything token-shaped), the roots of :func:`machine_roots` when ``machine_paths`` is given (its extra roots),
    any other absolute path, a patient identifier. ``value``: ``text`` is one value (a card field), so being a path
    as a whole (``/``, ``\\\\server``) counts too, not only a path word inside it. ``any_path=False`` looks for the
    machine's own paths only: for text decoded from binary data (a pickle), where a path-like pair of bytes is
    common (about one ``torch.save``'d optimizer state in 20) and means nothing."""
    leaks = []
    known = [text.index(token) for token in tokens if token and token in text]
    if known:
        leaks.append(Leak(KNOWN_TOKEN, line_of(text, min(known))))
    elif found := TOKEN_PATTERN.search(text):
        leaks.append(Leak(TOKEN, line_of(text, found.start())))
    machine = _machine_path_leaks(text, machine_paths) if machine_paths is not None else []
    leaks += machine
    if not machine and any_path:
        found = ABSOLUTE_PATH_PATTERN.search(text)
        if found:
            # the match may start at the character before the path (a space, a newline)
            leaks.append(Leak(PATH, line_of(text, found.end() - 1)))
        elif value and is_absolute_path(text):
            leaks.append(Leak(PATH, 1))
    if found := PATIENT_PATTERN.search(text):
        leaks.append(Leak(PATIENT, line_of(text, found.start())))
    return leaks


def first_leak(text: str, **kwargs) -> Leak | None:
    """The first of :func:`find_leaks` (same arguments), or None for a text that may be published."""
    leaks = find_leaks(text, **kwargs)
    return leaks[0] if leaks else None


def redact_tokens(text: str, replacement: str = "hf_***") -> str:
    """``text`` with every token-shaped string replaced (for error messages that quote another library's)."""
    return TOKEN_PATTERN.sub(replacement, text)


__all__ = [
    "ABSOLUTE_PATH_PATTERN",
    "PATIENT_PATTERN",
    "TOKEN_PATTERN",
    "Leak",
    "find_leaks",
    "first_leak",
    "is_absolute_path",
    "line_of",
    "machine_roots",
    "redact_tokens",
]
