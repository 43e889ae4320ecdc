"""The privacy-utility sweep on real federations: a one-point sweep of the smoke study. How its sibling
configs differ: tests/unit/test_sweep.py."""

import json

import pytest

from fedhealth.data.study_file import load_config
from tests.support import SMOKE


@pytest.mark.slow
def test_a_one_point_sweep_on_the_smoke_study(tmp_path):
    """One DP sibling (the no-DP sibling is the same code path with privacy off, covered above)."""
    from fedhealth.experiments.sweep import run_sweep

    cfg = load_config(SMOKE, ["federation.rounds=1"])
    result = run_sweep(cfg, [8.0], tmp_path)
    (dp,) = result["points"]
    assert dp["epsilon"] == 8.0 and dp["all_records_auroc"] > 0.5
    mia = dp["membership_inference"]  # the sibling's membership-inference audit, in brief
    assert 0.0 <= mia["ci_low"] <= mia["auc"] <= mia["ci_high"] <= 1.0
    assert result["membership_inference"]["by_epsilon"] == [{"epsilon": 8.0, **mia}]
    assert (tmp_path / "eps-8" / "privacy_audit.json").is_file()
    ledger = json.loads((tmp_path / "eps-8" / "privacy" / "city-tertiary.json").read_text())
    assert ledger["entries"][-1]["epsilon"] <= 8.0
    assert set(result["references"]) == {"local_only", "pooled"}
    assert (tmp_path / "privacy_utility.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "sweep.json").read_text())["points"][0]["by_tier"].keys() == {
        "tertiary", "secondary", "community"}
