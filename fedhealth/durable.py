"""Writes that survive a crash or a power loss: write a temporary file, fsync it, rename it over the
target, fsync the directory. A reader sees the old file or the new one, never half of either.

Used for what must not be lost: a hospital's privacy ledger (a lost charge is spent budget that no longer
shows), its stored releases and its secret.

`inside` is the belt under every write into a folder fedhealth was given (a run directory, an `--out`):
names that become file names are checked where they are read (the study's hospitals and its name, a
hospital's node config), and `inside` refuses any path that would still land outside its folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedhealth.errors import UsageError, terminal_safe


class PathEscapeError(UsageError):
    """A file name that would put a file outside the folder it belongs in (`../x`, an absolute path, a link
    that leads out): nothing is written."""


def inside(root: Path | str, *parts: str | Path) -> Path:
    """`root / parts...`, refused (PathEscapeError) unless it resolves to a path inside `root` itself
    (links followed, so a link inside `root` that leads out is refused too). Returns the unresolved
    `root / parts...`, so messages show the path as the user gave it."""
    root = Path(root)
    target = root.joinpath(*parts)
    base = root.resolve()
    resolved = target.resolve()
    if resolved == base or base not in resolved.parents:
        shown = terminal_safe(repr("/".join(str(p) for p in parts)))
        raise PathEscapeError(f"{terminal_safe(str(root))}: the file name {shown} would be written outside this "
                              "folder; names of hospitals and studies may use letters, digits, '-', '_' and '.'")
    return target


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (POSIX: the directory entry itself is data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably; the file gets `mode` (0600: the owner only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)
