"""The time-to-event summary (fedhealth.experiments.survival_summary) and the figures it is built from.

- `survival_at` / `risk_score` on curves small enough to check by hand; `survival_figures` against
  scikit-survival on fixed seeded cohorts with tied times and risks.
- The bootstrap's machinery: the O(n log n) C-index against sksurv (ties of every kind), and a resample given as
  multiplicities against the same figure computed on the resampled records themselves.
- The summary of a real small generated study with trained models: JSON without NaN, estimates equal to
  `survival_figures`, intervals around their estimates, the gain, the undefined cases, best_possible, equity.
- Coverage: the bootstrap C-index interval covers the true concordance at about its stated level.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.metrics import cumulative_dynamic_auc as sk_cumulative_dynamic_auc
from sksurv.metrics import integrated_brier_score as sk_integrated_brier_score
from sksurv.util import Surv

from fedhealth.data.hospitals import load_hospital
from fedhealth.experiments import references
from fedhealth.experiments import survival_summary as ss
from fedhealth.experiments.references import Predictions, federated, local_only, pooled
from fedhealth.metrics.equity import equity_summary
from fedhealth.metrics.survival import cumulative_dynamic_auc, harrell_c, integrated_brier_score, uno_c
from fedhealth.metrics.survival_model import risk_score, survival_at, survival_figures, usable_horizons
from fedhealth.model.initial import initial_weights
from fedhealth.model.outcomes import edges as study_edges
from fedhealth.model.outcomes import horizons as study_horizons
from fedhealth.model.tabular import get_weights
from tests.support import smoke

TOL = 1e-10
EDGES = np.array([0.0, 30.0, 90.0, 180.0, 365.0, 730.0])
HORIZONS = np.array([90.0, 180.0, 365.0])


def _cohort(seed: int, n: int, n_train: int, risk_decimals: int | None = None):
    """Test and training records with whole-day times (many ties, an event and a censoring at the same
    time), predicted curves whose order carries some signal, and training follow-up that covers the test's."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n + n_train)
    event_time = np.ceil(300 * rng.weibull(1.3, n + n_train) * np.exp(-0.7 * x))
    censor = np.ceil(rng.uniform(20, 800, n + n_train))
    time = np.minimum(event_time, censor).astype(np.float64)
    event = (event_time <= censor).astype(np.int64)
    score = x + 0.8 * rng.standard_normal(n + n_train)
    if risk_decimals is not None:
        score = np.round(score, risk_decimals)
    hazard = 1.0 - np.exp(-np.outer(np.exp(score), np.diff(EDGES) / 365.0))
    curves = np.cumprod(1.0 - hazard, axis=1)
    time[n] = 900.0  # a training record followed past every test time: G is known wherever it is needed
    return time[:n], event[:n], curves[:n], time[n:], event[n:]


# ---- survival_at / risk_score by hand -----------------------------------------------------------------------


def test_survival_at_falls_geometrically_inside_an_interval_and_stays_flat_after_the_last_edge():
    edges = np.array([0.0, 1.0, 3.0])
    curves = np.array([[0.8, 0.4], [0.0, 0.0]])
    s = survival_at(curves, edges, np.array([0.0, 0.5, 1.0, 2.0, 3.0, 5.0]))
    # constant hazard in each interval: S(0.5) = 0.8 ** 0.5; S(2) = 0.8 * (0.4 / 0.8) ** 0.5
    expected = [1.0, 0.8 ** 0.5, 0.8, 0.8 * 0.5 ** 0.5, 0.4, 0.4]
    assert s[0] == pytest.approx(expected, abs=1e-15)
    assert s[1] == pytest.approx([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # no survivor after the first interval
    assert risk_score(curves, edges, 2.0) == pytest.approx([1.0 - 0.8 * 0.5 ** 0.5, 1.0])
    with pytest.raises(ValueError, match="expected shape"):
        survival_at(curves[:, :1], edges, np.array([1.0]))


@pytest.mark.parametrize("seed, n, decimals", [(0, 40, None), (1, 150, 1), (2, 300, None)])
def test_survival_figures_equal_sksurv(seed, n, decimals):
    time, event, curves, train_time, train_event = _cohort(seed, n, 400, decimals)
    figures = survival_figures(time, event, curves, EDGES, HORIZONS, train_time, train_event)
    train, test = Surv.from_arrays(train_event.astype(bool), train_time), Surv.from_arrays(event.astype(bool), time)
    risk = risk_score(curves, EDGES, HORIZONS[-1])
    assert figures.c_index == pytest.approx(concordance_index_censored(event.astype(bool), time, risk)[0], abs=TOL)
    usable = usable_horizons(time, HORIZONS, train_time, train_event)
    assert len(usable) == 3
    assert figures.uno_c == pytest.approx(concordance_index_ipcw(train, test, risk, tau=usable[-1])[0], abs=TOL)
    auc, mean_auc = sk_cumulative_dynamic_auc(train, test, 1.0 - survival_at(curves, EDGES, usable), usable)
    assert figures.td_auroc == pytest.approx(mean_auc, abs=TOL)
    assert [figures.td_auroc_at[float(h)] for h in usable] == pytest.approx(list(auc), abs=TOL)
    ibs = sk_integrated_brier_score(train, test, survival_at(curves, EDGES, usable), usable)
    assert figures.ibs == pytest.approx(ibs, abs=TOL)


# ---- The bootstrap's machinery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, n, times, risks", [(3, 7, 3, 2), (4, 60, 10, 5), (5, 500, 40, 500),
                                                     (6, 2000, 300, 50), (7, 2000, 2000, 2000)])
