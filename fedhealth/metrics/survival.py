"""Time-to-event figures: Kaplan-Meier, Harrell's and Uno's C-index, time-dependent AUROC, Brier score.

A survival model is judged on records whose outcome is often unknown: a patient censored at 14 months was
event-free for 14 months and nothing more is known. These figures use each record for what it does say:

- **Kaplan-Meier**, the product-limit estimate of P(T > t), and the same estimator run on the censorings
  (`censoring_survival`), the G(t) behind every inverse-probability-of-censoring weight (IPCW) below.
- **Harrell's C**: of the pairs whose order is known (the earlier one had the event), the share where the
  higher risk went with the earlier event. It depends on how much censoring the test set had.
- **Uno's C**: the same pairs weighted by 1 / G(T_i)^2, with G estimated on the *training* records, which
  removes that dependence (Uno et al. 2011), up to a truncation time `tau`.
- **Cumulative/dynamic AUROC** at horizons t: cases died by t (weighted 1 / G(T_i)), controls are alive after
  t (Uno et al. 2007; Lambert & Chevret 2014), with a survival-weighted mean over the horizons.
- **Brier score** at horizons t, IPCW-weighted (Graf et al. 1999), and its integral over the horizons.

The definitions are scikit-survival 0.28's (`sksurv.metrics`, `sksurv.nonparametric`); the tests check every
function against it to 1e-10, ties of times and of risks included. The policy where the two differ on
*whether* there is an answer: wherever sksurv returns a figure this module returns the same one; where sksurv
raises although the estimator is defined (a test set with no event: a NaN C-index here; a censored test record
beyond the training follow-up that no weight is needed for), this module answers; and where sksurv would
return a number it should not (horizons out of order, silently paired with the wrong prediction column; a
Brier term whose censoring weight is 1/0, silently dropped), this module raises.

Every `ValueError` names the argument, says how to fix it and gives counts and positions, never a value:
these are patient data, and an error message travels further than the records (logs, a coordinator's
terminal). Written in NumPy only, and imports nothing else, for the same reason as
`fedhealth.metrics.classification`: every hospital process imports it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIED_RISK_TOL = 1e-8  # risks this close count as tied (sksurv's `tied_tol`): float noise is not a ranking
_SHOWN = 5  # positions quoted in an error message
_PAIRS_AT_ONCE = 2_000_000  # pairwise comparisons held in memory at once (C-index)


# ---- Checking the arguments --------------------------------------------------------------------------------


def _at(bad: np.ndarray) -> str:
    """Where the offending entries are ('at positions 0, 4, ...'), never what they hold."""
    where = np.argwhere(bad)
    shown = [str(int(p[0])) if len(p) == 1 else "(" + ", ".join(str(int(i)) for i in p) + ")"
             for p in where[:_SHOWN]]
    more = ", ..." if len(where) > _SHOWN else ""
    return f"at position{'s' if len(where) != 1 else ''} {', '.join(shown)}{more}"


def _numeric(values: object, name: str, ndim: tuple[int, ...] = (1,), entry: str = "record") -> np.ndarray:
    """`values` as an array of one of the allowed dimensions, numeric or boolean."""
    array = np.asarray(values)
    if array.ndim not in ndim:
        shapes = " or ".join(f"{d}-dimensional" for d in ndim)
        raise ValueError(f"{name} must be {shapes} (one entry per {entry}); got an array with {array.ndim} "
                         "dimension(s)")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers (or booleans); got dtype {array.dtype}: convert it with "
                         "np.asarray(..., dtype=float) first")
    return array


def _same_length(array: np.ndarray, name: str, n: int, of: str) -> None:
    if len(array) != n:
        raise ValueError(f"{name} has {len(array)} entries but {of} has {n}: give one per record, in the same "
                         "order")


def _times(values: object, name: str) -> np.ndarray:
    """Follow-up times: finite and >= 0 (sksurv's `check_y_survival` allows a time of 0)."""
    time = _numeric(values, name).astype(np.float64)
    bad = ~np.isfinite(time)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} entries are not finite numbers (NaN or infinite), {_at(bad)}; "
                         "every record needs the time of its event or of its censoring")
    bad = time < 0
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} entries are negative, {_at(bad)}; a time is the duration "
                         "from the start of follow-up, 0 or more")
    return time


