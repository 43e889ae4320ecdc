"""Multi-class and continuous figures against scikit-learn, their weighted (bootstrap) form, the summary's
layout and undefined cases (issue 18). The coverage of its intervals is checked in the slow lane,
tests/integration/test_interval_coverage.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

from fedhealth.data.hospitals import HospitalSplit
from fedhealth.experiments.kinds_summary import build_outcome_summary, resample_weights
from fedhealth.experiments.references import Predictions
from fedhealth.metrics.class_figures import multiclass_figures, multiclass_rows
from fedhealth.metrics.value_figures import regression_figures, regression_rows
from fedhealth.study.config import HospitalConfig, StudyConfig


def _classes(n: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    z = rng.normal(size=(n, 3))
    z[np.arange(n), y] += signal
    z = np.round(z, 1)  # ties, which AUROC counts half
    return y, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def test_multiclass_figures_match_scikit_learn():
    y, p = _classes(400, 1)
    f = multiclass_figures(y, p)
    assert f["macro_auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    assert f["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(axis=1)), abs=1e-12)
    assert f["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-12)
    rows = multiclass_rows(y, p, np.ones((1, len(y))))
    for k in range(3):
        assert rows["class_auroc"][0, k] == pytest.approx(roc_auc_score(y == k, p[:, k]), abs=1e-12)
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y)
    ece = 0.0
    for b in range(10):  # the expected calibration error written as a loop over bins
        inside = (np.minimum((conf * 10).astype(int), 9) == b)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert f["ece"] == pytest.approx(ece, abs=1e-12)


def test_regression_figures_match_scikit_learn_and_numpy():
    rng = np.random.default_rng(2)
    y = rng.normal(6, 1, 300)
    p = 0.8 * y + rng.normal(0, 0.5, 300) + 1
    f = regression_figures(y, p)
    assert f["r2"] == pytest.approx(r2_score(y, p), abs=1e-12)
    assert f["mae"] == pytest.approx(mean_absolute_error(y, p), abs=1e-12)
    assert f["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)), abs=1e-12)
    assert f["calibration_slope"] == pytest.approx(np.polyfit(p, y, 1)[0], abs=1e-10)
    assert np.isnan(regression_figures(y, np.full(300, 6.0))["calibration_slope"])  # constant predictions
    assert np.isnan(regression_figures(np.full(300, 6.0), p)["r2"])  # values that do not vary


def test_weights_are_multiplicities():
    """A resample's weighted figure equals the figure of the records duplicated by their weights."""
    y, p = _classes(120, 3)
    v = p[:, 2] * 4 + 5
    w = resample_weights(y, (7,), resamples=3)
    for row in w:
        idx = np.repeat(np.arange(len(y)), row.astype(int))
        got = multiclass_rows(y, p, row[None, :])
        want = multiclass_figures(y[idx], p[idx])
        for key in ("macro_auroc", "accuracy", "log_loss", "ece"):
            assert got[key][0] == pytest.approx(want[key], abs=1e-10), key
        got = regression_rows(v + y, v, row[None, :])
        want = regression_figures((v + y)[idx], v[idx])
        for key in want:
            assert got[key][0] == pytest.approx(want[key], abs=1e-10), key
    assert all(np.bincount(y, weights=row).tolist() == np.bincount(y).tolist() for row in w)  # stratified


def _split(cfg: StudyConfig, i: int, outcome: np.ndarray, truth: np.ndarray | None, train: np.ndarray
           ) -> HospitalSplit:
    h = cfg.hospitals[i]
    n = len(outcome)
    return HospitalSplit(index=i, hospital=h, x_train=np.zeros((len(train), 1), np.float32),
                         y_train=train.astype(np.float32), x_test=np.zeros((n, 1), np.float32),
                         y_test=outcome.astype(np.float32), test_true_risk=np.full(n, np.nan),
                         bayes_auroc=float("nan"), prevalence=float("nan"), kind=cfg.outcome_kind,
                         outcome_train=train, outcome_test=outcome, test_truth=truth)


def _cfg(kind: str) -> StudyConfig:
    return StudyConfig(outcome=kind, federation={"secure_aggregation": {"enabled": False}}, hospitals=[
        HospitalConfig(name="big", tier="tertiary", region="north", records=800),
        HospitalConfig(name="small", tier="community", region="west", records=200)])


def test_multiclass_summary_layout_undefined_and_json():
    cfg = _cfg("multiclass")
    y0, p0 = _classes(200, 4)
    y1, p1 = _classes(60, 5)
    y1[y1 == 2] = 1  # the small hospital's test side holds no "severe" record
    splits = [_split(cfg, 0, y0, p0, np.array([0, 1, 2] * 10)), _split(cfg, 1, y1, None, np.zeros(20, np.int64))]
    preds = {"federated": Predictions({0: p0, 1: p1}),
             "local_only": Predictions({0: p0[::-1].copy(), 1: np.full((60, 3), np.nan)})}
    summary = build_outcome_summary(cfg, splits, preds)
    json.dumps(summary, allow_nan=False)
    assert summary["outcome"] == "multiclass" and summary["headline"] == "macro_auroc"
    assert summary["classes"] == ["none", "moderate", "severe"]
    big, small = summary["hospitals"]
    assert big["macro_auroc"]["federated"] == pytest.approx(roc_auc_score(y0, p0, multi_class="ovr"))
    low, high = big["macro_auroc_ci"]["federated"]
    assert low < big["macro_auroc"]["federated"] < high
    assert big["gain"]["estimate"] == pytest.approx(big["macro_auroc"]["federated"] - big["macro_auroc"]["local_only"])
    assert small["class_auroc"]["federated"]["severe"] is None and "severe" in small["undefined"]["class_auroc"]
    present = [roc_auc_score(y1 == k, p1[:, k]) for k in (0, 1)]
    assert small["macro_auroc"]["federated"] == pytest.approx(np.mean(present))
    assert small["macro_auroc"]["local_only"] is None and "local_only" in small["undefined"]
    assert small["gain"]["estimate"] is None and small["class_counts_test"]["severe"] == 0
    assert "best_possible" not in summary["overall"]["macro_auroc"]  # one hospital's truth is unknown


