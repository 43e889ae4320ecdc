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


def test_sweep_scores_carry_intervals_and_leave_out_undefined_hospitals():
    """Every AUROC of a sweep or fairness row has the interval summary.json would give it (issue 18, item 7),
    and a hospital without a defined AUROC is null and left out of the mean, worst and tier figures."""
    import numpy as np

    from fedhealth.data.hospitals import load_hospital
    from fedhealth.experiments.headline_scores import headline_scores as _scores
    from fedhealth.experiments.references import Predictions
    from fedhealth.metrics.intervals import auroc_interval, mean_auroc_interval

    cfg = load_config(SMOKE)
    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    risk = {s.index: s.test_true_risk for s in splits}
    scores = _scores(cfg, splits, Predictions(risk))
    y_all = np.concatenate([s.y_test for s in splits])
    assert scores["all_records_auroc_ci"] == auroc_interval(y_all, np.concatenate(list(risk.values()))).as_list()
    each = [auroc_interval(s.y_test, risk[s.index]) for s in splits]
    assert scores["mean_hospital_auroc_ci"] == mean_auroc_interval(each).as_list()
    worst = min(range(len(splits)), key=lambda i: each[i].estimate)
    assert scores["worst_hospital"] == splits[worst].hospital.name
    assert scores["worst_hospital_auroc_ci"] == each[worst].as_list()
    for low, high in [scores["all_records_auroc_ci"], *scores["by_tier_ci"].values()]:
        assert 0.0 <= low < high <= 1.0

    gone = splits[0].hospital.name  # no model there (NaN predictions, as a local-only model from one class)
    scores = _scores(cfg, splits, Predictions({**risk, 0: np.full(len(splits[0].y_test), np.nan)}))
    assert scores["undefined_hospitals"] == [gone] and math.isnan(scores["by_hospital"][gone])
    assert scores["by_hospital_ci"][gone] == [None, None]
    assert scores["mean_hospital_auroc"] == pytest.approx(np.mean([e.estimate for e in each[1:]]))
    assert scores["mean_hospital_auroc_ci"] == mean_auroc_interval(each[1:]).as_list()
    assert splits[0].hospital.tier not in scores["by_tier"] and math.isnan(scores["all_records_auroc"])