def _events(values: object, name: str, n: int, time_name: str) -> np.ndarray:
    """Event indicators: booleans, or numbers that are all 0 or 1 (1: the event happened; 0: censored)."""
    event = _numeric(values, name)
    _same_length(event, name, n, time_name)
    if event.dtype != np.bool_:
        bad = (event != 0) & (event != 1)
        if bad.any():
            raise ValueError(f"{name}: {int(bad.sum())} entries are neither 0 nor 1, {_at(bad)}; code an event "
                             "as 1 (or True) and a censoring as 0 (or False)")
    return event.astype(bool)


def _outcome(time: object, event: object, names: tuple[str, str] = ("time", "event")
             ) -> tuple[np.ndarray, np.ndarray]:
    t = _times(time, names[0])
    return t, _events(event, names[1], len(t), names[0])


def _scores(values: object, name: str, n: int, of: str) -> np.ndarray:
    scores = _numeric(values, name).astype(np.float64)
    _same_length(scores, name, n, of)
    return scores


def _tolerance(tied_tol: float) -> float:
    tol = float(tied_tol)
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError("tied_tol must be a finite number >= 0 (0: only equal risks are tied)")
    return tol


def _horizons(values: object, time: np.ndarray) -> np.ndarray:
    """Horizons: strictly increasing (column j of a prediction belongs to horizons[j]), inside the test
    follow-up [earliest time, latest time), as sksurv requires: before the earliest time nothing has been
    observed, and from the latest on no record is left to be a control."""
    horizons = _numeric(np.atleast_1d(np.asarray(values)), "horizons", entry="horizon").astype(np.float64)
    if len(horizons) == 0:
        raise ValueError("horizons is empty: give at least one time at which to evaluate")
    bad = ~np.isfinite(horizons)
    if bad.any():
        raise ValueError(f"horizons: {int(bad.sum())} entries are not finite numbers, {_at(bad)}")
    bad = np.r_[False, np.diff(horizons) <= 0]
    if bad.any():
        raise ValueError(f"horizons must be strictly increasing (sorted, no repeats) so that column j of the "
                         f"predictions belongs to horizons[j]; {int(bad.sum())} entries are not above the one "
                         f"before them, {_at(bad)}")
    if len(time) == 0:
        raise ValueError("time is empty: a time-dependent figure needs test records")
    bad = (horizons < time.min()) | (horizons >= time.max())
    if bad.any():
        raise ValueError(f"horizons: {int(bad.sum())} of {len(horizons)} lie outside the test follow-up, "
                         f"{_at(bad)}; each must be at or after the earliest test time and before the latest "
                         "one")
    return horizons


def _per_horizon(values: object, name: str, n: int, k: int, one_value_ok: bool) -> np.ndarray:
    """Predictions as an (n records, k horizons) array; one value per record repeated if `one_value_ok`."""
    array = _numeric(values, name, ndim=(1, 2)).astype(np.float64)
    _same_length(array, name, n, "time")
    if array.ndim == 1:
        if not one_value_ok:
            raise ValueError(f"{name} has one value per record but there are {k} horizons: a survival "
                             "probability changes with the horizon, so give one column per horizon "
                             f"(shape: records x {k})")
        return np.broadcast_to(array[:, None], (n, k))
    if array.shape[1] != k:
        raise ValueError(f"{name} has {array.shape[1]} columns but there are {k} horizons: give one column per "
                         "horizon, in the order of horizons")
    return array


# ---- Kaplan-Meier and step functions ------------------------------------------------------------------------


