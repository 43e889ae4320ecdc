"""Kaplan-Meier curves and the log-rank test from summed per-interval event and censoring counts.

Events in an interval (t_j, t_j+1] are treated as happening at its end, and its censorings after them (they
were at risk for those events): the Kaplan-Meier estimate of the records with each time moved to its
interval's end. The numbers at risk are derived, n minus the exits (events and censorings) before the
interval, so each record touched one cell of the vector. Follow-up past the last edge counts as at risk
through every interval. Noised counts are rounded and clamped at 0, and events at most the number at risk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedhealth.statistics.layout import OUTCOME, StatisticsError, StatisticsLayout


@dataclass(frozen=True)
class KMCurve:
    """Survival at each interval's end (`times`, the layout's edges after 0), with its variance: Greenwood's
    (sampling) plus, when the vector was noised, the delta-method variance of the noise."""

    times: np.ndarray
    survival: np.ndarray
    variance: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    censored: np.ndarray
    unit: str

    def rows(self) -> list[dict[str, float]]:
        return [{"time": float(t), "survival": float(s), "se": float(math.sqrt(v)), "at_risk": float(r),
                 "events": float(d), "censored": float(c)}
                for t, s, v, r, d, c in zip(self.times, self.survival, self.variance, self.at_risk, self.events,
                                            self.censored, strict=True)]


def _counts(layout: StatisticsLayout, vector: np.ndarray, digest: str | None) -> tuple[np.ndarray, ...]:
    b = layout.block(OUTCOME)
    if b.kind != "survival":
        raise StatisticsError(f"Kaplan-Meier needs a time_to_event study's layout; this one's outcome is "
                              f"{layout.outcome}")
    v = layout.check(vector, digest)
    k = len(b.edges) - 1
    cells = np.maximum(np.rint(v[b.start:b.stop]), 0.0)
    n = max(float(np.rint(v[0])), 0.0)
    d, c = cells[:k], cells[k:2 * k]
    exits = np.concatenate([[0.0], np.cumsum(d + c)[:-1]])
    r = np.maximum(n - exits, 0.0)
    return np.minimum(d, r), c, r, np.asarray(b.edges[1:])


def kaplan_meier(layout: StatisticsLayout, vector: np.ndarray, noise_sd: float = 0.0,
                 digest: str | None = None) -> KMCurve:
    """The Kaplan-Meier curve of a summed (possibly noised) statistics vector of a time_to_event study.

    `noise_sd`: the noise sd on each cell (`figure_noise_sd`), adding the noise's delta-method variance
    (through n, every interval's events and censorings) to Greenwood's; 0 for an exact vector."""
    if not math.isfinite(noise_sd) or noise_sd < 0:
        raise StatisticsError(f"noise_sd must be a finite number of at least 0, got {noise_sd!r}")
    d, c, r, times = _counts(layout, vector, digest)
    with np.errstate(divide="ignore", invalid="ignore"):
        hazard = np.where(r > 0, d / r, 0.0)
        survival = np.cumprod(1.0 - hazard)
        alive = r - d
        term = np.where((r > 0) & (alive > 0), d / (r * alive), 0.0)  # Greenwood's d / (r (r - d))
        variance = np.square(survival) * np.cumsum(term)
        if noise_sd > 0:
            # d log S_k / d n = sum_{j<=k} a_j; / d d_i = -1/(r_i - d_i) - sum_{i<j<=k} a_j; / d c_i = -sum_{i<j<=k} a_j
            a = term
            slope = np.where((r > 0) & (alive > 0), 1.0 / alive, 0.0)
            k = len(d)
            extra = np.zeros(k)
            for j in range(k):  # k intervals (at most 100): the records never enter this loop
                later = np.cumsum(a[:j + 1][::-1])[::-1]  # sum_{i<=m<=j} a_m, for i = 0..j
                after = np.concatenate([later[1:], [0.0]])  # sum_{i<m<=j} a_m
                g = np.concatenate([[later[0]], -slope[:j + 1] - after, -after])
                extra[j] = np.square(g).sum()
            variance = variance + np.square(survival) * noise_sd ** 2 * extra
    return KMCurve(times, survival, variance, r, d, c, layout.block(OUTCOME).unit)


@dataclass(frozen=True)
class LogRank:
    """The log-rank test of two groups: chi-square statistic (1 degree of freedom), p-value, observed and
    expected events of the first group."""

    statistic: float
    p_value: float
    observed: float
    expected: float


def logrank(layout: StatisticsLayout, first: np.ndarray, second: np.ndarray, digest: str | None = None) -> LogRank:
    """The log-rank test between two groups' summed vectors (e.g. two arms, each summed over hospitals),
    at the interval ends (events tied at an interval's end, censorings after them)."""
    from scipy.stats import chi2

    d1, _, r1, _ = _counts(layout, first, digest)
    d2, _, r2, _ = _counts(layout, second, digest)
    d, r = d1 + d2, r1 + r2
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(r > 0, d * r1 / r, 0.0)
        var = np.where(r > 1, d * (r1 / r) * (r2 / r) * (r - d) / (r - 1), 0.0)
    o, e, v = float(d1.sum()), float(expected.sum()), float(var.sum())
    if v <= 0:
        raise StatisticsError("the log-rank test is undefined: no interval has events with both groups at risk")
    stat = (o - e) ** 2 / v
    return LogRank(stat, float(chi2.sf(stat, 1)), o, e)
