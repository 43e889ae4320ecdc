"""Reading the study's own text files (study TOML, schema, site policy) as UTF-8, with an error a user can act on.

Why a helper: TOML is UTF-8 by definition, and a file saved by a spreadsheet or an old editor as Latin-1
raised a bare UnicodeDecodeError (a traceback) from three places. The message names the file, the byte
offset and the line, so the one byte can be found and the file saved again as UTF-8."""

from __future__ import annotations

from pathlib import Path

from fedhealth.errors import StudyConfigError


class NotUtf8Error(StudyConfigError, ValueError):
    """A text file with a byte that is not UTF-8; the message names the file, byte offset and line."""


def read_utf8(path: Path) -> str:
    """The file's text; NotUtf8Error naming the file, the first bad byte's offset and its line."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise NotUtf8Error(f"{path}: byte offset {err.start} (line {line}) is not UTF-8 text (is the file saved "
                           "as Latin-1 or Windows-1252?); save it as UTF-8") from None
