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

Every figure has its 95 % interval beside it (`fedhealth.metrics.intervals`; `summary["intervals"]` says
how each was computed), as [low, high], or [null, null] where the figure itself is undefined:

    summary["hospitals"][i]["auroc_ci" | "brier_ci" | "accuracy_ci"][model]
    summary["hospitals"][i]["gain"]   federated minus local-only AUROC on the hospital's test records:
        {"estimate", "ci", "distinguishable_from_zero"} (paired DeLong); absent without a local-only model
    summary["overall"]["auroc_ci" | "mean_hospital_auroc_ci" | "brier_ci" | "accuracy_ci"][model]
    summary["overall"]["gain"], summary["overall"]["mean_hospital_gain"]   as a hospital's "gain"

A hospital whose split has a side with one class only (a referral centre where nearly everyone has the
disease) trains with the federation all the same; what needs both classes is null, and its row says why:

    summary["hospitals"][i]["undefined"]   {"auroc": reason} when its test split holds one class (every
        model's AUROC and the gain there), {"local_only": reason} when its training split does (no local-only
        model: every local-only figure and the gain); absent when everything is defined
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
from fedhealth.metrics.intervals import (
    LEVEL,
    Interval,
    accuracy_rows,
    auroc_difference_interval,
    auroc_interval,
    bootstrap_interval,
    brier_rows,
    mean_auroc_interval,
)
from fedhealth.study.config import StudyConfig

RESAMPLES = 1000  # bootstrap resamples per figure


def _gain(interval: Interval) -> dict[str, Any]:
    # an interval of no width (no variance on this test set) says nothing about noise: never "beyond" it
    return {"estimate": interval.estimate if interval.defined else None, "ci": interval.as_list(),
            "distinguishable_from_zero": interval.defined and interval.high > interval.low and not interval.covers_zero}


def _classes_in(y: np.ndarray) -> str:
    pos = int(np.sum(y == 1))
    return f"{pos} positive and {len(y) - pos} negative records"


def undefined_reasons(split: HospitalSplit, local_only: bool) -> dict[str, str]:
    """Why some of a hospital's figures are undefined (null in summary.json), by what they concern."""
    out = {}
    if np.unique(split.y_test).size < 2:
        out["auroc"] = f"its test split holds {_classes_in(split.y_test)}: AUROC and AUPRC need both classes"
    if local_only and np.unique(split.y_train).size < 2:
        out["local_only"] = (f"its training split holds {_classes_in(split.y_train)}: no local-only model can be "
                             "trained on one class")
    return out


