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
import stat
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


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def special_kind(mode: int) -> str | None:
    """What a file of `os.stat` mode `mode` is when it is not a regular file ("a FIFO (named pipe)", ...);
    None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for is_kind, name in _SPECIAL_KINDS if is_kind(mode)), "not a regular file")


def regular_file_problem(path: Path | str) -> str | None:
    """Why `path` cannot be read as a file, decided without opening it; None when it is a regular file or
    does not exist (the caller says "missing" in its own words).

    Why before opening, and why one helper: opening a FIFO waits for a writer forever and a link to
    /dev/zero reads without end, so every reader of a file a user can point at (data files, the study's
    TOML, a run directory's files, ledgers, audit logs, certificates) asks this first. `os.stat` follows
    links, so the kind is that of the file that would be read; a link is named with its target."""
    path = Path(path)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # a part of the path is a file: `path` is not there either
        return None
    except OSError as err:
        return f"cannot be read ({err.strerror or type(err).__name__})"
    kind = special_kind(info.st_mode)
    if kind is None:
        return None
    via = f" (a link to {terminal_safe(os.path.realpath(path))})" if path.is_symlink() else ""
    return f"is {kind}{via}, not a regular file"
