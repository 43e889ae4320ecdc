"""The study summary: per hospital and overall, federated vs local-only vs pooled vs best possible.

Keys are plain and documented here because papers and dashboards read them:

    summary["hospitals"][i]["auroc"]["federated" | "local_only" | "pooled" | "best_possible"]
        (+ "federated_no_dp" in a DP run: the same federation without DP, the utility cost of privacy);
        a reference the run did not train (`references.*` off; best_possible for real records) has no key
        at all, never a null, so readers test for the key
    summary["overall"]["auroc"][...]            AUROC on all hospitals' test records together
    summary["overall"]["mean_hospital_auroc"][...]  unweighted mean of per-hospital AUROC
    summary["overall"]["brier"][...]            Brier score on all test records
    summary["calibration"][model]               reliability bands on all test records, and their ECE
    summary["equity"]                           see `fedhealth.metrics.equity.equity_summary`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedhealth.data.hospitals import HospitalSplit
from fedhealth.experiments.references import Predictions
from fedhealth.metrics.calibration import expected_calibration_error, reliability_bins
from fedhealth.metrics.classification import binary_metrics, roc_auc
from fedhealth.metrics.equity import equity_summary
from fedhealth.study.config import StudyConfig


def build_summary(cfg: StudyConfig, splits: Sequence[HospitalSplit], preds: dict[str, Predictions],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    # Real data has no known true risk: the best-possible reference is then absent, not NaN.
    known_risk = all(np.isfinite(s.test_true_risk).all() for s in splits)
    hospitals = []
    for s in splits:
        row: dict[str, Any] = {
            "name": s.hospital.name, "index": s.index, "tier": s.hospital.tier, "region": s.hospital.region,
            "records": s.hospital.records, "n_train": int(len(s.y_train)), "n_test": int(len(s.y_test)),
            "prevalence": s.prevalence,
            "auroc": {}, "auprc": {}, "brier": {}, "accuracy": {},
        }
        for key, pred in preds.items():
            m = binary_metrics(s.y_test, pred.by_hospital[s.index])
            row["auroc"][key], row["auprc"][key], row["brier"][key] = m.auroc, m.auprc, m.brier
            row["accuracy"][key] = m.accuracy  # at threshold 0.5: for comparison with benchmarks that report it
        if known_risk:
            row["auroc"]["best_possible"] = s.bayes_auroc
        hospitals.append(row)

    y_all = np.concatenate([s.y_test for s in splits])
    overall: dict[str, Any] = {"auroc": {}, "mean_hospital_auroc": {}, "brier": {}, "accuracy": {},
                               "n_test": int(len(y_all))}
    calibration: dict[str, Any] = {}
    for key, pred in preds.items():
        p_all = np.concatenate([pred.by_hospital[s.index] for s in splits])
        overall["auroc"][key] = roc_auc(y_all, p_all)
        overall["brier"][key] = float(np.mean((p_all - y_all) ** 2))
        overall["accuracy"][key] = float(np.mean((p_all >= 0.5) == (y_all == 1)))
        bins = reliability_bins(y_all, p_all)
        calibration[key] = {"bins": bins, "ece": expected_calibration_error(bins)}
    if known_risk:
        overall["auroc"]["best_possible"] = roc_auc(y_all, np.concatenate([s.test_true_risk for s in splits]))
    for key in [*preds, *(["best_possible"] if known_risk else [])]:
        values = np.array([h["auroc"][key] for h in hospitals], dtype=float)
        overall["mean_hospital_auroc"][key] = float(np.nanmean(values)) if np.isfinite(values).any() else None
    return {"study": cfg.name, "seed": cfg.seed, "strategy": cfg.federation.strategy.name,
            "model": cfg.model.name, "rounds": cfg.federation.rounds, "overall": overall,
            "hospitals": hospitals, "calibration": calibration, "equity": equity_summary(hospitals),
            **(extra or {})}
