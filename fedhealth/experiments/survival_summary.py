"""The study summary of a time-to-event study: `build_summary`'s layout, with Harrell's C-index at its head.

Downstream code (terminal, report, sweeps) reads `summary[...][summary["headline"]]`, so a time-to-event
summary keeps every key of the binary one (`fedhealth.experiments.summary`) and puts its own figures where the
binary one has AUROC, Brier score and accuracy:

    summary["outcome"] == "time_to_event", summary["headline"] == "c_index"
    summary["time"]                     {"unit", "intervals", "horizons"}: the study's fixed follow-up grid
    summary["hospitals"][i]["c_index" | "uno_c" | "ibs" | "td_auroc"][model]
        Harrell's C, Uno's C, integrated Brier score (lower is better), mean time-dependent AUROC
        (`fedhealth.metrics.survival_model.survival_figures`), on the hospital's test records with the censoring
        weights from its own training records; "best_possible" beside c_index for generated data (Harrell's C
        of the generator's true risk), absent for real records
    summary["hospitals"][i]["td_auroc_at"][model][horizon]   the AUROC at each horizon, keyed by the horizon as
        written in the study (`horizon_key`: "180", "182.5")
    summary["hospitals"][i]["events_test"], ["prevalence"] (the share of the hospital's records with the event)
    summary["hospitals"][i]["c_index_ci" | "uno_c_ci" | "ibs_ci" | "td_auroc_ci"][model]   [low, high]
    summary["hospitals"][i]["gain"]   federated minus local-only C-index on the hospital's test records:
        {"estimate", "ci", "distinguishable_from_zero"}, from a paired bootstrap (the same resampled records
        scored for both models); absent without both models
    summary["hospitals"][i]["undefined"]   {"c_index": reason} when its test split holds no event (no C-index,
        Uno's C or time-dependent AUROC, and no gain), {"local_only": reason} when its training split holds
        none (no local-only model); absent when everything is defined
    summary["overall"]["c_index" | "uno_c" | "ibs" | "td_auroc"][model]   on all hospitals' test records
        together, censoring weights from all hospitals' training records together; and their "_ci"
    summary["overall"]["mean_hospital_c_index"][model] (+ "_ci": the hospitals' bootstrap standard errors
        combined as independent), ["gain"], ["mean_hospital_gain"], ["n_test"], ["events_test"]
    summary["overall"]["risk_groups"]   Kaplan-Meier curves of the federated model's predicted-risk tertiles on
        all test records: [{"label", "records", "events", "times", "survival"}], lowest risk first (each curve
        is 1 before its first time); [] without a federated model
    summary["calibration"]              {} (no reliability bands for survival curves yet)
    summary["equity"]                   `equity_summary(hospitals, metric="c_index")`

A figure that is undefined is null (JSON has no NaN), and the summary dumps with `allow_nan=False`.

**Intervals.** Every interval is a stratified bootstrap of the test records (the records with the event and
the censored ones resampled separately, so each resample keeps the event count), percentile, 95 %, seeded from
(study seed, hospital index, model position) as the binary summary's bootstrap intervals are. The censoring
weights and the horizons stay those of the estimate: the interval describes the finite test set only.

A resample is computed as multiplicities (how often each record was drawn), not as copies: every figure here
is a weighted sum over records or pairs of records, so one resample's figure is the same sums with weights,
and all resamples of a chunk are computed at once. Harrell's C, which compares pairs, is O(n^2) per resample
done naively; here it is counted by divide and conquer over the comparability order (`_ConcordancePlan`),
O(n log n) per resample and exactly the same pairs, ties included, as `fedhealth.metrics.survival.harrell_c`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedhealth.data.hospitals import HospitalSplit
from fedhealth.experiments.references import Predictions
from fedhealth.metrics.equity import equity_summary
from fedhealth.metrics.intervals import LEVEL, Interval, mean_auroc_interval
from fedhealth.metrics.survival import TIED_RISK_TOL, _censoring, harrell_c, risk_group_curves
from fedhealth.metrics.survival_model import SurvivalFigures, risk_score, survival_at, survival_figures, usable_horizons
from fedhealth.model.outcomes import edges as study_edges
from fedhealth.model.outcomes import horizons as study_horizons
from fedhealth.study.config import StudyConfig

# Bootstrap resamples per figure. 500 keeps the Monte Carlo error of a 2.5 % percentile small (its standard
# error is about 0.7 percentile points) and a study of 8 hospitals with 5,000 test records summarises in about
# two seconds on two cores; the binary summary's 1,000 would double that for little.
RESAMPLES = 500
# A resample whose figure is undefined (a horizon with no case left in it) is left out of the percentiles;
# when more than this share of resamples is left out the interval is undefined rather than conditional.
MIN_DEFINED_SHARE = 0.9
_CELLS_AT_ONCE = 4_000_000  # resample weights held at once (resamples x records), bounding memory on big test sets
HEADLINE = "c_index"
FIGURES = ("c_index", "uno_c", "ibs", "td_auroc")


# ---- Resamples as multiplicities ---------------------------------------------------------------------------


def _weight_chunks(event: np.ndarray, seed: int | Sequence[int], resamples: int) -> Iterator[np.ndarray]:
    """Stratified bootstrap resamples of the records, as multiplicities: arrays (k, n), row r telling how often
    each record was drawn in resample r. Censored records and records with the event are drawn separately, each
    as many times as there are of them, so every resample keeps the test set's event count."""
    e = np.asarray(event).astype(bool)
    n = len(e)
    rng = np.random.default_rng(seed)
    strata = [idx for idx in (np.flatnonzero(~e), np.flatnonzero(e)) if len(idx)]
    chunk = max(1, min(resamples, _CELLS_AT_ONCE // max(n, 1)))
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        rows = np.concatenate([idx[rng.integers(0, len(idx), size=(k, len(idx)))] for idx in strata], axis=1)
        flat = (np.arange(k)[:, None] * n + rows).ravel()
        yield np.bincount(flat, minlength=k * n).reshape(k, n).astype(np.float64)


# ---- Harrell's and Uno's C, for many weightings at once -----------------------------------------------------


@dataclass(frozen=True)
class _Level:
    """One level of the divide and conquer: the cases on the lower side of a split of the comparability code
    against the records on its upper side within the same block (positions into the upper side's cumulative
    weights, sorted by block and then by risk)."""

    upper: np.ndarray  # records on the upper side, sorted by (block, risk position)
    cases: np.ndarray  # cases on the lower side
    base: np.ndarray  # per case: where its block starts among `upper`
    below: np.ndarray  # ... where records with a risk lower by more than the tolerance end
    tied: np.ndarray  # ... where records with a risk within the tolerance end
    end: np.ndarray  # ... where its block ends


class _ConcordancePlan:
    """Harrell's C (and Uno's, with case weights) of one risk score on one set of records, for any number of
    record weightings (bootstrap multiplicities) at once, in O(n log n) per weighting.

    Pair (i, j) is comparable when i had the event and j was followed past T_i (T_j > T_i, or j censored at
    T_i): exactly when code_j > code_i with code = 2 * rank(T) + (1 if censored else 0), two events at the same
    time sharing a code. Every pair with code_i < code_j is counted once, at the highest bit where the two codes
    differ: there i lies in the lower and j in the upper half of the same block. Within a block's upper half,
    sorted by risk, the records a case outranks (risk lower by more than `tol`) and those tied with it (within
    `tol`) are two prefix sums: the same credit as `fedhealth.metrics.survival._concordance`, pair by pair."""

    def __init__(self, time: np.ndarray, event: np.ndarray, risk: np.ndarray, tol: float = TIED_RISK_TOL) -> None:
        t = np.asarray(time, dtype=np.float64)
        e = np.asarray(event).astype(bool)
        r = np.asarray(risk, dtype=np.float64)
        self.n = n = len(t)
        _, rank = np.unique(t, return_inverse=True)
        code = 2 * rank.astype(np.int64) + (~e).astype(np.int64)
        order = np.argsort(r, kind="stable")
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        ranked = r[order]
        lower = np.searchsorted(ranked, r - tol, side="left")  # records at positions below: outranked by > tol
        upper_tie = np.searchsorted(ranked, r + tol, side="right")  # ... below this and not below `lower`: tied
        cases = np.flatnonzero(e)
        self.levels: list[_Level] = []
        bits = int(code.max()).bit_length() if n else 0
        for bit in range(bits):
            side = (code >> bit) & 1
            block = code >> (bit + 1)
            upper = np.flatnonzero(side == 1)
            here = cases[side[cases] == 0]
            if len(upper) == 0 or len(here) == 0:
                continue
            key = block[upper] * n + position[upper]
            sort = np.argsort(key, kind="stable")
            key = key[sort]
            start = block[here] * n
            self.levels.append(_Level(
                upper=upper[sort], cases=here,
                base=np.searchsorted(key, start, side="left"),
                below=np.searchsorted(key, start + lower[here], side="left"),
                tied=np.searchsorted(key, start + upper_tie[here], side="left"),
                end=np.searchsorted(key, start + n, side="left")))

    def concordance(self, weights: np.ndarray, case_weights: np.ndarray) -> np.ndarray:
        """C per weighting and per kind of case weight: `weights` (k, n) record multiplicities, `case_weights`
        (n, c) a weight for each record as the earlier event of a pair (1 for Harrell's C, 1 / G(T_i)^2 before
        tau for Uno's). Returns (k, c); NaN where no pair is comparable."""
        w = np.asarray(weights, dtype=np.float64)
        a = np.asarray(case_weights, dtype=np.float64)
        numerator = np.zeros((w.shape[0], a.shape[1]))
        denominator = np.zeros_like(numerator)
        for level in self.levels:
            cum = np.zeros((w.shape[0], len(level.upper) + 1))
            np.cumsum(w[:, level.upper], axis=1, out=cum[:, 1:])
            outranked = cum[:, level.below] - cum[:, level.base]
            tied = cum[:, level.tied] - cum[:, level.below]
            followed = cum[:, level.end] - cum[:, level.base]
            own = w[:, level.cases]
            numerator += ((outranked + 0.5 * tied) * own) @ a[level.cases]
            denominator += (followed * own) @ a[level.cases]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def fast_harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray, *,
                   tied_tol: float = TIED_RISK_TOL) -> float:
    """Harrell's C in O(n log n): the same figure as `fedhealth.metrics.survival.harrell_c`, for many records.

    Parameters
    ----------
    time, event, risk : array-like, shape (n,)
        As `harrell_c` (times finite and >= 0, events 0/1, risks higher for an earlier event); not checked
        here, so give what `harrell_c` accepts.
    tied_tol : float, default 1e-8
        Risks this close are tied (count 1/2).

    Returns
    -------
    float
        The C-index; NaN when no pair is comparable or a risk is not a number.
    """
    r = np.asarray(risk, dtype=np.float64)
    if len(r) == 0 or not np.isfinite(r).all():
        return float("nan")
    plan = _ConcordancePlan(time, event, r, tied_tol)
    return float(plan.concordance(np.ones((1, len(r))), np.ones((len(r), 1)))[0, 0])


# ---- The other figures, weighted -------------------------------------------------------------------------------


def _weighted_survival(time: np.ndarray, event: np.ndarray, weights: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The Kaplan-Meier curve of each weighting of the records (rows of `weights`) at `at`: (k, len(at)).
    The same product-limit rule as `fedhealth.metrics.survival.kaplan_meier` (at risk: time >= t)."""
    order = np.argsort(time, kind="stable")
    distinct, starts = np.unique(time[order], return_index=True)
    w = weights[:, order]
    died = np.add.reduceat(w * event[order], starts, axis=1)
    seen = np.add.reduceat(w, starts, axis=1)
    at_risk = w.sum(axis=1, keepdims=True) - (np.cumsum(seen, axis=1) - seen)
    hazard = np.divide(died, at_risk, out=np.zeros_like(died), where=died > 0)
    curve = np.cumprod(1.0 - hazard, axis=1)
    index = np.searchsorted(distinct, at, side="right") - 1
    return np.where(index >= 0, curve[:, np.maximum(index, 0)], 1.0)


@dataclass(frozen=True)
class _Auroc:
    """The cumulative/dynamic AUROC at one horizon, prepared for weightings: risks sorted into runs of ties
    (as `fedhealth.metrics.survival._weighted_auc`), each record's case weight (1 / G(T_i) for an event by the
    horizon, else 0) and whether it is a control (followed past the horizon)."""

    order: np.ndarray
    starts: np.ndarray
    case: np.ndarray
    control: np.ndarray

    @classmethod
    def prepare(cls, risk: np.ndarray, case: np.ndarray, control: np.ndarray, tol: float) -> _Auroc:
        order = np.argsort(-risk, kind="stable")
        ranked = risk[order]
        starts = np.flatnonzero(np.r_[True, np.abs(np.diff(ranked)) > tol])
        return cls(order, starts, case[order], control[order].astype(np.float64))

    def rows(self, weights: np.ndarray) -> np.ndarray:
        w = weights[:, self.order]
        cases = np.add.reduceat(w * self.case, self.starts, axis=1)
        controls = np.add.reduceat(w * self.control, self.starts, axis=1)
        total = cases.sum(axis=1) * controls.sum(axis=1)
        above = np.cumsum(cases, axis=1) - cases
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, np.sum(controls * (above + 0.5 * cases), axis=1) / np.where(total > 0, total, 1),
                            np.nan)


class _Scored:
    """One model's predictions on one test set, with everything its resamples share: the concordance plan,
    Uno's case weights, the AUROC at each horizon with a case and the Brier terms. Mirrors `survival_figures`
    decision by decision (which horizons, which figures are undefined), so that at weight 1 everywhere it
    gives the same figures; the tests hold it to that."""

    def __init__(self, time: np.ndarray, event: np.ndarray, curves: np.ndarray, edges: np.ndarray,
                 horizons: np.ndarray, train_time: np.ndarray, train_event: np.ndarray,
                 figures: SurvivalFigures) -> None:
        self.time, self.event, self.n = time, event.astype(bool), len(time)
        self.figures = figures
        risk = risk_score(curves, edges, float(horizons[-1]))
        e = self.event
        self.plan = _ConcordancePlan(time, e, risk) if np.isfinite(figures.c_index) else None
        censoring = _censoring(train_time, train_event)
        usable = usable_horizons(time, horizons, train_time, train_event)
        case_weights = [np.ones(self.n)]
        self.uno = np.isfinite(figures.uno_c)
        if self.uno:  # defined, so every event before tau has a usable G (else survival_figures gave NaN)
            g, _ = censoring.usable(time)
            weighted = e & (time < float(usable[-1]))
            case_weights.append(np.where(weighted, 1.0 / np.square(np.where(weighted, g, 1.0)), 0.0))
        self.case_weights = np.stack(case_weights, axis=1)
        self.aurocs: list[_Auroc] = []
        self.with_case = np.array([])
        if np.isfinite(figures.td_auroc):
            self.with_case = np.array([x for x in usable if (e & (time <= x)).any()])
            risks = 1.0 - survival_at(curves, edges, self.with_case)
            g, _ = censoring.usable(time)
            for k, x in enumerate(self.with_case):
                case = e & (time <= x)
                self.aurocs.append(_Auroc.prepare(risks[:, k], np.where(case, 1.0 / np.where(case, g, 1.0), 0.0),
                                                  time > x, TIED_RISK_TOL))
        self.brier_terms: np.ndarray | None = None
        self.ibs_horizons = usable
        if np.isfinite(figures.ibs):
            s = survival_at(curves, edges, usable)
            g_h, _ = censoring.usable(usable)
            case = e[:, None] & (time[:, None] <= usable[None, :])
            g_case = np.where(case.any(axis=1), censoring.usable(time)[0], 1.0)
            terms = np.where(case, np.square(s) / np.where(case, g_case[:, None], 1.0), 0.0)
            terms += np.where(time[:, None] > usable[None, :], np.square(1.0 - s) / g_h[None, :], 0.0)
            self.brier_terms = terms

    def rows(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every figure of each weighting (rows of `weights`); NaN where the figure is undefined."""
        k = weights.shape[0]
        nan = np.full(k, np.nan)
        out = {figure: nan for figure in FIGURES}
        if self.plan is not None:
            c = self.plan.concordance(weights, self.case_weights)
            out["c_index"] = c[:, 0]
            if self.uno:
                out["uno_c"] = c[:, 1]
        if self.aurocs:
            auc = np.stack([a.rows(weights) for a in self.aurocs], axis=1)
            if len(self.aurocs) == 1:
                out["td_auroc"] = auc[:, 0]
            else:  # sksurv's mean: weighted by the test records' Kaplan-Meier deaths before each horizon
                s = _weighted_survival(self.time, self.event.astype(np.float64), weights, self.with_case)
                deaths = -np.diff(np.concatenate([np.ones((k, 1)), s], axis=1), axis=1)
                died = 1.0 - s[:, -1]
                with np.errstate(invalid="ignore", divide="ignore"):
                    out["td_auroc"] = np.where(died > 0, np.sum(auc * deaths, axis=1) / np.where(died > 0, died, 1),
                                               np.nan)
        if self.brier_terms is not None:
            scores = weights @ self.brier_terms / self.n
            h = self.ibs_horizons
            out["ibs"] = np.sum(np.diff(h) * (scores[:, 1:] + scores[:, :-1]) / 2.0, axis=1) / (h[-1] - h[0])
        return out

    def c_index_rows(self, weights: np.ndarray) -> np.ndarray:
        if self.plan is None:
            return np.full(weights.shape[0], np.nan)
        return self.plan.concordance(weights, self.case_weights[:, :1])[:, 0]


# ---- Intervals ---------------------------------------------------------------------------------------------


def _gain(interval: Interval) -> dict[str, Any]:
    """A gain as summary.json writes it, exactly as `fedhealth.experiments.summary` does (not imported from it:
    that module hands time-to-event studies to this one). An interval of no width says nothing about noise:
    never "beyond" it."""
    return {"estimate": interval.estimate if interval.defined else None, "ci": interval.as_list(),
            "distinguishable_from_zero": interval.defined and interval.high > interval.low and not interval.covers_zero}


def _undefined(reason: str) -> Interval:
    nan = float("nan")
    return Interval(nan, nan, nan, reason)


def _percentile(estimate: float, values: np.ndarray, level: float = LEVEL) -> Interval:
    """The percentile interval of the resamples' `values` around `estimate`, with the bootstrap standard
    deviation as `se` (for means over hospitals). Widened to hold the estimate where it falls outside (only
    with a very skewed bootstrap distribution on a few events): a reader takes an interval that misses its own
    figure for an error."""
    if not np.isfinite(estimate):
        return _undefined("undefined: the figure itself is undefined")
    v = values[np.isfinite(values)]
    if len(v) < max(2, MIN_DEFINED_SHARE * len(values)):
        return _undefined(f"undefined: only {len(v)} of {len(values)} resamples give the figure (too few events "
                          "before a horizon)")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(v, [alpha, 1.0 - alpha])
    return Interval(float(estimate), float(min(low, estimate)), float(max(high, estimate)),
                    "stratified bootstrap, percentile", float(np.std(v, ddof=1)))


def _intervals(scored: _Scored, seed: int | Sequence[int], paired: _Scored | None = None,
               resamples: int = RESAMPLES) -> tuple[dict[str, Interval], Interval | None]:
    """Every figure's interval for one model on one test set, and where `paired` is given the interval of
    C(scored) - C(paired) on the same resamples (the gain)."""
    parts: dict[str, list[np.ndarray]] = {figure: [] for figure in FIGURES}
    gains: list[np.ndarray] = []
    for weights in _weight_chunks(scored.event, seed, resamples):
        for figure, values in scored.rows(weights).items():
            parts[figure].append(values)
        if paired is not None:
            gains.append(parts["c_index"][-1] - paired.c_index_rows(weights))
    values = {figure: np.concatenate(v) for figure, v in parts.items()}
    figures = scored.figures
    out = {figure: _percentile(getattr(figures, figure), values[figure]) for figure in FIGURES}
    gain = None
    if paired is not None:
        gain = _percentile(figures.c_index - paired.figures.c_index, np.concatenate(gains))
    return out, gain


def c_index_interval(time: np.ndarray, event: np.ndarray, risk: np.ndarray, seed: int | Sequence[int],
                     resamples: int = RESAMPLES, level: float = LEVEL) -> Interval:
    """Harrell's C of `risk` with its stratified bootstrap percentile interval (the summary's method).

    Parameters
    ----------
    time, event, risk : array-like, shape (n,)
        Test records and a risk score, as `fedhealth.metrics.survival.harrell_c`.
    seed : int or sequence of int
        Seeds the resamples: the same seed, the same interval.
    resamples : int
        Bootstrap resamples.
    level : float
        Coverage of the interval.

    Returns
    -------
    Interval
        All NaN (`method` says why) when the C-index is undefined (no event).
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    r = np.asarray(risk, dtype=np.float64)
    estimate = harrell_c(t, e, r)
    if not np.isfinite(estimate):
        return _undefined("undefined: no comparable pair (no event in the test records)")
    plan = _ConcordancePlan(t, e, r)
    ones = np.ones((len(t), 1))
    values = np.concatenate([plan.concordance(w, ones)[:, 0] for w in _weight_chunks(e, seed, resamples)])
    return _percentile(estimate, values, level)


# ---- The summary ---------------------------------------------------------------------------------------------


def _num(x: float | None) -> float | None:
    """A figure for summary.json: None where it is undefined (JSON has no NaN)."""
    return float(x) if x is not None and np.isfinite(x) else None


def horizon_key(horizon: float) -> str:
    """A horizon as a JSON key, as the study writes it: "180" for 180 or 180.0, "182.5" for 182.5."""
    h = float(horizon)
    return str(int(h)) if h.is_integer() else repr(h)


def undefined_reasons(split: HospitalSplit, local_only: bool, cox: bool = False) -> dict[str, str]:
    """Why some of a time-to-event hospital's figures are undefined (null in summary.json), by what they
    concern: counts only, never a record's values. `cox`: the study trains a Cox model, whose survival curves
    at a site need an event among the site's training records (its baseline hazard)."""
    out = {}
    assert split.event_test is not None and split.event_train is not None
    if not np.any(split.event_test == 1):
        out["c_index"] = (f"its test split holds no event among {len(split.event_test)} records: the C-index, "
                          "Uno's C and the time-dependent AUROC need one")
    if local_only and not np.any(split.event_train == 1):
        out["local_only"] = (f"its training split holds no event among {len(split.event_train)} records: no "
                             "local-only model can be trained without one")
    if cox and not np.any(split.event_train == 1):
        out["cox_baseline"] = (f"its training split holds no event among {len(split.event_train)} records: a Cox "
                               "model's baseline hazard at this site cannot be estimated, so the federated "
                               "model's curves and figures here are undefined")
    return out


def _figure_row(figures: SurvivalFigures, horizons: np.ndarray) -> tuple[dict[str, float | None], dict[str, Any]]:
    at = {horizon_key(h): _num(figures.td_auroc_at.get(float(h), float("nan"))) for h in horizons}
    return {figure: _num(getattr(figures, figure)) for figure in FIGURES}, at


def _risk_groups(time: np.ndarray, event: np.ndarray, curves: np.ndarray | None, edges: np.ndarray,
                 horizon: float) -> list[dict[str, Any]]:
    """The federated model's predicted-risk tertiles' Kaplan-Meier curves, for the report's figure."""
    if curves is None or len(time) < 3 or not np.isfinite(curves).all():
        return []
    risk = risk_score(curves, edges, horizon)
    return [{"label": g.label, "records": g.records, "events": g.events, "times": [float(x) for x in g.times],
             "survival": [float(x) for x in g.survival]} for g in risk_group_curves(time, event, risk, 3)]


def build_survival_summary(cfg: StudyConfig, splits: Sequence[HospitalSplit], preds: dict[str, Predictions],
                           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a time-to-event study (layout in the module docstring).

    Parameters
    ----------
    cfg : StudyConfig
        A time-to-event study (`cfg.time_spec` gives the intervals and horizons).
    splits : sequence of HospitalSplit
        Every hospital's split, with its follow-up times and event indicators.
    preds : dict of str to Predictions
        Keys among "federated", "federated_no_dp", "local_only", "pooled"; each hospital's test records'
        predicted survival at the end of every interval, (n_test, intervals), all NaN where the hospital has
        no such model.
    extra : dict, optional
        Keys added at the top level, last.

    Returns
    -------
    dict
        JSON-ready (no NaN: undefined figures are None).
    """
    spec = cfg.time_spec
    if spec is None:
        raise ValueError("build_survival_summary needs a time-to-event study; a binary study's summary is "
                         "fedhealth.experiments.summary.build_summary")
    edges, horizons = study_edges(cfg), study_horizons(cfg)
    known_risk = all(np.isfinite(s.test_true_risk).all() for s in splits)
    paired = "federated" in preds and "local_only" in preds
    hospitals: list[dict[str, Any]] = []
    hospital_c: dict[str, list[Interval]] = {key: [] for key in preds}
    hospital_gains: list[Interval] = []
    for s in splits:
        assert s.time_test is not None and s.event_test is not None
        assert s.time_train is not None and s.event_train is not None
        row: dict[str, Any] = {
            "name": s.hospital.name, "index": s.index, "tier": s.hospital.tier, "region": s.hospital.region,
            "records": s.hospital.records, "n_train": int(len(s.time_train)), "n_test": int(len(s.time_test)),
            "events_test": int(np.sum(s.event_test == 1)), "prevalence": s.prevalence,
            **{figure: {} for figure in FIGURES}, "td_auroc_at": {},
            **{f"{figure}_ci": {} for figure in FIGURES},
        }
        scored: dict[str, _Scored] = {}
        for key, pred in preds.items():
            curves = np.asarray(pred.by_hospital[s.index], dtype=np.float64)
            figures = survival_figures(s.time_test, s.event_test, curves, edges, horizons, s.time_train,
                                       s.event_train)
            scored[key] = _Scored(s.time_test, s.event_test, curves, edges, horizons, s.time_train,
                                  s.event_train, figures)
            values, row["td_auroc_at"][key] = _figure_row(figures, horizons)
            for figure, value in values.items():
                row[figure][key] = value
        for j, key in enumerate(preds):
            pair = scored["local_only"] if paired and key == "federated" else None
            intervals, gain = _intervals(scored[key], (cfg.seed, s.index, j), pair)
            for figure, interval in intervals.items():
                row[f"{figure}_ci"][key] = interval.as_list()
            hospital_c[key].append(intervals["c_index"])
            if gain is not None:
                hospital_gains.append(gain)
                row["gain"] = _gain(gain)
        if known_risk:
            row["c_index"]["best_possible"] = _num(s.bayes_auroc)
        undefined = undefined_reasons(s, local_only="local_only" in preds, cox=cfg.model.survival == "cox")
        if undefined:
            row["undefined"] = undefined
        hospitals.append(row)

    time_all = np.concatenate([s.time_test for s in splits])
    event_all = np.concatenate([s.event_test for s in splits])
    train_time = np.concatenate([s.time_train for s in splits])
    train_event = np.concatenate([s.event_train for s in splits])
    overall: dict[str, Any] = {**{figure: {} for figure in FIGURES}, "mean_hospital_c_index": {},
                               "td_auroc_at": {}, **{f"{figure}_ci": {} for figure in FIGURES},
                               "mean_hospital_c_index_ci": {}, "n_test": int(len(time_all)),
                               "events_test": int(np.sum(event_all == 1))}
    all_scored: dict[str, _Scored] = {}
    all_curves: dict[str, np.ndarray] = {}
    for key, pred in preds.items():
        curves = all_curves[key] = np.concatenate([np.asarray(pred.by_hospital[s.index], dtype=np.float64)
                                                   for s in splits])
        figures = survival_figures(time_all, event_all, curves, edges, horizons, train_time, train_event)
        all_scored[key] = _Scored(time_all, event_all, curves, edges, horizons, train_time, train_event, figures)
        values, overall["td_auroc_at"][key] = _figure_row(figures, horizons)
        for figure, value in values.items():
            overall[figure][key] = value
    for j, key in enumerate(preds):
        pair = all_scored["local_only"] if paired and key == "federated" else None
        intervals, gain = _intervals(all_scored[key], (cfg.seed, len(splits), j), pair)
        for figure, interval in intervals.items():
            overall[f"{figure}_ci"][key] = interval.as_list()
        overall["mean_hospital_c_index_ci"][key] = mean_auroc_interval(
            hospital_c[key], over=sum(h["c_index"][key] is not None for h in hospitals)).as_list()
        if gain is not None:
            overall["gain"] = _gain(gain)
    if paired:
        overall["mean_hospital_gain"] = _gain(mean_auroc_interval(hospital_gains, bounded=False))
    if known_risk:
        overall["c_index"]["best_possible"] = _num(fast_harrell_c(
            time_all, event_all, np.concatenate([s.test_true_risk for s in splits])))
    for key in [*preds, *(["best_possible"] if known_risk else [])]:
        values = np.array([np.nan if h["c_index"][key] is None else h["c_index"][key] for h in hospitals], dtype=float)
        overall["mean_hospital_c_index"][key] = float(np.nanmean(values)) if np.isfinite(values).any() else None
    overall["risk_groups"] = _risk_groups(time_all, event_all, all_curves.get("federated"), edges,
                                          float(horizons[-1]))
    return {"study": cfg.name, "seed": cfg.seed, "strategy": cfg.federation.strategy.name,
            "model": cfg.model.name, "survival_model": cfg.model.survival, "rounds": cfg.federation.rounds,
            "outcome": "time_to_event",
            "headline": HEADLINE,
            "time": {"unit": spec.unit, "intervals": [float(x) for x in edges],
                     "horizons": [float(x) for x in horizons]},
            "overall": overall, "hospitals": hospitals, "calibration": {},
            "equity": equity_summary(hospitals, metric=HEADLINE),
            "intervals": {"level": LEVEL, "resamples": RESAMPLES,
                          "c_index, uno_c, ibs, td_auroc": f"stratified bootstrap (records with the event and "
                          f"censored records resampled separately), {RESAMPLES} resamples, percentile, seeded from "
                          "the study seed; censoring weights and horizons fixed at the estimate's",
                          "gain": "paired stratified bootstrap: the same resampled records scored for the "
                                  "federated and the local-only model",
                          "mean_hospital_c_index_ci, mean_hospital_gain": "the hospitals' bootstrap standard "
                          "errors combined as independent, normal interval",
                          "covers": "the finite test sets only, not the training run: another seed "
                                    "trains another model"},
            **(extra or {})}
