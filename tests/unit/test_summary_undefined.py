"""summary.json when a model is missing at some hospitals (a local-only model cannot be trained from one class,
so its predictions there are NaN): its figures are null, never a number, and the report's figures still draw."""

from __future__ import annotations

import numpy as np

from fedhealth.data.hospitals import load_hospital
from fedhealth.experiments.references import Predictions
from fedhealth.experiments.summary import build_summary
from fedhealth.reporting import figures
from tests.support import smoke


def test_a_model_missing_everywhere_or_somewhere_has_null_figures_and_the_figures_draw():
    cfg = smoke()
    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    federated = Predictions({s.index: s.test_true_risk for s in splits})
    for missing_at in ([0, 1, 2], [1]):
        local = Predictions({s.index: np.full(len(s.y_test), np.nan) if s.index in missing_at else s.test_true_risk
                             for s in splits})
        summary = build_summary(cfg, splits, {"federated": federated, "local_only": local})
        overall = summary["overall"]
        assert overall["accuracy"]["local_only"] is None and np.isnan(overall["auroc"]["local_only"])
        assert "local_only" not in summary["calibration"] and "federated" in summary["calibration"]
        for h in summary["hospitals"]:
            undefined = h["index"] in missing_at
            assert np.isnan(h["accuracy"]["local_only"]) == undefined
            assert np.isnan(h["auroc"]["local_only"]) == undefined
            assert (h["gain"]["estimate"] is None) == undefined
        figures.calibration(summary["calibration"])
        figures.equity(summary["hospitals"])
        figures.final_comparison(summary["hospitals"], ["local_only", "federated"])
