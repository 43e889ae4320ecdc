"""A study's own text files (config, schema, site policy) that are not text files: refused before they are
opened, naming the file and what it is, never a hang (a FIFO waits forever for a writer) or a memory blow-up
(a link to /dev/zero)."""

from __future__ import annotations

import os

import pytest

from fedhealth.study import textfile
from tests.hostile import Hostile, check, write_hospital
from tests.support import SMOKE, TOY_SCHEMA


def _fifo(ws, name):
    os.mkfifo(ws / name)


def _zero(ws, name):
    os.symlink("/dev/zero", ws / name)


CASES = [
    Hostile("config-is-a-fifo", lambda ws: ["simulate", "--config", str(ws / "study.toml"), "--out", str(ws / "out")],
            2, names=("study.toml", "FIFO"), setup=lambda ws: _fifo(ws, "study.toml"), allowed=()),
    Hostile("config-links-to-dev-zero", lambda ws: ["simulate", "--config", str(ws / "study.toml")], 2,
            names=("study.toml", "character device"), setup=lambda ws: _zero(ws, "study.toml"), allowed=()),
    Hostile("schema-is-a-fifo", lambda ws: ["validate", "--schema", str(ws / "s.toml"), "--data", str(ws / "toy.csv")],
            2, names=("s.toml", "FIFO"), setup=lambda ws: (write_hospital(ws), _fifo(ws, "s.toml")), allowed=()),
    Hostile("schema-links-to-dev-zero", lambda ws: ["validate", "--schema", str(ws / "s.toml"), "--data",
                                                    str(ws / "toy.csv")],
            2, names=("s.toml", "character device"), setup=lambda ws: (write_hospital(ws), _zero(ws, "s.toml")),
            allowed=()),
    Hostile("config-is-a-folder", lambda ws: ["simulate", "--config", str(ws)], 2, names=("directory",), allowed=()),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_study_file_that_is_not_a_text_file_is_refused_before_it_is_opened(case, tmp_path):
    check(case, tmp_path)


def test_a_text_file_over_the_limit_is_refused_naming_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(textfile, "MAX_TEXT_BYTES", 100)
    path = tmp_path / "schema.toml"
    path.write_text(TOY_SCHEMA)
    with pytest.raises(textfile.TextFileError, match=r"schema\.toml: \d+ bytes, over the 100 bytes"):
        textfile.read_utf8(path)


def test_an_ordinary_config_still_reads(tmp_path):
    assert "[federation]" in textfile.read_utf8(SMOKE)