def build_summary(cfg: StudyConfig, splits: Sequence[HospitalSplit], preds: dict[str, Predictions],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The study summary (layout in the module docstring). A time-to-event study's has the same layout with
    Harrell's C-index as its headline figure (`fedhealth.experiments.survival_summary`)."""
    if cfg.outcome_kind == "time_to_event":
        from fedhealth.experiments.survival_summary import build_survival_summary

        return build_survival_summary(cfg, splits, preds, extra)
    if cfg.outcome_kind in ("multiclass", "continuous"):
        from fedhealth.experiments.kinds_summary import build_outcome_summary

        return build_outcome_summary(cfg, splits, preds, extra)
    # Real data has no known true risk: the best-possible reference is then absent, not NaN.
    known_risk = all(np.isfinite(s.test_true_risk).all() for s in splits)
    hospitals = []
    hospital_auroc: dict[str, list[Interval]] = {key: [] for key in preds}
    hospital_gains: list[Interval] = []
    for s in splits:
        row: dict[str, Any] = {
            "name": s.hospital.name, "index": s.index, "tier": s.hospital.tier, "region": s.hospital.region,
            "records": s.hospital.records, "n_train": int(len(s.y_train)), "n_test": int(len(s.y_test)),
            "prevalence": s.prevalence,
            "auroc": {}, "auprc": {}, "brier": {}, "accuracy": {},
            "auroc_ci": {}, "brier_ci": {}, "accuracy_ci": {},
        }
        for j, (key, pred) in enumerate(preds.items()):
            p = pred.by_hospital[s.index]
            m = binary_metrics(s.y_test, p)
            row["auroc"][key], row["auprc"][key], row["brier"][key] = m.auroc, m.auprc, m.brier
            row["accuracy"][key] = m.accuracy  # at threshold 0.5: for comparison with benchmarks that report it
            auroc = auroc_interval(s.y_test, p)
            hospital_auroc[key].append(auroc)
            row["auroc_ci"][key] = auroc.as_list()
            seed = (cfg.seed, s.index, j)
            row["brier_ci"][key] = bootstrap_interval(brier_rows, s.y_test, p, seed, resamples=RESAMPLES).as_list()
            row["accuracy_ci"][key] = bootstrap_interval(accuracy_rows, s.y_test, p, seed,
                                                         resamples=RESAMPLES).as_list()
        if "federated" in preds and "local_only" in preds:
            gain = auroc_difference_interval(s.y_test, preds["federated"].by_hospital[s.index],
                                             preds["local_only"].by_hospital[s.index])
            hospital_gains.append(gain)
            row["gain"] = _gain(gain)
        if known_risk:
            row["auroc"]["best_possible"] = s.bayes_auroc
        undefined = undefined_reasons(s, local_only="local_only" in preds)
        if undefined:
            row["undefined"] = undefined
        hospitals.append(row)

    y_all = np.concatenate([s.y_test for s in splits])
    overall: dict[str, Any] = {"auroc": {}, "mean_hospital_auroc": {}, "brier": {}, "accuracy": {},
                               "auroc_ci": {}, "mean_hospital_auroc_ci": {}, "brier_ci": {}, "accuracy_ci": {},
                               "n_test": int(len(y_all))}
    calibration: dict[str, Any] = {}
    all_records: dict[str, np.ndarray] = {}
    for j, (key, pred) in enumerate(preds.items()):
        p_all = all_records[key] = np.concatenate([pred.by_hospital[s.index] for s in splits])
        overall["auroc"][key] = roc_auc(y_all, p_all)
        overall["brier"][key] = float(np.mean((p_all - y_all) ** 2))
        modelled = bool(np.isfinite(p_all).all())  # NaN where a hospital has no such model (one-class training)
        overall["accuracy"][key] = float(np.mean((p_all >= 0.5) == (y_all == 1))) if modelled else None
        overall["auroc_ci"][key] = auroc_interval(y_all, p_all).as_list()
        overall["mean_hospital_auroc_ci"][key] = mean_auroc_interval(
            hospital_auroc[key], over=sum(bool(np.isfinite(h["auroc"][key])) for h in hospitals)).as_list()
        seed = (cfg.seed, len(splits), j)
        overall["brier_ci"][key] = bootstrap_interval(brier_rows, y_all, p_all, seed, resamples=RESAMPLES).as_list()
        overall["accuracy_ci"][key] = bootstrap_interval(accuracy_rows, y_all, p_all, seed,
                                                         resamples=RESAMPLES).as_list()
        if modelled:  # a model missing at some hospital has no calibration over all test records
            bins = reliability_bins(y_all, p_all)
            calibration[key] = {"bins": bins, "ece": expected_calibration_error(bins)}
    if hospital_gains:
        overall["gain"] = _gain(auroc_difference_interval(y_all, all_records["federated"], all_records["local_only"]))
        overall["mean_hospital_gain"] = _gain(mean_auroc_interval(hospital_gains, bounded=False))
    if known_risk:
        overall["auroc"]["best_possible"] = roc_auc(y_all, np.concatenate([s.test_true_risk for s in splits]))
    for key in [*preds, *(["best_possible"] if known_risk else [])]:
        values = np.array([h["auroc"][key] for h in hospitals], dtype=float)
        overall["mean_hospital_auroc"][key] = float(np.nanmean(values)) if np.isfinite(values).any() else None
    return {"study": cfg.name, "seed": cfg.seed, "strategy": cfg.federation.strategy.name,
            "model": cfg.model.name, "rounds": cfg.federation.rounds, "overall": overall,
            "hospitals": hospitals, "calibration": calibration, "equity": equity_summary(hospitals),
            "intervals": {"level": LEVEL, "auroc": "DeLong standard error, interval on the logit scale",
                          "gain": "paired DeLong on the same test records; mean_hospital_gain and "
                                  "mean_hospital_auroc_ci combine the hospitals' DeLong variances",
                          "brier, accuracy": f"stratified bootstrap, {RESAMPLES} resamples, percentile, "
                                             f"seeded from the study seed",
                          "covers": "the finite test sets only, not the training run: another seed "
                                    "trains another model"},
            **(extra or {})}
