"""One global model's headline figure on every hospital's test records, for any outcome kind.

What `sweep`, `fairness` and `contribution` compare their sibling federations on. The headline figure is the
kind's (`fedhealth.metrics.headline`): AUROC (binary), Harrell's C-index (time-to-event), the macro
one-vs-rest AUROC (multi-class), R² (continuous). Keys, with `<m>` the figure's key:

    metric                                    "auroc" | "c_index" | "macro_auroc" | "r2"
    all_records_<m>, all_records_<m>_ci       on all hospitals' test records together
    mean_hospital_<m>, mean_hospital_<m>_ci   unweighted mean over the hospitals where it is defined
    worst_hospital, worst_hospital_<m>, worst_hospital_<m>_ci
    by_tier, by_tier_ci                       the mean over each tier's hospitals (defined ones only)
    by_hospital, by_hospital_ci               each hospital's; NaN (null in JSON) where undefined
    undefined_hospitals                       the hospitals left out of the mean, worst and tier figures

**Intervals** are the study summary's (`fedhealth.experiments.summary.build_summary`): DeLong on the logit
scale for a binary AUROC and the hospitals' DeLong variances combined for a mean; for the other kinds the
summary's seeded bootstrap percentile intervals, and for a mean the hospitals' bootstrap standard errors
combined as independent. A tier's interval for the other kinds takes each hospital's standard error as its
interval's half-width over 1.96 (the summary writes the interval, not the standard error). The worst
hospital's interval is that hospital's own and does not allow for its having been picked as the worst.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from fedhealth.data.hospitals import HospitalSplit
from fedhealth.experiments.references import Predictions
from fedhealth.metrics.headline import headline
from fedhealth.metrics.intervals import LEVEL, Interval, mean_auroc_interval
from fedhealth.study.config import StudyConfig

NAN = float("nan")

# What a coalition of no hospital is worth (`fedhealth contribution`): a model that ranks at random (AUROC
# and C-index 0.5), or that predicts the test records' own mean (R² 0).
NO_MODEL_VALUE: dict[str, float] = {"auroc": 0.5, "c_index": 0.5, "macro_auroc": 0.5, "r2": 0.0}


def headline_scores(cfg: StudyConfig, splits: Sequence[HospitalSplit], preds: Predictions) -> dict[str, Any]:
    """The headline figure of one model's predictions, per hospital and over them (keys in the module docstring).

    Parameters
    ----------
    cfg : StudyConfig
        The study whose splits these are; its outcome kind picks the figure.
    splits : sequence of HospitalSplit
        Every hospital's split.
    preds : Predictions
        The model's predictions on each hospital's test records, all NaN where a hospital has no model.

    Returns
    -------
    dict
        Figures as floats (NaN where undefined) and intervals as [low, high] ([None, None] where undefined).
    """
    metric = headline(cfg.outcome_kind)
    if metric == "auroc":
        per_hospital, intervals, overall, overall_ci = _binary(splits, preds)
    else:
        per_hospital, intervals, overall, overall_ci = _from_summary(cfg, splits, preds, metric)
    bounded = metric != "r2"  # a mean of AUROCs or C-indices stays in [0, 1]; an R² has no lower bound
    defined = {name: v for name, v in per_hospital.items() if np.isfinite(v)}
    by_tier: dict[str, list[str]] = {}
    for s in splits:
        if s.hospital.name in defined:
            by_tier.setdefault(s.hospital.tier, []).append(s.hospital.name)
    worst = min(defined, key=defined.get) if defined else None
    return {
        "metric": metric,
        f"all_records_{metric}": overall,
        f"all_records_{metric}_ci": overall_ci,
        f"mean_hospital_{metric}": float(np.mean(list(defined.values()))) if defined else NAN,
        f"mean_hospital_{metric}_ci": mean_auroc_interval(list(intervals.values()), bounded=bounded,
                                                          over=len(defined)).as_list(),
        "worst_hospital": worst,
        f"worst_hospital_{metric}": defined[worst] if worst is not None else NAN,
        f"worst_hospital_{metric}_ci": intervals[worst].as_list() if worst is not None else [None, None],
        "by_tier": {t: float(np.mean([defined[n] for n in names])) for t, names in sorted(by_tier.items())},
        "by_tier_ci": {t: mean_auroc_interval([intervals[n] for n in names], bounded=bounded,
                                              over=len(names)).as_list() for t, names in sorted(by_tier.items())},
        "by_hospital": per_hospital,
        "by_hospital_ci": {name: i.as_list() for name, i in intervals.items()},
        "undefined_hospitals": sorted(set(per_hospital) - set(defined)),
    }


def _binary(splits: Sequence[HospitalSplit], preds: Predictions
            ) -> tuple[dict[str, float], dict[str, Interval], float, list[float | None]]:
    from fedhealth.metrics.classification import roc_auc
    from fedhealth.metrics.intervals import auroc_interval

    per_hospital = {s.hospital.name: roc_auc(s.y_test, preds.by_hospital[s.index]) for s in splits}
    intervals = {s.hospital.name: auroc_interval(s.y_test, preds.by_hospital[s.index]) for s in splits}
    y_all = np.concatenate([s.y_test for s in splits])
    p_all = np.concatenate([preds.by_hospital[s.index] for s in splits])
    return per_hospital, intervals, roc_auc(y_all, p_all), auroc_interval(y_all, p_all).as_list()


def _from_summary(cfg: StudyConfig, splits: Sequence[HospitalSplit], preds: Predictions, metric: str
                  ) -> tuple[dict[str, float], dict[str, Interval], float, list[float | None]]:
    """The figure and its interval as the study summary computes them, for the kinds other than binary."""
    from fedhealth.experiments.summary import build_summary

    summary = build_summary(cfg, splits, {"federated": preds})
    z = NormalDist().inv_cdf(0.5 + LEVEL / 2.0)
    per_hospital: dict[str, float] = {}
    intervals: dict[str, Interval] = {}
    for h in summary["hospitals"]:
        value = h[metric].get("federated")
        low, high = h[f"{metric}_ci"].get("federated", [None, None])
        per_hospital[h["name"]] = NAN if value is None else float(value)
        intervals[h["name"]] = (Interval(float(value), float(low), float(high), "bootstrap, percentile",
                                         (float(high) - float(low)) / (2 * z))
                                if value is not None and low is not None
                                else Interval(NAN, NAN, NAN, "undefined"))
    overall = summary["overall"]
    value = overall[metric].get("federated")
    return (per_hospital, intervals, NAN if value is None else float(value),
            list(overall[f"{metric}_ci"].get("federated", [None, None])))


def display(value: float | None) -> str:
    """A headline figure for a log line: 4 decimals, or 'undefined'."""
    return "undefined" if value is None or not np.isfinite(value) else f"{value:.4f}"
