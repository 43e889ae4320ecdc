"""Reading the study's own text files (study TOML, schema, site policy) as UTF-8, with an error a user can act on.

Why a helper: TOML is UTF-8 by definition, and a file saved by a spreadsheet or an old editor as Latin-1
raised a bare UnicodeDecodeError (a traceback) from three places. The message names the file, the byte
offset and the line, so the one byte can be found and the file saved again as UTF-8."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from fedhealth.durable import special_kind
from fedhealth.errors import StudyConfigError

# A study config, schema or site policy is a page of TOML; a file far larger is not one (a log, a data
# export given by mistake, a link to /dev/zero) and is refused before it is read into memory.
MAX_TEXT_BYTES = 16 * 1024 * 1024


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
    kind = special_kind(info.st_mode)
    if kind is not None:
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


class NotTomlError(TextFileError):
    """A study text file that is UTF-8 but not TOML (a syntax error, or arrays or tables nested so deeply
    that the parser runs out of stack); the message names the file, `why` is the reason alone (for a caller
    that words the file's role itself)."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: not valid TOML: {why}")
        self.why = why


def read_toml(path: Path) -> dict[str, Any]:
    """The file parsed as TOML: TextFileError (special, too large, not UTF-8) or NotTomlError, each naming
    the file; FileNotFoundError for a missing file, so each caller says "not found" in its own words.

    Why one reader: Python's TOML parser recurses once per level of nesting, so `a = [[[ ... ]]]` thousands
    deep raised a RecursionError (not a TOMLDecodeError) that each of the three readers let through as an
    unexpected crash."""
    path = Path(path)
    text = read_utf8(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise NotTomlError(path, str(err)) from None
    except RecursionError:
        raise NotTomlError(path, "arrays or tables nested too deeply to be a study file") from None
