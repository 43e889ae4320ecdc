"""`--seeds`: the reduction of several runs' summaries to mean ± sd (fedhealth.experiments.seeds), and the
refusals that come before any federation starts. The federations themselves:
tests/integration/test_seeds_federation.py."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fedhealth import api
from fedhealth.cli import app
from fedhealth.errors import UsageError
from fedhealth.experiments.seeds import seed_summary


def _summary(values: dict[str, float], gain: float, sure: bool) -> dict:
    g = {"estimate": gain, "ci": [gain - 0.05, gain + 0.05], "distinguishable_from_zero": sure}
    return {"study": "s", "overall": {"auroc": dict(values), "mean_hospital_auroc": dict(values),
                                      "gain": g, "mean_hospital_gain": g},
            "hospitals": [{"name": "a", "auroc": dict(values), "gain": g},
                          {"name": "b", "auroc": {**values, "federated": None}, "gain": None}]}


def test_mean_and_sd_per_figure_and_how_often_a_gain_was_beyond_noise():
    runs = [_summary({"federated": f, "local_only": lo}, f - lo, sure)
            for f, lo, sure in ((0.80, 0.70, True), (0.84, 0.78, True), (0.79, 0.77, False))]
    out = seed_summary([1, 2, 3], runs, ["r1", "r2", "r3"])
    fed = out["hospitals"][0]["auroc"]["federated"]
    assert fed["mean"] == pytest.approx(np.mean([0.80, 0.84, 0.79]))
    assert fed["sd"] == pytest.approx(np.std([0.80, 0.84, 0.79], ddof=1))
    assert fed["values"] == [0.80, 0.84, 0.79]
    assert out["hospitals"][0]["gain"]["distinguishable_in"] == 2
    undefined = {"mean": None, "sd": None, "values": [None] * 3, "defined_in": 0}
    assert out["hospitals"][1]["auroc"]["federated"] == undefined
    assert fed["defined_in"] == 3
    assert "gain" not in out["hospitals"][1]  # no gain in some run: no figure, never a made-up one
    assert out["overall"]["gain"]["mean"] == pytest.approx(np.mean([0.10, 0.06, 0.02]))
    assert out["models"] == ["local_only", "federated"] and out["runs"] == ["r1", "r2", "r3"]


def test_runs_of_different_studies_are_refused():
    a, b = _summary({"federated": 0.8}, 0.1, True), _summary({"federated": 0.8}, 0.1, True)
    b["hospitals"][1]["name"] = "c"
    with pytest.raises(ValueError, match="seed 2 has other hospitals"):
        seed_summary([1, 2], [a, b], ["r1", "r2"])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_summary([1], [a], ["r1"])


@pytest.mark.parametrize("bad", ["42", "42,42", "1,-2", "4,x", ""])
def test_bad_seeds_are_named(bad):
    with pytest.raises(UsageError, match="seeds"):
        api.parse_seeds(bad)
    assert api.parse_seeds(" 42, 43,44 ") == [42, 43, 44]


def test_the_command_refuses_seeds_with_seed_and_a_folder_in_use(tmp_path):
    runner = CliRunner()
    both = runner.invoke(app, ["simulate", "--config", "configs/smoke.toml", "--seeds", "1,2", "--seed", "3"])
    assert both.exit_code == 2 and "drop --seed" in both.output
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    busy = runner.invoke(app, ["simulate", "--config", "configs/smoke.toml", "--seeds", "1,2", "--out", str(used)])
    assert busy.exit_code == 2 and "not an empty folder" in busy.output
    assert [p.name for p in used.iterdir()] == ["notes.txt"]  # nothing written there
    bad = runner.invoke(app, ["simulate", "--config", "configs/smoke.toml", "--seeds", "7"])
    assert bad.exit_code == 2 and "at least two different" in bad.output
