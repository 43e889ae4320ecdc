"""Intervals (fedhealth.metrics.intervals): DeLong's AUROC interval and the paired interval of a difference
equal MLstatkit's (which follows R's pROC) on fixed inputs, ties included; every interval has its stated
coverage on simulations with a known truth; undefined figures say why."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from MLstatkit import Delong_test

from fedhealth.metrics.intervals import (
    Interval,
    accuracy_rows,
    auroc_difference_interval,
    auroc_interval,
    bootstrap_interval,
    brier_rows,
    mean_auroc_interval,
)


def _case(seed: int, n: int, prevalence: float, rounding: int | None):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    a, b = y * 0.9 + rng.normal(size=n), y * 0.4 + 0.5 * rng.normal(size=n)
    if rounding is not None:  # coarse scores: many ties, within and across the classes
        a, b = np.round(a, rounding), np.round(b, rounding)
    return y, a, b


@pytest.mark.parametrize(("seed", "n", "prevalence", "rounding"),
                         [(0, 120, 0.4, None), (1, 75, 0.15, 1), (2, 400, 0.5, 0), (3, 60, 0.8, 2)])
def test_delong_matches_mlstatkit(seed, n, prevalence, rounding):
    y, a, b = _case(seed, n, prevalence, rounding)
    z, _p, ci_a, ci_b, auc_a, auc_b, info = Delong_test(y, a, b, alpha=0.95)
    assert info["method"] == "delong"
    z95 = NormalDist().inv_cdf(0.975)
    for ours, auc, ci in ((auroc_interval(y, a), auc_a, ci_a), (auroc_interval(y, b), auc_b, ci_b)):
        assert ours.estimate == pytest.approx(auc, abs=1e-12)
        if ci[0] > 0 and ci[1] < 1:  # MLstatkit's interval is AUROC +- z SE (clipped): the same SE
            assert ours.se == pytest.approx((ci[1] - ci[0]) / (2 * z95), abs=1e-12)
        # ours is formed on the logit scale: asymmetric, inside (0, 1), and around the same estimate
        assert 0 < ours.low < ours.estimate < ours.high < 1
    diff = auroc_difference_interval(y, b, a)  # MLstatkit's z is (AUC_B - AUC_A) / SE
    assert diff.estimate / diff.se == pytest.approx(z, abs=1e-9)
    assert diff.estimate == pytest.approx(auc_b - auc_a, abs=1e-12)


def _coverage(hits: list[bool]) -> float:
    return float(np.mean(hits))


@pytest.mark.parametrize(("positives", "negatives", "mu"), [(60, 140, 1.2), (100, 200, 1.2), (20, 55, 1.2),
                                                            (30, 45, 2.0)])
def test_the_auroc_interval_covers_the_true_auroc_95_percent_of_the_time(positives, negatives, mu):
    """Binormal scores: positives N(mu, 1), negatives N(0, 1), so the true AUROC is Phi(mu / sqrt 2) (0.80,
    and 0.92 for mu = 2). Small, accurate test sets are where a plain normal interval under-covers. 2,000 test
    sets each: the coverage's own standard error is 0.5 %."""
    rng = np.random.default_rng(1)
    truth = NormalDist().cdf(mu / np.sqrt(2))
    y = np.r_[np.ones(positives), np.zeros(negatives)]
    hits = []
    for _ in range(2000):
        s = np.r_[rng.normal(mu, 1, positives), rng.normal(0, 1, negatives)]
        i = auroc_interval(y, s)
        hits.append(i.low <= truth <= i.high)
    assert _coverage(hits) == pytest.approx(0.95, abs=0.02)


def test_the_paired_difference_interval_covers_the_true_difference_95_percent_of_the_time():
    """Two correlated models on the same records (as federated and local-only are): model a's score is
    b's plus more signal, so the true difference is Phi(mu_a / sqrt 2) - Phi(mu_b / sqrt 2)."""
    rng = np.random.default_rng(8)
    cdf = NormalDist().cdf
    # a = y*mu_a + e1, b = y*mu_b + e2 with corr(e1, e2) = 0.6: each is binormal with unit variance
    mu_a, mu_b, rho = 1.0, 0.7, 0.6
    truth = cdf(mu_a / np.sqrt(2)) - cdf(mu_b / np.sqrt(2))
    hits = []
    for _ in range(400):
        y = np.r_[np.ones(80), np.zeros(120)]
        e1 = rng.normal(size=200)
        e2 = rho * e1 + np.sqrt(1 - rho**2) * rng.normal(size=200)
        i = auroc_difference_interval(y, y * mu_a + e1, y * mu_b + e2)
        hits.append(i.low <= truth <= i.high)
    assert _coverage(hits) == pytest.approx(0.95, abs=0.03)


def test_the_bootstrap_interval_of_the_brier_score_covers_the_true_one():
    """Predictions equal to the true risk r ~ U(0.1, 0.9): the expected Brier score is E[r(1 - r)]."""
    rng = np.random.default_rng(9)
    truth = 0.25 - 0.8**2 / 12  # E[r] - E[r^2] for r ~ U(0.1, 0.9)
    hits = []
    for k in range(300):
        r = rng.uniform(0.1, 0.9, 300)
        y = (rng.random(300) < r).astype(float)
        i = bootstrap_interval(brier_rows, y, r, seed=k, resamples=500)
        hits.append(i.low <= truth <= i.high)
    assert _coverage(hits) == pytest.approx(0.95, abs=0.03)