def test_the_fast_c_index_equals_sksurv_with_ties_of_every_kind(seed, n, times, risks):
    # times and risks drawn from `times` and `risks` values: tied times (events with events, events with
    # censorings), tied risks, and with few values both at once
    rng = np.random.default_rng(seed)
    time = rng.integers(1, times + 1, n).astype(np.float64)
    event = (rng.uniform(size=n) < 0.6).astype(np.int64)
    event[0] = 1
    risk = rng.integers(0, risks, n) * 0.1 + time * 0.0001 * (seed % 2)  # odd seeds: risk follows time a little
    risk[1] = risk[0] + 0.5e-8  # within the tolerance: tied
    expected = concordance_index_censored(event.astype(bool), time, risk)[0]
    assert ss.fast_harrell_c(time, event, risk) == pytest.approx(expected, abs=TOL)
    assert ss.fast_harrell_c(time, event, risk) == pytest.approx(harrell_c(time, event, risk), abs=TOL)


def test_the_fast_c_index_of_no_event_or_an_unscored_record_is_nan():
    assert np.isnan(ss.fast_harrell_c(np.array([1.0, 2.0]), np.array([0, 0]), np.array([0.1, 0.2])))
    assert np.isnan(ss.fast_harrell_c(np.array([1.0, 2.0]), np.array([1, 0]), np.array([np.nan, 0.2])))


def test_a_resample_as_multiplicities_gives_the_figures_of_the_resampled_records():
    time, event, curves, train_time, train_event = _cohort(7, 120, 300)
    figures = survival_figures(time, event, curves, EDGES, HORIZONS, train_time, train_event)
    scored = ss._Scored(time, event, curves, EDGES, HORIZONS, train_time, train_event, figures)
    at_one = scored.rows(np.ones((1, len(time))))
    for name in ss.FIGURES:
        assert at_one[name][0] == pytest.approx(getattr(figures, name), abs=TOL), name
    weights = next(ss._weight_chunks(event, 11, 5))
    assert (weights[:, event == 1].sum(axis=1) == event.sum()).all()  # stratified: the event count is kept
    assert (weights.sum(axis=1) == len(time)).all()
    rows = scored.rows(weights)
    usable = usable_horizons(time, HORIZONS, train_time, train_event)
    for r, w in enumerate(weights):
        idx = np.repeat(np.arange(len(time)), w.astype(int))
        t, e, s = time[idx], event[idx], curves[idx]
        risk = risk_score(s, EDGES, HORIZONS[-1])
        assert rows["c_index"][r] == pytest.approx(harrell_c(t, e, risk), abs=TOL)
        assert rows["uno_c"][r] == pytest.approx(uno_c(t, e, risk, train_time, train_event, tau=usable[-1]), abs=TOL)
        _, mean_auc = cumulative_dynamic_auc(t, e, 1.0 - survival_at(s, EDGES, usable), usable, train_time,
                                             train_event)
        assert rows["td_auroc"][r] == pytest.approx(mean_auc, abs=TOL)
        ibs = integrated_brier_score(t, e, survival_at(s, EDGES, usable), usable, train_time, train_event)
        assert rows["ibs"][r] == pytest.approx(ibs, abs=TOL)


def test_the_c_index_interval_is_seeded_and_holds_its_estimate():
    time, event, curves, _, _ = _cohort(8, 80, 5)
    risk = risk_score(curves, EDGES, HORIZONS[-1])
    a, b = ss.c_index_interval(time, event, risk, (1, 2)), ss.c_index_interval(time, event, risk, (1, 2))
    assert a == b and a.low <= a.estimate <= a.high and a.high > a.low and a.se > 0
    assert a.estimate == pytest.approx(harrell_c(time, event, risk), abs=TOL)
    assert not ss.c_index_interval(time, np.zeros_like(event), risk, 1).defined