def _product_limit(time: np.ndarray, jumps: np.ndarray, leave_first: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The product-limit curve at the distinct times where `jumps` happens; at a time t the records at risk
    are those with time >= t less those `leave_first` at t (ties: who leaves before the jump)."""
    if len(time) == 0:
        return np.empty(0), np.empty(0)
    distinct, inverse, counts = np.unique(time, return_inverse=True, return_counts=True)
    k = len(distinct)
    n_jumps = np.bincount(inverse, weights=jumps.astype(np.float64), minlength=k)
    gone_before = np.r_[0, np.cumsum(counts)[:-1]]
    at_risk = len(time) - gone_before - np.bincount(inverse, weights=leave_first.astype(np.float64), minlength=k)
    hazard = np.divide(n_jumps, at_risk, out=np.zeros(k), where=n_jumps > 0)
    survival = np.cumprod(1.0 - hazard)  # over every distinct time, as sksurv, so the products are the same
    keep = n_jumps > 0
    return distinct[keep], survival[keep]


def kaplan_meier(time: object, event: object) -> tuple[np.ndarray, np.ndarray]:
    """The Kaplan-Meier (product-limit) estimate of the survival function P(T > t).

    Censored records count as at risk up to and including their censoring time, so an event and a
    censoring at the same time are taken as event first (as lifelines and scikit-survival do): the
    censored patient was still being followed when the other one had the event.

    Parameters
    ----------
    time : array-like, shape (n,)
        Time of each record's event or censoring, finite and >= 0.
    event : array-like, shape (n,)
        1 or True where the event happened, 0 or False where the record was censored.

    Returns
    -------
    times : ndarray, shape (m,)
        The distinct event times, increasing (empty when no record has an event).
    survival : ndarray, shape (m,)
        The estimate just after each of them; a step function, flat between event times (evaluate it
        anywhere with `step_function_at`). It is known up to the last follow-up time, not beyond.

    Raises
    ------
    ValueError
        A time that is negative or not finite, an event that is not 0/1, or lengths that differ.
    """
    t, e = _outcome(time, event)
    return _product_limit(t, e, np.zeros_like(e))


def censoring_survival(time: object, event: object) -> tuple[np.ndarray, np.ndarray]:
    """The Kaplan-Meier estimate of the censoring survival function G(t) = P(C > t).

    Each IPCW weight below is 1 / G: a record observed at a time where most patients have been censored
    stands in for the many like it whose outcome was not seen. Here the censorings are the "events", and
    at a tie an event leaves the risk set before the censoring (the mirror of `kaplan_meier`'s rule, and
    sksurv's `kaplan_meier_estimator(..., reverse=True)`).

    Parameters
    ----------
    time : array-like, shape (n,)
        Time of each record's event or censoring, finite and >= 0.
    event : array-like, shape (n,)
        1 or True where the event happened, 0 or False where the record was censored.

    Returns
    -------
    times : ndarray, shape (m,)
        The distinct censoring times, increasing.
    survival : ndarray, shape (m,)
        G just after each of them; 0 at the end when the last records followed were all censored.

    Raises
    ------
    ValueError
        As `kaplan_meier`.
    """
    t, e = _outcome(time, event)
    return _product_limit(t, ~e, e)


def _step(times: np.ndarray, values: np.ndarray, at: np.ndarray, initial: float = 1.0) -> np.ndarray:
    index = np.searchsorted(times, at, side="right") - 1
    return np.where(index >= 0, values[np.maximum(index, 0)] if len(values) else initial, initial)


def step_function_at(times: object, values: object, at: object, initial: float = 1.0) -> np.ndarray:
    """Evaluate a right-continuous step function (such as a Kaplan-Meier curve) at arbitrary times.

    The value at t is the value of the last step at or before t, and `initial` before the first step: a
    survival curve is 1 until the first event, and at an event time it already includes that event.

    Parameters
    ----------
    times : array-like, shape (m,)
        Where the steps are, strictly increasing.
    values : array-like, shape (m,)
        The value from each step on.
    at : array-like
        Where to evaluate, finite; any shape.
    initial : float, default 1.0
        The value before the first step.

    Returns
    -------
    ndarray, the shape of `at`
        The function's value at each of `at`. Beyond the last step it stays at the last value: whether the
        curve is known there (up to the last follow-up time) is the caller's to say.

    Raises
    ------
    ValueError
        Steps not strictly increasing, `values` of another length, or an `at` that is not finite.
    """
    steps = _numeric(times, "times", entry="step").astype(np.float64)
    heights = _numeric(values, "values", entry="step").astype(np.float64)
    _same_length(heights, "values", len(steps), "times")
    bad = np.r_[False, ~(np.diff(steps) > 0)] | ~np.isfinite(steps)
    if bad.any():
        raise ValueError(f"times must be finite and strictly increasing; {int(bad.sum())} entries are not, "
                         f"{_at(bad)}")
    where = np.asarray(at, dtype=np.float64)
    bad = ~np.isfinite(where)
    if bad.any():
        raise ValueError(f"at: {int(bad.sum())} entries are not finite numbers, {_at(bad)}")
    return _step(steps, heights, where, initial)


# ---- The censoring distribution, for the inverse-probability weights ---------------------------------------


@dataclass(frozen=True)
class _Censoring:
    """G(t) estimated on the training records, and where it stops being known."""

    times: np.ndarray
    survival: np.ndarray
    end: float  # the last training follow-up time: beyond it G is not estimated

    def usable(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """G at `at`, and where 1 / G is a weight at all: inside the training follow-up and G > 0."""
        g = _step(self.times, self.survival, at)
        return g, (at <= self.end) & (g > 0)


def _censoring(train_time: object, train_event: object) -> _Censoring:
    time, event = _outcome(train_time, train_event, ("train_time", "train_event"))
    if len(time) == 0:
        raise ValueError("train_time is empty: the censoring distribution is estimated on the training records")
    times, survival = _product_limit(time, ~event, event)
    return _Censoring(times, survival, float(time.max()))


_BEYOND = ("fall beyond the training follow-up or where the training censoring survival is 0, so their "
           "inverse-probability weight 1/G is undefined")


# ---- Concordance ---------------------------------------------------------------------------------------------


def _concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray, weight: np.ndarray, tol: float) -> float:
    """sum_ij w_i [comparable] (concordant + tied / 2) / sum_ij w_i [comparable], over events i.

    Pair (i, j) is comparable when i had the event and j was still followed after T_i: T_j > T_i, or j was
    censored at T_i (two events at the same time have no known order). Concordant: risk_i > risk_j by more
    than `tol`; tied: within `tol` (sksurv's `_estimate_concordance_index`). NaN with no comparable pair."""
    cases = np.flatnonzero(event & (weight > 0))
    rows = max(1, _PAIRS_AT_ONCE // max(len(time), 1))
    numerator = denominator = 0.0
    for start in range(0, len(cases), rows):
        i = cases[start:start + rows]
        ti = time[i][:, None]
        comparable = (time[None, :] > ti) | ((time[None, :] == ti) & ~event[None, :])
        gap = risk[i][:, None] - risk[None, :]
        tied = np.abs(gap) <= tol
        credit = np.where(tied, 0.5, (gap > 0).astype(np.float64))
        w = weight[i]
        numerator += float(w @ (credit * comparable).sum(axis=1))
        denominator += float(w @ comparable.sum(axis=1))
    return numerator / denominator if denominator > 0 else float("nan")


def harrell_c(time: object, event: object, risk: object, *, tied_tol: float = TIED_RISK_TOL) -> float:
    """Harrell's concordance index: how often the higher predicted risk had the earlier event.

    Only pairs whose order is known count: the earlier record had the event, and the other was still
    followed after it. Ties follow sksurv's `concordance_index_censored`: two events at the same time are
    not compared; an event and a censoring at the same time are (the censored patient outlived the event);
    risks within `tied_tol` count 1/2.

    Parameters
    ----------
    time : array-like, shape (n,)
        Time of each record's event or censoring, finite and >= 0.
    event : array-like, shape (n,)
        1 or True where the event happened, 0 or False where censored.
    risk : array-like, shape (n,)
        Predicted risk, higher for an earlier event (a hazard ratio or linear predictor, not a survival
        probability).
    tied_tol : float, default 1e-8
        Risks this close are tied.

    Returns
    -------
    float
        The C-index in [0, 1] (0.5: no better than chance); NaN when no pair is comparable (no event, one
        record, or only events tied in time) or a risk is not a number (a model that was never trained).

    Raises
    ------
    ValueError
        A time that is negative or not finite, an event that is not 0/1, or lengths that differ.
    """
    t, e = _outcome(time, event)
    r = _scores(risk, "risk", len(t), "time")
    tol = _tolerance(tied_tol)
    if not np.isfinite(r).all():
        return float("nan")
    return _concordance(t, e, r, np.ones(len(t)), tol)


def uno_c(time: object, event: object, risk: object, train_time: object, train_event: object,
          tau: float | None = None, *, tied_tol: float = TIED_RISK_TOL) -> float:
    """Uno's C-index: Harrell's pairs weighted by 1 / G(T_i)^2, so that it does not depend on the censoring.

    Harrell's C leans towards early pairs, the ones censoring leaves; weighting each comparable pair by the
    inverse square of the censoring survival at the earlier event time (G estimated by Kaplan-Meier on the
    training records) makes it estimate the concordance of the population up to `tau` (Uno et al. 2011),
    as sksurv's `concordance_index_ipcw`. Pairs, time ties and risk ties as in `harrell_c`.

    Parameters
    ----------
    time, event, risk : array-like, shape (n,)
        The test records, as in `harrell_c`.
    train_time, train_event : array-like, shape (n_train,)
        The training records, on which the censoring distribution is estimated.
    tau : float, optional
        Truncation time: only events before `tau` are weighted (pairs whose earlier event is at or after it
        count for nothing). Events are weighted only where G is known and positive, so with training
        follow-up shorter than the test's, choose `tau` inside the training follow-up. None: no truncation.
    tied_tol : float, default 1e-8
        Risks this close are tied.

    Returns
    -------
    float
        The C-index; NaN when no pair is comparable (no test event before `tau`) or a risk is not a number.

    Raises
    ------
    ValueError
        Bad times, events or lengths (test or training); a `tau` that is not a number > 0; a test event
        before `tau` where the training censoring distribution is unknown or 0.
    """
    t, e = _outcome(time, event)
    r = _scores(risk, "risk", len(t), "time")
    tol = _tolerance(tied_tol)
    censoring = _censoring(train_time, train_event)
    weighted = e.copy()
    if tau is not None:
        limit = np.asarray(tau, dtype=np.float64)
        if limit.ndim != 0 or not (np.isfinite(limit) and limit > 0):
            raise ValueError("tau must be one finite number > 0 (or None for no truncation)")
        weighted &= t < limit
    g, usable = censoring.usable(t)
    bad = weighted & ~usable
    if bad.any():
        raise ValueError(f"time: {int(bad.sum())} test events {_at(bad)} {_BEYOND}; pass a tau no later than the "
                         "end of the training follow-up, or train_time/train_event that follow patients longer")
    if not np.isfinite(r).all():
        return float("nan")
    weight = np.zeros(len(t))
    weight[weighted] = 1.0 / np.square(g[weighted])
    return _concordance(t, e, r, weight, tol)


# ---- Time-dependent AUROC ------------------------------------------------------------------------------------


def _weighted_auc(risk: np.ndarray, case_weight: np.ndarray, control: np.ndarray, tol: float) -> float:
    """AUROC of weighted cases against unweighted controls, tied risks counting 1/2.

    As sksurv: risks sorted in decreasing order, and a run of neighbours each within `tol` of the one before
    is one threshold (so two risks up to several `tol` apart can fall in one run); the trapezoid over those
    thresholds is, per control, the case weight above its run plus half of the case weight in it."""
    order = np.argsort(-risk, kind="stable")
    ranked = risk[order]
    run = np.cumsum(np.r_[True, np.abs(np.diff(ranked)) > tol]) - 1
    cases = np.bincount(run, weights=case_weight[order])
    controls = np.bincount(run, weights=control[order].astype(np.float64))
    total_cases, total_controls = cases.sum(), controls.sum()
    if total_cases == 0 or total_controls == 0:
        return float("nan")
    above = np.cumsum(cases) - cases
    return float(np.sum(controls * (above + 0.5 * cases)) / (total_cases * total_controls))


def cumulative_dynamic_auc(time: object, event: object, risk_at_horizons: object, horizons: object,
                           train_time: object, train_event: object, *, tied_tol: float = TIED_RISK_TOL
                           ) -> tuple[np.ndarray, float]:
    """Time-dependent AUROC at each horizon t: cumulative cases (event at or before t) against dynamic
    controls (still followed after t), and its mean over the horizons.

    A censored record before t is neither case nor control: its status at t is unknown. Each case is
    weighted by 1 / G(T_i), G the censoring survival estimated on the training records, to stand for the
    cases that censoring hid (Uno et al. 2007; Hung & Chiang 2010), as sksurv's `cumulative_dynamic_auc`.

    The mean is sksurv's, which is not quite its docstring's formula: AUC(t_k) is weighted by
    S(t_{k-1}) - S(t_k), with S the Kaplan-Meier curve of the *test* records and S(t_0) = 1, and the sum
    divided by 1 - S(t_last). So the first horizon carries all the deaths before it, and horizons with no
    death before them carry none. With one horizon the mean is that horizon's AUROC.

    Parameters
    ----------
    time, event : array-like, shape (n,)
        The test records (times finite and >= 0; events 0/1).
    risk_at_horizons : array-like, shape (n,) or (n, k)
        Predicted risk, higher for an earlier event: one per record (the same at every horizon) or one
        column per horizon (a time-dependent risk such as a cumulative hazard).
    horizons : array-like, shape (k,)
        Strictly increasing, each at or after the earliest test time and before the latest.
    train_time, train_event : array-like, shape (n_train,)
        The training records, on which the censoring distribution is estimated.
    tied_tol : float, default 1e-8
        Risks this close are tied.

    Returns
    -------
    auc : ndarray, shape (k,)
        The AUROC at each horizon; NaN at a horizon without a case (no test event by then).
    mean_auc : float
        The weighted mean; NaN when an AUROC is NaN or no test event falls by the last horizon, and all NaN
        when a risk is not a number.

    Raises
    ------
    ValueError
        Bad times, events, lengths or shapes; horizons unsorted or outside the test follow-up; a test event by
        the last horizon where the training censoring distribution is unknown or 0.
    """
    t, e = _outcome(time, event)
    tol = _tolerance(tied_tol)
    censoring = _censoring(train_time, train_event)
    h = _horizons(horizons, t)
    risk = _per_horizon(risk_at_horizons, "risk_at_horizons", len(t), len(h), one_value_ok=True)
    maybe_case = e & (t <= h[-1])  # the only records whose weight is used (sksurv also asks it of later ones)
    g, usable = censoring.usable(t)
    bad = maybe_case & ~usable
    if bad.any():
        raise ValueError(f"time: {int(bad.sum())} test events by the last horizon {_at(bad)} {_BEYOND}; end the "
                         "horizons earlier, or pass train_time/train_event that follow patients longer")
    if not np.isfinite(risk).all():
        return np.full(len(h), np.nan), float("nan")
    weight = np.zeros(len(t))
    weight[maybe_case] = 1.0 / g[maybe_case]
    auc = np.array([_weighted_auc(risk[:, k], weight * (t <= horizon), t > horizon, tol)
                    for k, horizon in enumerate(h)])
    return auc, _mean_auc(auc, t, e, h)


def _mean_auc(auc: np.ndarray, time: np.ndarray, event: np.ndarray, horizons: np.ndarray) -> float:
    if len(auc) == 1:
        return float(auc[0])
    survival = _step(*_product_limit(time, event, np.zeros_like(event)), horizons)
    deaths = -np.diff(np.r_[1.0, survival])
    died = 1.0 - survival[-1]
    return float(np.sum(auc * deaths) / died) if died > 0 else float("nan")


# ---- Brier score ---------------------------------------------------------------------------------------------


def brier_scores(time: object, event: object, survival_at_horizons: object, horizons: object,
                 train_time: object, train_event: object) -> np.ndarray:
    """IPCW Brier score at each horizon t: the mean squared error of the predicted P(T > t).

    A record with the event by t should have been predicted 0, one still followed after t should have been
    predicted 1; a record censored before t has no known status and counts 0, and the others are weighted to
    make up for it: 1 / G(T_i) for an event by t, 1 / G(t) for a record followed past t (Graf et al. 1999),
    G the censoring survival estimated on the training records, as sksurv's `brier_score`. The mean is over
    all n test records.

    Parameters
    ----------
    time, event : array-like, shape (n,)
        The test records (times finite and >= 0; events 0/1).
    survival_at_horizons : array-like, shape (n, k), or (n,) with one horizon
        Predicted survival probability P(T > horizons[j]) of each record, in [0, 1] (not a risk score).
    horizons : array-like, shape (k,)
        Strictly increasing, each at or after the earliest test time and before the latest.
    train_time, train_event : array-like, shape (n_train,)
        The training records, on which the censoring distribution is estimated.

    Returns
    -------
    ndarray, shape (k,)
        The Brier score at each horizon (0 is perfect; 0.25 is a constant 0.5 with no censoring); all NaN
        when a prediction is not a number.

    Raises
    ------
    ValueError
        Bad times, events, lengths or shapes; predictions outside [0, 1]; horizons unsorted, outside the test
        follow-up, or where the training censoring distribution is unknown or 0 (where sksurv would drop the
        terms whose weight is 1/0 and return a number that is too low).
    """
    t, e = _outcome(time, event)
    h = _horizons(horizons, t)
    survival = _per_horizon(survival_at_horizons, "survival_at_horizons", len(t), len(h), one_value_ok=len(h) == 1)
    censoring = _censoring(train_time, train_event)
    g_horizon, usable = censoring.usable(h)
    if not usable.all():
        raise ValueError(f"horizons: {int((~usable).sum())} of {len(h)} {_at(~usable)} {_BEYOND}; end the "
                         "horizons earlier, or pass train_time/train_event that follow patients longer")
    finite = np.isfinite(survival)
    bad = finite & ((survival < 0) | (survival > 1))
    if bad.any():
        raise ValueError(f"survival_at_horizons: {int(bad.sum())} entries lie outside [0, 1], {_at(bad)} "
                         "(record, horizon); these must be survival probabilities P(T > horizon), not risks")
    if not finite.all():
        return np.full(len(h), np.nan)
    case = e[:, None] & (t[:, None] <= h[None, :])
    control = t[:, None] > h[None, :]
    # every case time is at or before a usable horizon, so its G is positive (G only falls)
    g_case = np.where(case.any(axis=1), censoring.usable(t)[0], 1.0)
    terms = np.where(case, np.square(survival) / g_case[:, None], 0.0)
    terms += np.where(control, np.square(1.0 - survival) / g_horizon[None, :], 0.0)
    return terms.mean(axis=0)


def integrated_brier_score(time: object, event: object, survival_at_horizons: object, horizons: object,
                           train_time: object, train_event: object) -> float:
    """The Brier score integrated over the horizons and divided by their span: one number for the whole curve.

    The trapezoid rule over `horizons` (as sksurv's `integrated_brier_score`), so a dense grid of horizons
    approximates the integral; the span is horizons[-1] - horizons[0].

    Parameters
    ----------
    time, event, survival_at_horizons, horizons, train_time, train_event
        As `brier_scores`, with at least two horizons.

    Returns
    -------
    float
        The integrated Brier score; NaN when a prediction is not a number.

    Raises
    ------
    ValueError
        As `brier_scores`, and fewer than two horizons.
    """
    if np.atleast_1d(np.asarray(horizons)).size < 2:
        raise ValueError("horizons: an integral needs at least 2 horizons; for one, use brier_scores")
    scores = brier_scores(time, event, survival_at_horizons, horizons, train_time, train_event)
    h = np.asarray(horizons, dtype=np.float64)
    area = np.sum(np.diff(h) * (scores[1:] + scores[:-1]) / 2.0)  # np.trapezoid is NumPy >= 2 only
    return float(area / (h[-1] - h[0]))


# ---- Kaplan-Meier by predicted risk group ------------------------------------------------------------------


@dataclass(frozen=True)
class RiskGroup:
    """One predicted-risk group's Kaplan-Meier curve: records `records`, of which `events` had the event."""

    label: str
    records: int
    events: int
    times: np.ndarray
    survival: np.ndarray


def risk_group_curves(time: object, event: object, risk: object, groups: int = 3) -> list[RiskGroup]:
    """Kaplan-Meier curves of the records split into `groups` equal-sized groups by predicted risk, lowest
    first: a model that separates risk well draws curves far apart, in order. Ties in risk stay in one group
    (the cut points are quantiles of the risks; a group can then be larger or empty, and an empty group is
    left out).

    Parameters
    ----------
    time, event : array-like, shape (n,)
        As `kaplan_meier`.
    risk : array-like, shape (n,)
        The predicted risk of each record (higher: an earlier event expected); finite.
    groups : int
        How many groups, 2 or more (3: tertiles).

    Returns
    -------
    list of RiskGroup
        Labelled "lowest", ..., "highest" (with `groups` = 3: "low", "middle", "high").

    Raises
    ------
    ValueError
        As `kaplan_meier`; a risk that is not finite; fewer than 2 groups or more groups than records.
    """
    t, e = _outcome(time, event)
    r = _scores(risk, "risk", len(t), "record")
    bad = ~np.isfinite(r)
    if bad.any():
        raise ValueError(f"risk: {int(bad.sum())} entries are not finite numbers, {_at(bad)}")
    if int(groups) != groups or not 2 <= groups <= max(2, len(t)):
        raise ValueError(f"groups must be a whole number from 2 to the number of records ({len(t)}), got {groups}")
    cuts = np.quantile(r, np.linspace(0.0, 1.0, int(groups) + 1)[1:-1])
    member = np.searchsorted(cuts, r, side="right")  # group 0 .. groups-1; equal risks share a group
    names = ["low", "middle", "high"] if groups == 3 else [f"group {i + 1} of {groups}" for i in range(groups)]
    out = []
    for g in range(int(groups)):
        rows = member == g
        if rows.any():
            times, survival = kaplan_meier(t[rows], e[rows])
            out.append(RiskGroup(names[g], int(rows.sum()), int(e[rows].sum()), times, survival))
    return out
