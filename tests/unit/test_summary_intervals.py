"""summary.json carries a 95 % interval beside every figure, the gain over local-only with its paired
interval, and the equity sentence says which gains are not distinguishable from zero. Built from the smoke
study's real splits with made-up predictions (no federation runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhealth.data.hospitals import load_hospital
from fedhealth.experiments.references import Predictions
from fedhealth.experiments.summary import build_summary
from fedhealth.metrics.equity import equity_summary
from fedhealth.metrics.intervals import auroc_difference_interval, auroc_interval
from tests.support import smoke


@pytest.fixture(scope="module")
def study():
    cfg = smoke()
    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    rng = np.random.default_rng(0)
    preds = {k: Predictions({s.index: np.clip(signal * s.y_test + rng.uniform(0, 0.6, len(s.y_test)), 0, 1)
                             for s in splits}) for k, signal in (("federated", 0.5), ("local_only", 0.2))}
    return cfg, splits, preds, build_summary(cfg, splits, preds)


def test_every_figure_has_its_interval_around_it(study):
    _, splits, preds, summary = study
    for h, s in zip(summary["hospitals"], splits, strict=True):
        for key in preds:
            for figure in ("auroc", "brier", "accuracy"):
                low, high = h[f"{figure}_ci"][key]
                assert low <= h[figure][key] <= high, (h["name"], figure, key)
            expected = auroc_interval(s.y_test, preds[key].by_hospital[s.index])
            assert h["auroc_ci"][key] == [expected.low, expected.high]
    o = summary["overall"]
    for key in preds:
        for figure in ("auroc", "mean_hospital_auroc", "brier", "accuracy"):
            low, high = o[f"{figure}_ci"][key]
            assert low <= o[figure][key] <= high, (figure, key)
    assert summary["intervals"]["level"] == 0.95


def test_the_gain_is_the_paired_difference_with_its_verdict(study):
    _, splits, preds, summary = study
    for h, s in zip(summary["hospitals"], splits, strict=True):
        diff = auroc_difference_interval(s.y_test, preds["federated"].by_hospital[s.index],
                                         preds["local_only"].by_hospital[s.index])
        assert h["gain"]["estimate"] == pytest.approx(h["auroc"]["federated"] - h["auroc"]["local_only"])
        assert h["gain"]["ci"] == [diff.low, diff.high]
        assert h["gain"]["distinguishable_from_zero"] == (not diff.low <= 0 <= diff.high)
    o = summary["overall"]
    assert o["gain"]["estimate"] == pytest.approx(o["auroc"]["federated"] - o["auroc"]["local_only"])
    assert o["mean_hospital_gain"]["estimate"] == pytest.approx(np.mean([h["gain"]["estimate"]
                                                                         for h in summary["hospitals"]]))


def test_the_summary_is_reproducible_and_valid_json(study):
    cfg, splits, preds, summary = study
    again = build_summary(cfg, splits, preds)
    assert json.dumps(again, allow_nan=False, sort_keys=True, default=str) == \
        json.dumps(summary, allow_nan=False, sort_keys=True, default=str)


def test_without_a_local_only_model_there_is_no_gain_and_no_null(study):
    cfg, splits, preds, _ = study
    summary = build_summary(cfg, splits, {"federated": preds["federated"]})
    assert "gain" not in summary["overall"] and all("gain" not in h for h in summary["hospitals"])


def _row(name, records, local, federated, ci):
    gain = federated - local
    return {"name": name, "tier": "community", "region": "north", "records": records,
            "auroc": {"local_only": local, "federated": federated},
            "gain": {"estimate": gain, "ci": ci, "distinguishable_from_zero": not ci[0] <= 0 <= ci[1]}}


def test_the_equity_sentence_says_which_gains_are_not_distinguishable_from_zero():
    rows = [_row("a", 300, 0.70, 0.80, [0.03, 0.17]), _row("b", 500, 0.72, 0.75, [-0.04, 0.10]),
            _row("c", 3000, 0.80, 0.82, [-0.01, 0.05]), _row("d", 9000, 0.85, 0.80, [-0.09, -0.01])]
    eq = equity_summary(rows)
    assert eq["hospitals_that_gained_beyond_noise"] == 1 and eq["hospitals_that_lost_beyond_noise"] == 1
    assert eq["sentence"].startswith("3 of 4 hospitals gained over training alone (1 beyond the test-set noise, "
                                     "with a 95 % interval above zero; 1 lost beyond it; for 2 the gain is not "
                                     "distinguishable from zero)")


def test_a_gain_with_no_width_is_never_beyond_the_noise():
    from fedhealth.experiments.summary import _gain
    from fedhealth.metrics.intervals import Interval

    assert _gain(Interval(0.5, 0.5, 0.5, "DeLong, paired", 0.0))["distinguishable_from_zero"] is False
    assert _gain(Interval(0.2, 0.1, 0.3, "DeLong, paired", 0.05))["distinguishable_from_zero"] is True