# ---- The summary of a real small study -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def study():
    cfg = smoke('outcome="time_to_event"')
    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    init = initial_weights(cfg)
    # the federation's final weights stand in for a shared model trained on every hospital's records
    shared = references._fresh_model(cfg, init, splits[0].x_train.shape[1])
    references._fit(cfg, shared, np.concatenate([s.x_train for s in splits]),
                    np.concatenate([s.y_train for s in splits]), "test/federated")
    preds = {"federated": federated(cfg, splits, get_weights(shared)), "local_only": local_only(cfg, splits, init),
             "pooled": pooled(cfg, splits, init)}
    return cfg, splits, preds, ss.build_survival_summary(cfg, splits, preds)


def _figures(cfg, time, event, curves, train_time, train_event):
    return survival_figures(time, event, curves, study_edges(cfg), study_horizons(cfg), train_time, train_event)


def test_the_summary_is_json_and_has_the_binary_layout_with_the_c_index_at_its_head(study):
    cfg, splits, preds, summary = study
    json.dumps(summary, allow_nan=False)
    assert summary["outcome"] == "time_to_event" and summary["headline"] == "c_index"
    assert {"study", "seed", "strategy", "model", "rounds", "overall", "hospitals", "calibration", "equity",
            "intervals", "time"} <= set(summary)
    assert summary["time"] == {"unit": "days", "intervals": list(map(float, cfg.time_spec.intervals)),
                               "horizons": list(map(float, cfg.time_spec.horizons))}
    assert summary["intervals"]["resamples"] == ss.RESAMPLES and summary["intervals"]["level"] == 0.95
    for h, s in zip(summary["hospitals"], splits, strict=True):
        assert h["events_test"] == int(s.event_test.sum()) and h["n_test"] == len(s.time_test)
        assert set(h["td_auroc_at"]["federated"]) == {"180", "365", "730"}
        assert "undefined" not in h and "best_possible" not in h["uno_c"]
        assert h["c_index"]["best_possible"] == s.bayes_auroc  # generated data: the true risk is known
    assert summary["overall"]["c_index"]["best_possible"] == pytest.approx(harrell_c(
        np.concatenate([s.time_test for s in splits]), np.concatenate([s.event_test for s in splits]),
        np.concatenate([s.test_true_risk for s in splits])), abs=TOL)
    groups = summary["overall"]["risk_groups"]
    assert [g["label"] for g in groups] == ["low", "middle", "high"]
    assert sum(g["records"] for g in groups) == summary["overall"]["n_test"]
    assert groups[0]["survival"][-1] > groups[-1]["survival"][-1]  # a trained model separates the tertiles


def test_every_estimate_is_survival_figures_and_lies_inside_its_interval(study):
    cfg, splits, preds, summary = study
    for h, s in zip(summary["hospitals"], splits, strict=True):
        for key, pred in preds.items():
            f = _figures(cfg, s.time_test, s.event_test, pred.by_hospital[s.index], s.time_train, s.event_train)
            for name in ss.FIGURES:
                assert h[name][key] == pytest.approx(getattr(f, name), abs=TOL), (h["name"], name, key)
                low, high = h[f"{name}_ci"][key]
                assert low <= h[name][key] <= high and low < high, (h["name"], name, key)
    o = summary["overall"]
    cat = {k: np.concatenate([getattr(s, k) for s in splits]) for k in ("time_test", "event_test", "time_train",
                                                                          "event_train")}
    for key, pred in preds.items():
        f = _figures(cfg, cat["time_test"], cat["event_test"], np.concatenate([pred.by_hospital[s.index]
                     for s in splits]), cat["time_train"], cat["event_train"])
        for name in ss.FIGURES:
            assert o[name][key] == pytest.approx(getattr(f, name), abs=TOL), (name, key)
            low, high = o[f"{name}_ci"][key]
            assert low <= o[name][key] <= high, (name, key)
        assert o["mean_hospital_c_index"][key] == pytest.approx(np.mean([h["c_index"][key]
                                                                        for h in summary["hospitals"]]))
        low, high = o["mean_hospital_c_index_ci"][key]
        assert low <= o["mean_hospital_c_index"][key] <= high


def test_the_gain_is_the_paired_difference_of_the_c_indices(study):
    _, _, _, summary = study
    for row in [*summary["hospitals"], summary["overall"]]:
        gain = row["gain"]
        assert gain["estimate"] == pytest.approx(row["c_index"]["federated"] - row["c_index"]["local_only"], abs=TOL)
        low, high = gain["ci"]
        assert low <= gain["estimate"] <= high
        assert gain["distinguishable_from_zero"] == (not low <= 0.0 <= high)
    mean = summary["overall"]["mean_hospital_gain"]
    assert mean["estimate"] == pytest.approx(np.mean([h["gain"]["estimate"] for h in summary["hospitals"]]))


