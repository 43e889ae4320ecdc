"""The privacy-utility sweep: sibling configs differ only in DP, and a real two-point sweep."""

import json
import math
from pathlib import Path

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.experiments.sweep import parse_epsilons, sibling_config

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.toml"


def test_epsilons_parse_sorted_and_bad_ones_are_named():
    assert parse_epsilons("8, 0.5,inf,1") == [0.5, 1.0, 8.0, math.inf]
    with pytest.raises(ValueError, match="'eight' is not a number"):
        parse_epsilons("1,eight")
    with pytest.raises(ValueError, match="must be positive"):
        parse_epsilons("0,1")


def test_siblings_share_everything_but_privacy():
    cfg = load_config(SMOKE)
    dp = sibling_config(cfg, 2.0)
    plain = sibling_config(cfg, math.inf)
    assert dp.privacy.mode == "record" and dp.privacy.target_epsilon == 2.0
    assert plain.privacy.mode == "none"
    for sib in (dp, plain):
        assert sib.seed == cfg.seed and sib.hospitals == cfg.hospitals and sib.model == cfg.model
        assert sib.federation.rounds == cfg.federation.rounds and not sib.references.local_only


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
