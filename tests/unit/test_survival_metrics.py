"""Time-to-event figures (fedhealth.metrics.survival) equal scikit-survival's on fixed seeded cohorts (sizes 6 to
300, light and heavy censoring, tied times, tied risks, an event and a censoring at the same time), to 1e-10:
both sides compute the same sums in a different order, so they differ by rounding only (about 1e-15 here).
Small cases are checked by hand as well; undefined figures are NaN; every ValueError says what to fix and
never quotes a value."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
from sksurv.metrics import brier_score as sk_brier_score
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.metrics import cumulative_dynamic_auc as sk_cumulative_dynamic_auc
from sksurv.metrics import integrated_brier_score as sk_integrated_brier_score
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from fedhealth.metrics import survival
from fedhealth.metrics.classification import roc_auc
from fedhealth.metrics.survival import (
    brier_scores,
    censoring_survival,
    cumulative_dynamic_auc,
    harrell_c,
    integrated_brier_score,
    kaplan_meier,
    step_function_at,
    uno_c,
)

TOL = 1e-10


def _cohort(seed: int, n: int, censored: float, risk_decimals: int | None):
    """Test and training records with integer times (many tied), a shared event/censoring time and tied
    events, and the training follow-up covering the test's (one late training event) as sksurv requires."""
    rng = np.random.default_rng(seed)

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        return np.floor(rng.exponential(6.0, m)) + 1.0, rng.random(m) >= censored

    time, event = draw(n)
    time[1], event[:3], time[2] = time[0], [True, False, True], time[0]  # censored with an event; tied events
    train_time, train_event = draw(2 * n)
    train_time, train_event = np.r_[train_time, time.max() + 1.0], np.r_[train_event, True]
    risk = rng.normal(size=n) - 0.15 * time
    if risk_decimals is not None:
        risk = np.round(risk, risk_decimals)  # tied risks, within and across event status
    quartiles = np.quantile(time[event], [0.25, 0.5, 0.75], method="lower")  # horizons at event times
    horizons = np.unique(np.r_[quartiles, np.median(time) + 0.5])
    horizons = horizons[(horizons >= time.min()) & (horizons < time.max())]
    assert len(horizons) >= 2
    return time, event, risk, train_time, train_event, horizons


CASES = {"n6-light": (0, 6, 0.2, 1), "n40-heavy": (1, 40, 0.85, 1), "n40-light-untied": (2, 40, 0.3, None),
         "n300-heavy": (3, 300, 0.8, 0), "n300-light": (4, 300, 0.25, 2), "n120-heavier": (5, 120, 0.9, 1)}


@pytest.fixture(params=list(CASES), scope="module")
def cohort(request):
    return _cohort(*CASES[request.param])


def _surv(event, time):
    return Surv.from_arrays(event.astype(bool), time)


# ---- sksurv as the reference ---------------------------------------------------------------------------------


def test_kaplan_meier_matches_sksurv(cohort):
    time, event = cohort[0], cohort[1]
    ref_times, ref_survival = kaplan_meier_estimator(event, time)  # at every distinct time, events or not
    times, values = kaplan_meier(time, event)
    np.testing.assert_array_equal(times, np.unique(time[event]))
    np.testing.assert_allclose(step_function_at(times, values, ref_times), ref_survival, rtol=0, atol=TOL)
    assert ((np.diff(values) < 0) & (values[1:] >= 0)).all()


def test_censoring_survival_matches_sksurv_reverse(cohort):
    time, event = cohort[3], cohort[4]
    ref_times, ref_survival = kaplan_meier_estimator(event, time, reverse=True)
    times, values = censoring_survival(time, event)
    np.testing.assert_array_equal(times, np.unique(time[~event]))
    np.testing.assert_allclose(step_function_at(times, values, ref_times), ref_survival, rtol=0, atol=TOL)


