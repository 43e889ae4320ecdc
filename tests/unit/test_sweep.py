"""The privacy-utility sweep: sibling configs differ only in DP. A real sweep:
tests/integration/test_sweep_federation.py."""

import math

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.experiments.sweep import parse_epsilons, sibling_config
from tests.support import SMOKE


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
