"""The hostile-input harness itself: it must catch what it is there to catch (a case that leaks, a case that
writes outside --out), or every table built on it proves nothing."""

from __future__ import annotations

import pytest

from tests.hostile import SENTINELS, Hostile, check
from tests.support import SMOKE


def test_the_harness_passes_a_clean_refusal(tmp_path):
    check(Hostile("no config", ["simulate"], 2, names=("--config",)), tmp_path)


def test_the_harness_catches_a_planted_value_on_screen(tmp_path):
    # a config error echoes the value given; here that value is one of the sentinels
    case = Hostile("leak", ["simulate", "--config", str(SMOKE), "--set", f'seed="{SENTINELS[0]}"'], 2,
                   names=("seed",))
    with pytest.raises(AssertionError):
        check(case, tmp_path)


def test_the_harness_catches_a_file_written_outside_out(tmp_path):
    case = Hostile("escape", lambda ws: ["certs", "init", "--out", str(ws / "pki")], 0)
    with pytest.raises(AssertionError, match="files changed outside"):
        check(case, tmp_path)