def test_continuous_summary_has_best_possible_and_paired_gain():
    cfg = _cfg("continuous")
    rng = np.random.default_rng(6)
    splits, fed, local = [], {}, {}
    for i, n in enumerate((300, 80)):
        mean = rng.normal(6, 1, n)
        value = mean + rng.normal(0, 0.6, n)
        splits.append(_split(cfg, i, value, mean, rng.normal(6, 1, 40)))
        fed[i] = mean + rng.normal(0, 0.3, n)
        local[i] = 6 + 0.5 * (mean - 6) + rng.normal(0, 0.6, n)
    summary = build_outcome_summary(cfg, splits, {"federated": Predictions(fed), "local_only": Predictions(local)})
    json.dumps(summary, allow_nan=False)
    assert summary["value"] == {"unit": "%", "min": 3.0, "max": 20.0}
    overall = summary["overall"]
    assert overall["r2"]["best_possible"] > overall["r2"]["federated"] > overall["r2"]["local_only"]
    assert overall["gain"]["distinguishable_from_zero"] and overall["gain"]["ci"][0] > 0
    assert summary["equity"]["worst_hospital"]["name"] in ("big", "small")
    for h in summary["hospitals"]:
        assert h["rmse"]["federated"] == pytest.approx(np.sqrt(np.mean((splits[h["index"]].outcome_test
                                                                        - fed[h["index"]]) ** 2)))


@pytest.mark.parametrize("kind", ["multiclass", "continuous"])
def test_sweep_fairness_and_contribution_score_the_kinds_headline_figure_as_the_summary_does(kind):
    """`sweep`, `fairness` and `contribution` compare runs on the kind's headline figure (macro AUROC, R²),
    with the summary's own figure and interval per hospital and overall; a hospital with no model is null
    and left out of the mean, worst and tier figures (issue 18, item 7)."""
    from statistics import NormalDist

    from fedhealth.experiments.headline_scores import NO_MODEL_VALUE, headline_scores
    from fedhealth.metrics.intervals import Interval, mean_auroc_interval

    cfg = _cfg(kind)
    rng = np.random.default_rng(11)
    splits, preds = [], {}
    for i, n in enumerate((240, 90)):
        if kind == "multiclass":
            y, p = _classes(n, 20 + i)
        else:
            mean = rng.normal(6, 1, n)
            y, p = mean + rng.normal(0, 0.6, n), mean + rng.normal(0, 0.3, n)
        splits.append(_split(cfg, i, y, None, y[: n // 2]))
        preds[i] = p
    scores = headline_scores(cfg, splits, Predictions(preds))
    metric = "macro_auroc" if kind == "multiclass" else "r2"
    assert scores["metric"] == metric
    summary = build_outcome_summary(cfg, splits, {"federated": Predictions(preds)})
    for h in summary["hospitals"]:
        assert scores["by_hospital"][h["name"]] == h[metric]["federated"]
        assert scores["by_hospital_ci"][h["name"]] == h[f"{metric}_ci"]["federated"]
    assert scores[f"all_records_{metric}"] == summary["overall"][metric]["federated"]
    assert scores[f"all_records_{metric}_ci"] == summary["overall"][f"{metric}_ci"]["federated"]
    overall = summary["overall"]
    assert scores[f"mean_hospital_{metric}"] == pytest.approx(overall[f"mean_hospital_{metric}"]["federated"])
    assert scores[f"mean_hospital_{metric}_ci"] == pytest.approx(
        overall[f"mean_hospital_{metric}_ci"]["federated"], rel=0.05)  # se from the interval's width
    worst = min(scores["by_hospital"], key=scores["by_hospital"].get)
    assert scores["worst_hospital"] == worst and scores[f"worst_hospital_{metric}"] == scores["by_hospital"][worst]
    y0 = splits[0].outcome_test
    want = (roc_auc_score(y0, preds[0], multi_class="ovr", average="macro") if kind == "multiclass"
            else r2_score(y0, preds[0]))
    assert scores["by_hospital"]["big"] == pytest.approx(want, abs=1e-12)
    assert NO_MODEL_VALUE[metric] == (0.5 if kind == "multiclass" else 0.0)

    gone = {**preds, 1: np.full_like(preds[1], np.nan)}  # no model at the small hospital
    scores = headline_scores(cfg, splits, Predictions(gone))
    assert scores["undefined_hospitals"] == ["small"] and np.isnan(scores["by_hospital"]["small"])
    assert scores["by_hospital_ci"]["small"] == [None, None] and "community" not in scores["by_tier"]
    assert scores[f"mean_hospital_{metric}"] == scores["by_hospital"]["big"]
    z = NormalDist().inv_cdf(0.975)
    low, high = scores["by_hospital_ci"]["big"]
    assert scores["by_tier_ci"]["tertiary"] == mean_auroc_interval(
        [Interval(scores["by_hospital"]["big"], low, high, "", (high - low) / (2 * z))],
        bounded=kind == "multiclass").as_list()
    json.dumps(scores)  # JSON-ready as sweep.json writes it (NaN becomes null there)
