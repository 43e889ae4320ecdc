"""Reading the study's own text files (study TOML, schema, site policy) as UTF-8, with an error a user can act on.

Why a helper: TOML is UTF-8 by definition, and a file saved by a spreadsheet or an old editor as Latin-1
raised a bare UnicodeDecodeError (a traceback) from three places. The message names the file, the byte
offset and the line, so the one byte can be found and the file saved again as UTF-8."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fedhealth.errors import StudyConfigError

# A study config, schema or site policy is a page of TOML; a file far larger is not one (a log, a data
# export given by mistake, a link to /dev/zero) and is refused before it is read into memory.
MAX_TEXT_BYTES = 16 * 1024 * 1024
_NOT_A_FILE = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


class TextFileError(StudyConfigError, ValueError):
    """A study text file that cannot be read as one: not a regular file, too large, or not UTF-8; the message
    names the file."""


class NotUtf8Error(TextFileError):
    """A text file with a byte that is not UTF-8; the message names the file, byte offset and line."""


def read_utf8(path: Path) -> str:
    """The file's text; NotUtf8Error naming the file, the first bad byte's offset and its line.

    A FIFO, device, socket or directory is refused before it is opened (reading a FIFO waits forever for a
    writer), and so is a file over `MAX_TEXT_BYTES`; both errors name the file."""
    path = Path(path)
    info = os.stat(path)  # follows links: a link to /dev/zero is a character device; missing: FileNotFoundError
    for is_kind, kind in _NOT_A_FILE:
        if is_kind(info.st_mode):
            raise TextFileError(f"{path}: is {kind}, not a text file; give the path of a TOML file")
    if info.st_size > MAX_TEXT_BYTES:
        raise TextFileError(f"{path}: {info.st_size} bytes, over the {MAX_TEXT_BYTES} bytes a study's TOML file "
                               "may have; is this the right file?")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise NotUtf8Error(f"{path}: byte offset {err.start} (line {line}) is not UTF-8 text (is the file saved "
                           "as Latin-1 or Windows-1252?); save it as UTF-8") from None
