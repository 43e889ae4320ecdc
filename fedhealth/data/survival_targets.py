"""A time-to-event record's target for the study's survival model: for the discrete-time hazard model which
interval, and whether the event (`interval_targets`); for a Cox model the follow-up time itself, and whether
the event (`cox_targets`).

Here, with the data, because the split of each hospital turns its follow-up into these targets once
(`fedhealth.data.hospitals`), and the model's loss (`fedhealth.model.losses.LogisticHazard`,
`fedhealth.model.losses.CoxPartialLikelihood`) reads them.
"""

from __future__ import annotations

import numpy as np


def interval_targets(time: np.ndarray, event: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each record's [interval index, event] for `LogisticHazard`, as float32 of shape (records, 2).

    `edges` are the interval boundaries t_0 = 0 < t_1 < ... < t_K (the schema's, in its time unit): interval
    j is (t_j, t_{j+1}]. A record with an event at time t is in the interval holding t. A record censored at
    t survived the intervals before it, and survived the interval holding t only if t reached that
    interval's middle (Gensheimer & Narasimhan's convention: a record censored early in an interval would
    otherwise count as surviving all of it). Follow-up past t_K is censored at t_K (it survived every
    interval).

    Raises ValueError (counts and positions, never a value) for times that are not finite and positive,
    events other than 0/1, or edges that do not start at 0 and increase."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event)
    b = np.asarray(edges, dtype=np.float64)
    if b.ndim != 1 or len(b) < 2 or b[0] != 0.0 or not np.all(np.diff(b) > 0) or not np.isfinite(b).all():
        raise ValueError("interval edges must start at 0 and increase strictly, with at least one interval")
    _check_follow_up(t, e)
    n_intervals = len(b) - 1
    k = np.searchsorted(b, t, side="left") - 1  # (t_j, t_{j+1}] holds t
    late = k >= n_intervals
    k = np.minimum(k, n_intervals - 1)
    ev = e.astype(bool) & ~late
    middle = b[k] + (b[k + 1] - b[k]) / 2.0  # not (a + b) / 2, which overflows for edges near the float maximum
    k = np.where(~ev & ~late & (t < middle), k - 1, k)
    return np.stack([k.astype(np.float32), ev.astype(np.float32)], axis=1)


def cox_targets(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Each record's [time, event] for `CoxPartialLikelihood`, as float32 of shape (records, 2).

    The follow-up as it is, in the schema's unit: a Cox model compares records by their times (its risk sets:
    everyone still followed at an event's time), so nothing is cut at the interval edges, and follow-up past
    the last edge keeps its event. float32 as every other target (the training loops read float32): it never
    reverses two times' order, keeps whole days exactly, and can at most tie two times within 1 part in 10^7.

    Raises ValueError as `interval_targets` does (counts and positions, never a value)."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event)
    _check_follow_up(t, e)
    return np.stack([t.astype(np.float32), e.astype(np.float32)], axis=1)


def _check_follow_up(t: np.ndarray, e: np.ndarray) -> None:
    """Refuse follow-up a survival target cannot be built from: shapes, times not positive and finite,
    events other than 0/1 (counts and the first position, never a value)."""
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"time and event must be 1-D and of one length; got shapes {t.shape} and {e.shape}")
    bad = ~np.isfinite(t) | (t <= 0)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} time(s) are not positive finite numbers (first at position "
                         f"{int(np.flatnonzero(bad)[0])})")
    if not np.isin(e, (0, 1)).all():
        raise ValueError(f"{int((~np.isin(e, (0, 1))).sum())} event indicator(s) are not 0 or 1")