def test_harrell_c_matches_sksurv(cohort):
    time, event, risk = cohort[:3]
    assert harrell_c(time, event, risk) == pytest.approx(concordance_index_censored(event, time, risk)[0],
                                                         abs=TOL)
    # 0/1 integers are accepted as events, and give the same figure
    assert harrell_c(time, event.astype(int), risk) == harrell_c(time, event, risk)


@pytest.mark.parametrize("tau_quantile", [None, 0.6])
def test_uno_c_matches_sksurv(cohort, tau_quantile):
    time, event, risk, train_time, train_event, _ = cohort
    tau = None if tau_quantile is None else float(np.quantile(time, tau_quantile))
    expected = concordance_index_ipcw(_surv(train_event, train_time), _surv(event, time), risk, tau=tau)[0]
    assert uno_c(time, event, risk, train_time, train_event, tau) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("per_horizon", [False, True])
def test_cumulative_dynamic_auc_matches_sksurv(cohort, per_horizon):
    time, event, risk, train_time, train_event, horizons = cohort
    if per_horizon:  # a time-dependent risk: one column per horizon, with ties
        risk = np.round(risk[:, None] * np.linspace(1.0, 0.3, len(horizons))[None, :], 1)
    expected, expected_mean = sk_cumulative_dynamic_auc(_surv(train_event, train_time), _surv(event, time), risk,
                                                        horizons)
    auc, mean_auc = cumulative_dynamic_auc(time, event, risk, horizons, train_time, train_event)
    np.testing.assert_allclose(auc, expected, rtol=0, atol=TOL)
    assert mean_auc == pytest.approx(expected_mean, abs=TOL)
    single, single_mean = cumulative_dynamic_auc(time, event, risk[:, :1] if per_horizon else risk, horizons[:1],
                                                 train_time, train_event)
    assert single_mean == single[0] == pytest.approx(expected[0], abs=TOL)


def test_brier_and_integrated_brier_match_sksurv(cohort):
    time, event, _, train_time, train_event, horizons = cohort
    rng = np.random.default_rng(len(time))
    predicted = np.round(rng.random((len(time), len(horizons))), 1)  # tied, with exact 0s and 1s
    predicted[:, 0] = 1.0
    train, test = _surv(train_event, train_time), _surv(event, time)
    ref_horizons, expected = sk_brier_score(train, test, predicted, horizons)
    np.testing.assert_array_equal(ref_horizons, horizons)
    np.testing.assert_allclose(brier_scores(time, event, predicted, horizons, train_time, train_event), expected,
                               rtol=0, atol=TOL)
    assert integrated_brier_score(time, event, predicted, horizons, train_time, train_event) == pytest.approx(
        sk_integrated_brier_score(train, test, predicted, horizons), abs=TOL)
    one = brier_scores(time, event, predicted[:, 0], horizons[:1], train_time, train_event)  # (n,) with one
    assert one[0] == pytest.approx(expected[0], abs=TOL)


def test_risk_ties_within_tolerance_follow_sksurv():
    """One event (risk 1.2e-8) and two records followed past it (risks 0 and 0.6e-8). Harrell's C ties a pair
    within 1e-8 of each other: 1.2e-8 beats 0 and ties 0.6e-8, C = 3/4. The AUROC ties a sorted run whose
    neighbours are each within 1e-8: all three are one threshold, AUROC = 1/2. Both as sksurv."""
    time, event = np.array([1.0, 4.0, 5.0]), np.array([True, False, False])
    risk = np.array([1.2e-8, 0.0, 0.6e-8])
    train_time, train_event = np.r_[time, 6.0], np.r_[event, True]
    assert harrell_c(time, event, risk) == pytest.approx(concordance_index_censored(event, time, risk)[0], abs=TOL)
    assert harrell_c(time, event, risk) == 0.75
    auc, _ = cumulative_dynamic_auc(time, event, risk, [2.0], train_time, train_event)
    expected, _ = sk_cumulative_dynamic_auc(_surv(train_event, train_time), _surv(event, time), risk, [2.0])
    assert auc[0] == pytest.approx(expected[0], abs=TOL)
    assert auc[0] == 0.5
    # with tied_tol=0 only equal risks tie: the three are ranked
    assert harrell_c(time, event, risk, tied_tol=0.0) == 1.0
    assert cumulative_dynamic_auc(time, event, risk, [2.0], train_time, train_event, tied_tol=0.0)[0][0] == 1.0
    assert sk_cumulative_dynamic_auc(_surv(train_event, train_time), _surv(event, time), risk, [2.0],
                                     tied_tol=0.0)[0][0] == 1.0