def test_a_hospital_without_a_test_event_or_a_training_event_has_null_figures_and_says_why(study):
    cfg, splits, preds, _ = study
    changed = list(splits)
    changed[1] = replace(splits[1], event_test=np.zeros_like(splits[1].event_test))
    changed[2] = replace(splits[2], event_train=np.zeros_like(splits[2].event_train))
    local = Predictions({**preds["local_only"].by_hospital,
                         2: np.full_like(preds["local_only"].by_hospital[2], np.nan)})
    summary = ss.build_survival_summary(cfg, changed, {**preds, "local_only": local})
    json.dumps(summary, allow_nan=False)
    h0, h1, h2 = summary["hospitals"]
    assert "undefined" not in h0
    assert set(h1["undefined"]) == {"c_index"} and "no event among" in h1["undefined"]["c_index"]
    for name in ("c_index", "uno_c", "td_auroc"):
        assert all(h1[name][key] is None for key in preds) and h1[f"{name}_ci"]["federated"] == [None, None]
    assert h1["ibs"]["federated"] is not None  # the Brier score needs no event
    assert h1["gain"] == {"estimate": None, "ci": [None, None], "distinguishable_from_zero": False}
    assert set(h2["undefined"]) == {"local_only"}
    assert all(h2[name]["local_only"] is None for name in ss.FIGURES) and h2["gain"]["estimate"] is None
    assert h2["c_index"]["federated"] is not None
    o = summary["overall"]
    assert o["c_index"]["local_only"] is None and o["c_index"]["federated"] is not None
    assert o["mean_hospital_c_index"]["federated"] == pytest.approx(np.mean([h0["c_index"]["federated"],
                                                                            h2["c_index"]["federated"]]))
    assert o["mean_hospital_gain"]["estimate"] == pytest.approx(h0["gain"]["estimate"])
    assert summary["equity"]["gain_undefined_for"] == [h1["name"], h2["name"]]


def test_equity_reads_the_headline_figure_and_names_it(study):
    _, _, _, summary = study
    eq = summary["equity"]
    assert eq == equity_summary(summary["hospitals"], metric="c_index")
    assert eq["worst_hospital"]["c_index"] == min(h["c_index"]["federated"] for h in summary["hospitals"])
    assert "c_index_federated" in eq["gini"] and "C-index on average" in eq["sentence"]
    # the same rows with the C-index under "auroc" give the binary figures, under their binary names
    as_binary = [{**h, "auroc": h["c_index"]} for h in summary["hospitals"]]
    binary = json.dumps(equity_summary(as_binary))
    renamed = (json.dumps(eq).replace("c_index_hospitals", "auroc_hospitals").replace('"c_index"', '"auroc"')
               .replace("c_index_federated", "auroc_federated").replace("c_index_local_only", "auroc_local_only")
               .replace("C-index on average", "AUROC on average"))
    assert binary == renamed


# ---- Coverage ------------------------------------------------------------------------------------------------


def _weibull_ph(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed Weibull proportional-hazards model (shape 1.5, log hazard ratio = the risk score x ~ N(0, 1))
    with independent uniform censoring and follow-up ending at 3: about 73 % of records have the event."""
    x = rng.standard_normal(n)
    t = (-np.log(rng.uniform(size=n)) / np.exp(x)) ** (1 / 1.5)
    c = np.minimum(rng.uniform(0, 4, n), 3.0)
    return np.minimum(t, c), (t <= c).astype(np.int64), x


def test_the_bootstrap_c_index_interval_covers_the_true_concordance_at_about_95_percent():
    # The truth: Harrell's C of the true risk score under this censoring, the limit of the estimator, on
    # 400,000 records (its standard error there is about 0.0006, negligible against intervals ~0.1 wide).
    rng = np.random.default_rng(20240611)
    truth = ss.fast_harrell_c(*_weibull_ph(rng, 400_000))
    replicates, covered = 400, 0
    for r in range(replicates):
        time, event, risk = _weibull_ph(rng, 150)
        interval = ss.c_index_interval(time, event, risk, (99, r))
        covered += interval.low <= truth <= interval.high
    coverage = covered / replicates
    # Measured on 2,000 replicates of this design, the interval covers 0.93: the stratified bootstrap keeps each
    # resample's event count, so it leaves out the part of the C-index's variance that comes from how many events
    # a test set happens to hold (its standard error, 0.0252 on average, against the estimator's true 0.0259;
    # an unstratified bootstrap covers 0.94). With 400 replicates the coverage estimate's standard error is
    # sqrt(0.93 * 0.07 / 400) = 0.013, so [0.90, 0.99] holds it with probability ~0.99, while an interval off by
    # a fifth of its width (coverage below 0.90 or near 1) fails. Seeded: the same figure (0.925) everywhere.
    assert 0.90 <= coverage <= 0.99, coverage
