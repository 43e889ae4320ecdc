"""Contribution by coalition re-runs: the budget logic on a known game. One real coalition federation:
tests/integration/test_contribution_federation.py."""

import json

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.experiments.contribution import CoalitionValues, coalition_config, estimate_contributions
from fedhealth.study.config import ConfigError
from tests.support import SMOKE

WORTH = {"city-tertiary": 0.20, "county-secondary": 0.10, "village-clinic": 0.05}


class AdditiveGame(CoalitionValues):
    """v(S) = 0.5 + sum of fixed worths: exact Shapley = leave-one-out = each worth."""

    def _evaluate(self, members):
        return 0.5 + sum(WORTH[m] for m in members)


def test_exact_when_every_coalition_fits_the_budget(tmp_path):
    result = estimate_contributions(load_config(SMOKE), tmp_path, budget=7, values=AdditiveGame)
    assert result["method"] == "exact" and result["federations_run"] == 7
    for h in result["hospitals"]:
        assert h["shapley"] == pytest.approx(WORTH[h["name"]]) and h["shapley_stderr"] == 0.0
        assert h["leave_one_out"] == pytest.approx(WORTH[h["name"]])
    assert json.loads((tmp_path / "contribution.json").read_text())["grand_coalition_value"] == pytest.approx(0.85)


def test_sampled_within_budget_and_refused_below_what_leave_one_out_needs(tmp_path):
    result = estimate_contributions(load_config(SMOKE), tmp_path / "a", budget=6, values=AdditiveGame)
    assert result["method"] == "Monte Carlo permutation sampling" and result["federations_run"] <= 6
    assert result["permutations"] >= 2
    assert sum(h["shapley"] for h in result["hospitals"]) == pytest.approx(0.35)  # efficient
    with pytest.raises(ValueError, match="below the 4 federations leave-one-out needs"):
        estimate_contributions(load_config(SMOKE), tmp_path / "b", budget=3, values=AdditiveGame)


def test_a_coalition_trains_only_its_members_on_unchanged_data():
    cfg = load_config(SMOKE)
    coalition = coalition_config(cfg, frozenset({"village-clinic"}))
    assert coalition.federation.participants == ["village-clinic"]
    assert not coalition.federation.secure_aggregation.enabled
    assert [h.name for h in coalition.hospitals] == [h.name for h in cfg.hospitals]  # same positions, same data
    with pytest.raises(ConfigError, match="no hospital named nowhere"):
        load_config(SMOKE, ['federation.participants=["nowhere"]'])


def test_a_hospital_outside_the_coalition_declines_to_train():
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.model.initial import initial_weights
    from fedhealth.wire import DECLINED_KEY, study_payload

    cfg = coalition_config(load_config(SMOKE), frozenset({"village-clinic"}))
    _, n, metrics = HospitalClient(0).fit(initial_weights(cfg), study_payload(cfg, 1))
    assert n == 0 and "not in federation.participants" in metrics[DECLINED_KEY]