def test_records_that_need_no_weight_may_lie_beyond_the_training_follow_up():
    """sksurv asks for G at every test time (Brier) or every test event (AUROC), used or not, and raises when
    one lies beyond the training follow-up; here only the weights that are used must exist. The figures are
    then those of sksurv on the same records with those times moved inside the training follow-up (which
    changes nothing they depend on: they stay after the last horizon)."""
    time, event, risk, train_time, train_event, horizons = _cohort(*CASES["n40-heavy"])
    late = np.argsort(time)[-3:]
    time = time.copy()
    time[late] = train_time.max() + np.array([1.0, 2.0, 3.0])  # beyond the training follow-up
    event = event.copy()
    event[late] = [True, False, True]
    moved = time.copy()
    moved[late] = train_time.max() - 0.5
    assert moved[late].min() > horizons[-1]
    train, test, test_moved = _surv(train_event, train_time), _surv(event, time), _surv(event, moved)
    with pytest.raises(ValueError, match="largest observed time point"):
        sk_brier_score(train, test, np.full((len(time), len(horizons)), 0.5), horizons)
    with pytest.raises(ValueError, match="largest observed time point"):
        sk_cumulative_dynamic_auc(train, test, risk, horizons)
    predicted = np.full((len(time), len(horizons)), 0.7)
    np.testing.assert_allclose(brier_scores(time, event, predicted, horizons, train_time, train_event),
                               sk_brier_score(train, test_moved, predicted, horizons)[1], rtol=0, atol=TOL)
    auc, mean_auc = cumulative_dynamic_auc(time, event, risk, horizons, train_time, train_event)
    expected, expected_mean = sk_cumulative_dynamic_auc(train, test_moved, risk, horizons)
    np.testing.assert_allclose(auc, expected, rtol=0, atol=TOL)
    assert mean_auc == pytest.approx(expected_mean, abs=TOL)


def test_a_brier_score_whose_weight_is_one_over_zero_raises_where_sksurv_drops_the_term():
    """The last training record is censored, so G is 0 from its time (6) on. At a horizon there sksurv's
    brier_score sets 1/G to 0: the control's term vanishes, the mean still counts the control, and the score
    it returns is too low."""
    time = np.array([1.0, 2.0, 3.0, 5.0, 7.0])
    event = np.array([True, False, True, True, False])
    train_time = np.array([1.0, 2.0, 4.0, 6.0])
    train_event = np.array([True, False, True, False])  # G: 1, then 2/3 from 2, then 0 from 6
    predicted = np.full((5, 1), 0.5)
    train, test = _surv(train_event, train_time), _surv(event, time)
    dropped = sk_brier_score(train, test, predicted, [6.0])[1][0]
    assert dropped == pytest.approx((0.25 / 1 + 0.25 / (2 / 3) + 0.25 / (2 / 3) + 0) / 5, abs=1e-15)
    with pytest.raises(ValueError, match=r"horizons: 1 of 1 at position 0 fall beyond the training follow-up"):
        brier_scores(time, event, predicted, [6.0], train_time, train_event)
    # where the weights exist, sksurv's figure
    np.testing.assert_allclose(brier_scores(time, event, predicted, [4.0], train_time, train_event),
                               sk_brier_score(train, test, predicted, [4.0])[1], rtol=0, atol=TOL)


# ---- By hand ---------------------------------------------------------------------------------------------------