def test_the_bootstrap_is_seeded_stratified_and_its_estimate_is_the_plain_figure():
    rng = np.random.default_rng(3)
    y = (rng.random(90) < 0.3).astype(float)
    p = np.clip(y * 0.4 + rng.uniform(0, 0.6, 90), 0, 1)
    first, again = (bootstrap_interval(accuracy_rows, y, p, seed=5) for _ in range(2))
    assert first == again and first.method == "stratified bootstrap"
    assert first.estimate == pytest.approx(np.mean((p >= 0.5) == (y == 1)))
    assert first.low <= first.estimate <= first.high
    # stratified: a resample keeps the test set's class counts, so the mean of y never moves
    prevalence = bootstrap_interval(lambda yy, _pp: yy.mean(axis=-1), y, p, seed=5)
    assert prevalence.low == prevalence.high == pytest.approx(y.mean())


@pytest.mark.parametrize("y", [np.ones(20), np.r_[np.ones(1), np.zeros(30)], np.r_[np.ones(25), np.zeros(1)]])
def test_an_auroc_interval_without_two_records_of_each_class_is_undefined_and_says_why(y):
    s = np.linspace(0, 1, len(y))
    for i in (auroc_interval(y, s), auroc_difference_interval(y, s, s[::-1])):
        assert not i.defined and not i.covers_zero and i.as_list() == [None, None]
        assert "needs at least 2 of each" in i.method


def test_the_mean_of_independent_hospitals_adds_their_variances():
    rng = np.random.default_rng(4)
    parts = []
    for n in (50, 80, 200):
        y = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
        parts.append(auroc_interval(y, y + rng.normal(size=n)))
    undefined = auroc_interval(np.ones(5), np.arange(5.0))
    mean = mean_auroc_interval([*parts, undefined])
    se = np.sqrt(sum(p.se**2 for p in parts)) / 3
    assert mean.estimate == pytest.approx(np.mean([p.estimate for p in parts]))
    assert mean.high - mean.low == pytest.approx(2 * 1.959963984540054 * se)
    assert not mean_auroc_interval([undefined]).defined


def test_covers_zero():
    assert Interval(0.02, -0.01, 0.05, "x").covers_zero
    assert not Interval(0.04, 0.01, 0.07, "x").covers_zero


def test_a_perfectly_separated_test_set_gets_an_interval_with_width():
    """DeLong's variance is 0 when every positive outranks every negative; a zero-width interval would claim
    certainty that a few dozen records cannot give."""
    y = np.r_[np.ones(12), np.zeros(60)]
    s = np.r_[np.linspace(0.6, 0.9, 12), np.linspace(0.0, 0.5, 60)]
    i = auroc_interval(y, s)
    assert i.estimate == 1.0 and i.high == 1.0 and 0.7 < i.low < 0.8
    assert "perfectly separated" in i.method and i.defined
    z = 1.959963984540054  # Wilson's lower bound for 12 of 12
    assert i.low == pytest.approx(12 / (12 + z * z))


@pytest.mark.parametrize("flip", [False, True])
def test_a_separated_test_set_of_any_size_keeps_its_estimate_inside_its_interval(flip):
    """Rounding in Wilson's formula once put the upper bound a hair below an AUROC of 1, and the report's
    error bars refused the negative width."""
    for positives in range(2, 40):
        for negatives in (2, 3, 7, 19, 60):
            y = np.r_[np.ones(positives), np.zeros(negatives)]
            s = np.r_[np.full(positives, 0.9), np.full(negatives, 0.1)]
            i = auroc_interval(y, -s if flip else s)
            assert i.low <= i.estimate <= i.high and i.low >= 0.0 and i.high <= 1.0, (positives, negatives)


def test_a_constant_predictor_is_named_as_such_and_nan_predictions_are_undefined():
    y = np.r_[np.ones(10), np.zeros(10)]
    constant = auroc_interval(y, np.full(20, 0.3))
    assert constant.estimate == 0.5 and "constant predictor" in constant.method
    s = np.linspace(0, 1, 20)
    s[3] = np.nan
    assert not auroc_interval(y, s).defined and "not numbers" in auroc_interval(y, s).method
    assert not auroc_difference_interval(y, s, np.linspace(0, 1, 20)).defined


def test_a_mean_of_aurocs_stays_within_0_and_1_and_a_mean_of_gains_need_not():
    near_one = Interval(0.99, 0.95, 1.0, "DeLong", se=0.03)
    assert mean_auroc_interval([near_one, near_one]).high == 1.0
    gain = Interval(-0.2, -0.3, -0.1, "DeLong, paired", se=0.05)
    assert mean_auroc_interval([gain, gain], bounded=False).low < -0.2


def test_the_bootstrap_in_chunks_gives_the_same_kind_of_interval_on_a_big_test_set():
    rng = np.random.default_rng(2)
    y = (rng.random(40_000) < 0.3).astype(float)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 40_000), 0, 1)
    i = bootstrap_interval(brier_rows, y, p, seed=1, resamples=200)
    assert i.low < i.estimate < i.high and i.high - i.low < 0.01


def test_a_mean_whose_hospitals_lack_an_interval_has_none():
    """A hospital with an AUROC but no interval (one record of a class on its test side): the mean's interval
    is undefined, never an interval over fewer hospitals than the mean beside it."""
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(40), np.ones(30)]
    good = [auroc_interval(y, rng.normal(size=70) + y) for _ in range(2)]
    one = auroc_interval(np.r_[np.zeros(20), np.ones(1)], rng.normal(size=21))
    assert not one.defined
    assert mean_auroc_interval([*good, one], over=2).defined
    undefined = mean_auroc_interval([*good, one], over=3)
    assert not undefined.defined and "1 of the 3 hospitals in the mean have no interval" in undefined.method
