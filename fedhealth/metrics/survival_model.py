"""Figures of a survival model's predictions at the study's interval ends, on one set of test records.

A study's survival model (the logistic hazard, `fedhealth.model.losses.LogisticHazard`, or a Cox model with
its Breslow baseline, `fedhealth.model.losses.CoxPartialLikelihood`; `fedhealth.model.outcomes.predict`)
predicts, for each record, its survival S(t) at the end of each of the study's fixed intervals. The metrics of
`fedhealth.metrics.survival` need a risk score (C-index), S at the horizons (Brier score) or a risk at the
horizons (time-dependent AUROC); this module reads them off the curves, with a constant hazard inside each
interval, and says which figures a test set can give: a test set without an event has no C-index, and a
horizon outside the test records' follow-up has no time-dependent AUROC. Those are NaN, never a number and
never a crash.

The risk score behind both C-indices is the predicted probability of the event by the study's last horizon,
1 - S(horizon): a fixed choice of the study, the same for every hospital and model.

NumPy only, like `fedhealth.metrics.survival`: every hospital process imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedhealth.metrics.survival import (
    _censoring,
    cumulative_dynamic_auc,
    harrell_c,
    integrated_brier_score,
    uno_c,
)


def survival_at(curves: np.ndarray, edges: np.ndarray, times: np.ndarray) -> np.ndarray:
    """S(t) of every record (rows) at each of `times` (columns), from `curves` (records, K): S at the end of
    each interval (t_1 .. t_K of `edges`, which start at t_0 = 0). Inside an interval the hazard is constant,
    so S falls geometrically from S(t_j) to S(t_{j+1}); after the last edge S stays at its last value (the
    model says nothing beyond it)."""
    s = np.asarray(curves, dtype=np.float64)
    b = np.asarray(edges, dtype=np.float64)
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if s.ndim != 2 or s.shape[1] != len(b) - 1:
        raise ValueError(f"curves: expected shape (records, {len(b) - 1}) for {len(b) - 1} intervals, got {s.shape}")
    start = np.concatenate([np.ones((s.shape[0], 1)), s], axis=1)  # S(t_0) = 1, S(t_1), ..., S(t_K)
    clipped = np.clip(t, 0.0, b[-1])
    j = np.clip(np.searchsorted(b, clipped, side="right") - 1, 0, len(b) - 2)  # t_j <= t < t_{j+1}
    share = (clipped - b[j]) / (b[j + 1] - b[j])
    lo, hi = start[:, j], start[:, j + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(lo > 0, hi / np.where(lo > 0, lo, 1.0), 0.0)
    return lo * np.power(ratio, share)


def risk_score(curves: np.ndarray, edges: np.ndarray, horizon: float) -> np.ndarray:
    """The predicted probability of the event by `horizon`, 1 - S(horizon): higher for an earlier event."""
    return 1.0 - survival_at(curves, edges, np.array([horizon]))[:, 0]


@dataclass(frozen=True)
class SurvivalFigures:
    """One model's figures on one set of test records; NaN where the records cannot give one.

    c_index: Harrell's C of `risk_score`; uno_c: Uno's C truncated at the last usable horizon (censoring
    weights from the training records); ibs: integrated Brier score over the usable horizons (lower is
    better); td_auroc: the mean cumulative/dynamic AUROC over the usable horizons with a case (an event) by
    then, and `td_auroc_at` each (NaN at the others)."""

    c_index: float
    uno_c: float
    ibs: float
    td_auroc: float
    td_auroc_at: dict[float, float] = field(default_factory=dict)


def usable_horizons(time: np.ndarray, horizons: np.ndarray, train_time: np.ndarray,
                    train_event: np.ndarray) -> np.ndarray:
    """The horizons a test set can be read at: inside its own follow-up (at or after its first time, before
    its last) and where the training records' censoring survival is still known and positive."""
    t = np.asarray(time, dtype=np.float64)
    h = np.asarray(horizons, dtype=np.float64)
    if t.size == 0:
        return h[:0]
    ok = (h >= t.min()) & (h < t.max())
    if np.size(train_time) == 0:
        return h[:0]
    _, known = _censoring(train_time, train_event).usable(h)
    return h[ok & known]


def survival_figures(time: np.ndarray, event: np.ndarray, curves: np.ndarray, edges: np.ndarray,
                     horizons: np.ndarray, train_time: np.ndarray, train_event: np.ndarray) -> SurvivalFigures:
    """Every figure of `SurvivalFigures` for predicted `curves` on test records (`time`, `event`).

    A figure the records cannot give is NaN: no test event (no C-index, no AUROC), fewer than two usable
    horizons (no integrated Brier score), predictions that are not numbers (a hospital without such a
    model)."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(np.int64)
    s = np.asarray(curves, dtype=np.float64)
    h_all = np.asarray(horizons, dtype=np.float64)
    nan = float("nan")
    if len(t) == 0 or not np.isfinite(s).all():
        return SurvivalFigures(nan, nan, nan, nan, {float(x): nan for x in h_all})
    risk = risk_score(s, edges, float(h_all[-1]))
    c = harrell_c(t, e, risk) if e.any() else nan
    usable = usable_horizons(t, h_all, train_time, train_event)
    uno = nan
    if e.any() and len(usable):
        try:
            uno = uno_c(t, e, risk, train_time, train_event, tau=float(usable[-1]))
        except ValueError:  # a test event where the training censoring survival is 0: no weight exists
            uno = nan
    at = {float(x): nan for x in h_all}
    mean_auc = nan
    with_case = np.array([x for x in usable if (e.astype(bool) & (t <= x)).any()])  # an AUROC needs a case by then
    if len(with_case):
        try:
            risks = 1.0 - survival_at(s, edges, with_case)
            auc, mean_auc = cumulative_dynamic_auc(t, e, risks, with_case, train_time, train_event)
            at.update({float(x): float(a) for x, a in zip(with_case, auc, strict=True)})
        except ValueError:
            mean_auc = nan
    ibs = nan
    if len(usable) >= 2:
        try:
            ibs = integrated_brier_score(t, e, survival_at(s, edges, usable), usable, train_time, train_event)
        except ValueError:
            ibs = nan
    return SurvivalFigures(float(c), float(uno), float(ibs), float(mean_auc), at)