def test_kaplan_meier_by_hand():
    """At t=2 an event and a censoring tie: 4 at risk (the censored one included), 1 event."""
    times, values = kaplan_meier([1, 2, 2, 3, 4], [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(times, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(values, [4 / 5, 4 / 5 * 3 / 4, 4 / 5 * 3 / 4 * 1 / 2], rtol=0, atol=1e-15)
    # the censorings: at t=2 the event leaves first (3 at risk, 1 censored); at t=4 the last one is censored
    times, values = censoring_survival([1, 2, 2, 3, 4], [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(times, [2.0, 4.0])
    np.testing.assert_allclose(values, [2 / 3, 0.0], rtol=0, atol=1e-15)
    assert kaplan_meier([3.0, 5.0], [0, 0])[0].size == 0  # no event: no step
    assert kaplan_meier([], [])[0].size == 0


def test_step_function_at_is_right_continuous():
    times, values = np.array([1.0, 2.0, 4.0]), np.array([0.8, 0.5, 0.1])
    at = np.array([0.0, 0.999, 1.0, 1.5, 2.0, 3.9, 4.0, 10.0])
    np.testing.assert_array_equal(step_function_at(times, values, at), [1, 1, 0.8, 0.8, 0.5, 0.5, 0.1, 0.1])
    assert step_function_at(times, values, 0.5, initial=0.0) == 0.0
    np.testing.assert_array_equal(step_function_at([], [], [1.0, 2.0]), [1.0, 1.0])


def test_harrell_c_by_hand():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    event = np.ones(5, dtype=bool)
    assert harrell_c(time, event, -time) == 1.0  # higher risk, earlier event: every pair concordant
    assert harrell_c(time, event, time) == 0.0
    assert harrell_c(time, event, np.zeros(5)) == 0.5
    # t=1 event, t=1 censored (comparable: the censored one outlived it), t=2 and t=2 both events (not
    # comparable with each other), t=3 censored. Pairs: (0,1) (0,2) (0,3) (0,4) (2,4) (3,4) = 6;
    # risks make (0,1) tied, (2,4) discordant, the rest concordant: (4 + 1/2) / 6
    time = np.array([1.0, 1.0, 2.0, 2.0, 3.0])
    event = np.array([1, 0, 1, 1, 0])
    risk = np.array([5.0, 5.0, 1.0, 4.0, 2.0])
    assert harrell_c(time, event, risk) == pytest.approx(4.5 / 6, abs=1e-15)
    assert harrell_c(time, event, risk) == pytest.approx(concordance_index_censored(event == 1, time, risk)[0])


def test_uno_c_without_training_censoring_is_harrell_c():
    """No censoring in the training records: G = 1, every weight 1."""
    time, event, risk, *_ = _cohort(*CASES["n40-heavy"])
    train_time = np.linspace(0.5, time.max() + 1, 30)
    assert uno_c(time, event, risk, train_time, np.ones(30)) == pytest.approx(harrell_c(time, event, risk),
                                                                              abs=1e-14)


@pytest.mark.parametrize(("time", "event", "risk"), [
    ([1.0, 2.0, 3.0], [0, 0, 0], [0.1, 0.2, 0.3]),  # no event
    ([1.0], [1], [0.3]),  # one record
    ([], [], []),  # no record
    ([2.0, 2.0], [1, 1], [0.1, 0.9]),  # two events at the same time: their order is unknown
    ([1.0, 2.0, 3.0], [1, 0, 1], [0.1, np.nan, 0.3]),  # a risk that is not a number: a model never trained
], ids=["no-event", "one-record", "empty", "tied-events", "nan-risk"])
def test_no_comparable_pair_is_nan(time, event, risk):
    assert np.isnan(harrell_c(time, event, risk))
    assert np.isnan(uno_c(time, event, risk, [1.0, 2.0, 5.0], [1, 0, 1]))


def test_uno_c_with_no_event_before_tau_is_nan():
    assert np.isnan(uno_c([2.0, 3.0, 4.0], [1, 1, 0], [3.0, 2.0, 1.0], [1.0, 5.0], [0, 1], tau=2.0))
    assert uno_c([2.0, 3.0, 4.0], [1, 1, 0], [3.0, 2.0, 1.0], [1.0, 5.0], [0, 1], tau=2.5) == 1.0


def test_auc_and_brier_without_censoring_are_the_plain_figures():
    """No censoring anywhere: G = 1, the AUROC at t is the plain AUROC of 'event by t' and the Brier score the
    plain mean squared error of P(T > t)."""
    rng = np.random.default_rng(7)
    time = rng.integers(1, 20, 60).astype(float)
    event = np.ones(60, dtype=bool)
    risk = np.round(-time / 10 + rng.normal(size=60), 1)
    train_time, train_event = np.arange(1.0, 25.0), np.ones(24, dtype=bool)
    horizons = np.array([5.0, 10.0])
    auc, _ = cumulative_dynamic_auc(time, event, risk, horizons, train_time, train_event)
    np.testing.assert_allclose(auc, [roc_auc(time <= h, risk) for h in horizons], rtol=0, atol=1e-14)
    predicted = rng.random((60, 2))
    expected = [np.mean(((time > h) - predicted[:, j]) ** 2) for j, h in enumerate(horizons)]
    np.testing.assert_allclose(brier_scores(time, event, predicted, horizons, train_time, train_event), expected,
                               rtol=0, atol=1e-14)
    assert integrated_brier_score(time, event, predicted, horizons, train_time, train_event) == pytest.approx(
        np.mean(expected), abs=1e-14)


def test_auc_mean_by_hand_and_nan_without_a_case():
    """AUC(t_k) weighted by S(t_{k-1}) - S(t_k) of the test Kaplan-Meier curve, S(t_0) = 1, over 1 - S(t_last).
    Before the first test event no case exists: that AUROC is NaN, and so is the mean (as sksurv)."""
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    event = np.ones(6, dtype=bool)
    risk = np.array([6.0, 4.0, 5.0, 3.0, 1.0, 2.0])
    train_time, train_event = np.arange(1.0, 8.0), np.ones(7, dtype=bool)
    auc, mean_auc = cumulative_dynamic_auc(time, event, risk, [2.0, 4.0], train_time, train_event)
    np.testing.assert_allclose(auc, [7 / 8, 1.0], rtol=0, atol=1e-15)  # at 2: case risk 4 below control risk 5
    assert mean_auc == pytest.approx((7 / 8 * (1 - 4 / 6) + 1.0 * (4 / 6 - 2 / 6)) / (1 - 2 / 6), abs=1e-15)
    event[0] = False
    auc, mean_auc = cumulative_dynamic_auc(time, event, risk, [1.0, 4.0], train_time, train_event)
    assert np.isnan(auc[0]) and np.isfinite(auc[1]) and np.isnan(mean_auc)
    auc, mean_auc = cumulative_dynamic_auc(time, np.zeros(6), risk, [2.0, 4.0], train_time, train_event)
    assert np.isnan(auc).all() and np.isnan(mean_auc)  # no test event at all (sksurv raises)


def test_predictions_that_are_not_numbers_give_nan():
    time, event, train_time, train_event = [1.0, 2.0, 3.0], [1, 0, 1], [1.0, 2.0, 4.0], [1, 0, 1]
    auc, mean_auc = cumulative_dynamic_auc(time, event, [0.1, np.nan, 0.2], [1.0, 2.0], train_time, train_event)
    assert np.isnan(auc).all() and np.isnan(mean_auc)
    assert np.isnan(brier_scores(time, event, [[0.5, np.nan]] * 3, [1.0, 2.0], train_time, train_event)).all()
    assert np.isnan(integrated_brier_score(time, event, [[0.5, np.nan]] * 3, [1.0, 2.0], train_time, train_event))


# ---- Errors ------------------------------------------------------------------------------------------------------

SECRET = 123.456  # a value that must never appear in a message
T, E, TT, TE = [1.0, 2.0, 3.0, 4.0], [1, 0, 1, 0], [1.0, 2.0, 3.0, 5.0], [1, 0, 1, 1]
P2 = np.full((4, 2), 0.5)

ERRORS = {
    "time-2d": (lambda: harrell_c([[1.0, 2.0]], [1], [0.1]), r"time must be 1-dimensional .*2 dimension"),
    "time-text": (lambda: kaplan_meier(["a", "b"], [1, 0]), r"time must hold numbers .*dtype <U1"),
    "time-nan": (lambda: kaplan_meier([1.0, np.nan, SECRET, np.inf], [1, 0, 1, 1]),
                 r"time: 2 entries are not finite numbers \(NaN or infinite\), at positions 1, 3;"),
    "time-negative": (lambda: harrell_c([1.0, -SECRET], [1, 1], [0.0, 1.0]),
                      r"time: 1 entries are negative, at position 1; a time is the duration"),
    "event-length": (lambda: harrell_c(T, [1, 0], [0.1] * 4), r"event has 2 entries but time has 4: give one per"),
    "event-coding": (lambda: kaplan_meier(T, [1, 2, SECRET, 0]),
                     r"event: 2 entries are neither 0 nor 1, at positions 1, 2; code an event as 1 \(or True\)"),
    "many-positions": (lambda: kaplan_meier(np.full(8, -SECRET), np.ones(8)),
                       r"time: 8 entries are negative, at positions 0, 1, 2, 3, 4, \.\.\.;"),
    "risk-length": (lambda: harrell_c(T, E, [0.1, SECRET]), r"risk has 2 entries but time has 4"),
    "tied-tol": (lambda: harrell_c(T, E, [0.1] * 4, tied_tol=-1.0), r"tied_tol must be a finite number >= 0"),
    "train-event": (lambda: uno_c(T, E, [0.1] * 4, TT, [1, 0, SECRET, 1]),
                    r"train_event: 1 entries are neither 0 nor 1, at position 2;"),
    "train-empty": (lambda: uno_c(T, E, [0.1] * 4, [], []), r"train_time is empty: the censoring distribution"),
    "tau": (lambda: uno_c(T, E, [0.1] * 4, TT, TE, tau=-SECRET), r"tau must be one finite number > 0"),
    "uno-beyond-training": (lambda: uno_c([1.0, 2.0, 6.0, 7.0], [1, 0, 1, 0], [0.1] * 4, TT, TE),
                            r"time: 1 test events at position 2 fall beyond the training follow-up .* pass a tau"),
    "horizons-unsorted": (lambda: brier_scores(T, E, P2, [3.0, 2.0], TT, TE),
                          r"horizons must be strictly increasing .* 1 entries are not above the one before them, "
                          r"at position 1"),
    "horizons-repeated": (lambda: cumulative_dynamic_auc(T, E, [0.1] * 4, [2.0, 2.0], TT, TE),
                          r"horizons must be strictly increasing"),
    "horizons-outside": (lambda: cumulative_dynamic_auc(T, E, [0.1] * 4, [0.5, 2.0, 4.0], TT, TE),
                         r"horizons: 2 of 3 lie outside the test follow-up, at positions 0, 2; each must be at or"),
    "horizons-empty": (lambda: brier_scores(T, E, np.zeros((4, 0)), [], TT, TE), r"horizons is empty"),
    "horizons-nan": (lambda: brier_scores(T, E, P2, [1.0, np.nan], TT, TE),
                     r"horizons: 1 entries are not finite numbers, at position 1"),
    "no-test-records": (lambda: brier_scores([], [], np.zeros((0, 1)), [1.0], TT, TE),
                        r"time is empty: a time-dependent figure needs test records"),
    "auc-columns": (lambda: cumulative_dynamic_auc(T, E, np.zeros((4, 3)), [1.0, 2.0], TT, TE),
                    r"risk_at_horizons has 3 columns but there are 2 horizons"),
    "auc-beyond-training": (lambda: cumulative_dynamic_auc([1.0, 6.0, 7.0, 8.0], [1, 1, 0, 0], [0.1] * 4,
                                                           [1.0, 6.5], TT, TE),
                            r"time: 1 test events by the last horizon at position 1 fall beyond the training"),
    "brier-one-column": (lambda: brier_scores(T, E, [0.5] * 4, [1.0, 2.0], TT, TE),
                         r"survival_at_horizons has one value per record but there are 2 horizons"),
    "brier-not-probabilities": (lambda: brier_scores(T, E, [[0.5, SECRET]] * 4, [1.0, 2.0], TT, TE),
                                r"survival_at_horizons: 4 entries lie outside \[0, 1\], at positions \(0, 1\), "
                                r"\(1, 1\), \(2, 1\), \(3, 1\) \(record, horizon\); .* not risks"),
    "brier-beyond-training": (lambda: brier_scores([1.0, 2.0, 6.0, 8.0], E, P2, [1.0, 6.0], TT, TE),
                              r"horizons: 1 of 2 at position 1 fall beyond the training follow-up"),
    "ibs-one-horizon": (lambda: integrated_brier_score(T, E, P2[:, :1], [1.0], TT, TE),
                        r"horizons: an integral needs at least 2 horizons; for one, use brier_scores"),
    "step-unsorted": (lambda: step_function_at([2.0, 1.0], [0.5, 0.4], [1.0]),
                      r"times must be finite and strictly increasing; 1 entries are not, at position 1"),
    "step-at": (lambda: step_function_at([1.0], [0.5], [np.nan]), r"at: 1 entries are not finite numbers"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_value_errors_say_what_to_fix_and_quote_no_value(case):
    call, message = ERRORS[case]
    with pytest.raises(ValueError, match=message) as raised:
        call()
    assert "123" not in str(raised.value) and "456" not in str(raised.value)


def test_the_module_imports_numpy_and_the_standard_library_only():
    """Every hospital process imports it at start-up: no scipy, pandas, sklearn or sksurv (checked on the source,
    at every level of the module, so that a lazy import inside a function is caught as well)."""
    tree = ast.parse(Path(survival.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - sys.stdlib_module_names - {"__future__"} == {"numpy"}


def test_risk_group_curves_are_kaplan_meier_per_tertile_of_risk():
    from sksurv.nonparametric import kaplan_meier_estimator

    from fedhealth.metrics.survival import risk_group_curves

    rng = np.random.default_rng(11)
    risk = rng.normal(size=300)
    time = np.ceil(rng.exponential(200.0 * np.exp(-risk)))  # higher risk: earlier events
    censor = np.ceil(rng.uniform(1, 600, 300))
    event = (time <= censor).astype(int)
    time = np.minimum(time, censor)
    curves = risk_group_curves(time, event, risk)
    assert [c.label for c in curves] == ["low", "middle", "high"] and sum(c.records for c in curves) == 300
    order = np.argsort(risk, kind="stable")
    for c, rows in zip(curves, np.array_split(order, 3), strict=True):
        assert c.records == len(rows) and c.events == int(event[rows].sum())
        t, s = kaplan_meier_estimator(event[rows].astype(bool), time[rows])
        np.testing.assert_allclose(step_function_at(c.times, c.survival, t), s, atol=1e-10)
    # a model that separates risk: the curves are ordered at one year
    at_year = [float(step_function_at(c.times, c.survival, [365.0])[0]) for c in curves]
    assert at_year[0] > at_year[1] > at_year[2]
    with pytest.raises(ValueError, match="groups must be a whole number"):
        risk_group_curves(time, event, risk, groups=1)
    with pytest.raises(ValueError, match="risk: 1 entries are not finite numbers, at position 4"):
        risk_group_curves(time, event, np.where(np.arange(300) == 4, np.inf, risk))
