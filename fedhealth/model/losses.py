"""The training loss of each outcome kind, written as a sum of one term per record.

Why a sum over records: DP-SGD's guarantee rests on bounding each record's influence on a step. Per-sample
clipping (Opacus's, and fedhealth's one-backward linear path in `fedhealth.privacy.dp`) clips the gradient
of each record's own term, which is that record's influence only if the batch loss is the sum (or mean) of
terms that each depend on one record. Every loss here is such a sum but one: Cox's partial likelihood
(`CoxPartialLikelihood`), whose risk sets hold many records, so that one record's presence changes the terms
of every event it was at risk for. It is offered only without record-level DP (the study config refuses it
with `privacy.mode = "record"`, and DP-SGD refuses it too, `couples_records`); hospital-level DP clips and
noises each hospital's whole update, which stays valid for it.

- `BinaryLoss`: binary cross-entropy on one logit per record (the binary outcome).
- `LogisticHazard`: a discrete-time survival model (Kvamme & Borgan 2021; Gensheimer & Narasimhan 2019). The
  follow-up is cut into intervals at fixed edges from the study schema; the model gives one logit per
  interval, the hazard h_j = sigmoid(logit_j) = P(event in interval j | alive at its start). A record's
  negative log-likelihood involves only its own logits: the intervals it survived, and the one it had its
  event in.
- `CoxPartialLikelihood`: Cox's proportional-hazards model (`model.survival = "cox"`), one output per record,
  the log relative risk eta(x); the negative Breslow partial log-likelihood with the risk sets formed within
  each batch (as DeepSurv trains, Katzman et al. 2018). Its survival curves need a baseline hazard, estimated
  from training records by Breslow's estimator (`breslow_log_cumulative_hazard`, `cox_survival_curve`).
- `MulticlassLoss`: cross-entropy on one logit per class (a multi-class outcome).
- `SquaredError`: squared error of one output against the standardised value (a continuous outcome: the
  value minus the schema's fixed centre, over its fixed scale), halved, so a record's term is its own.

Targets are float tensors: the label (n,) for `BinaryLoss`; (n, 2) = [interval index, event] for
`LogisticHazard`, from `interval_targets`; (n, 2) = [time, event] for `CoxPartialLikelihood`, from
`cox_targets`; the class index (n,) for `MulticlassLoss`; the standardised value (n,) for `SquaredError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from fedhealth.data.survival_targets import cox_targets, interval_targets  # noqa: F401  (the targets read here)


@dataclass(frozen=True)
class BinaryLoss:
    """Binary cross-entropy on one logit per record (`BCEWithLogitsLoss`)."""

    n_outputs: int = 1

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)

    def check_targets(self, target: np.ndarray) -> None:
        """Nothing to check beyond what the binary path has always accepted (labels in [0, 1])."""


@dataclass(frozen=True)
class LogisticHazard:
    """Negative log-likelihood of a discrete-time hazard model over `n_intervals` intervals.

    A record with target [k, e] survived intervals 0 .. k-1 and, in interval k, had the event (e = 1) or
    survived it (e = 0); k = -1 (censored before the middle of the first interval) contributes nothing. Its
    term is the sum over j <= k of the binary cross-entropy of logit j against 1[j == k and e == 1]: the
    likelihood prod_{j<k} (1 - h_j) * h_k^e * (1 - h_k)^(1-e). It involves that record's logits only."""

    n_intervals: int

    @property
    def n_outputs(self) -> int:
        return self.n_intervals

    def check_targets(self, target: np.ndarray) -> None:
        """Refuse targets this loss would read wrongly (an interval index outside -1 .. K-1, not a whole
        number, an event other than 0/1): once, before training, never per batch, so that a refusal can
        never depend on which records a DP-SGD step sampled. Counts only, never a value."""
        t = np.asarray(target, dtype=np.float64)
        if t.ndim != 2 or t.shape[1] != 2:
            raise ValueError(f"logistic hazard: targets must be (records, 2) = [interval, event], got {t.shape}")
        k, e = t[:, 0], t[:, 1]
        bad = ~np.isfinite(k) | (k != np.round(k)) | (k < -1) | (k >= self.n_intervals)
        if bad.any():
            raise ValueError(f"logistic hazard: {int(bad.sum())} target(s) name an interval outside -1 .. "
                             f"{self.n_intervals - 1} (built for another interval count?)")
        if not np.isin(e, (0.0, 1.0)).all():
            raise ValueError(f"logistic hazard: {int((~np.isin(e, (0.0, 1.0))).sum())} event indicator(s) are not "
                             "0 or 1")

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.n_intervals:
            raise ValueError(f"logistic hazard: expected logits of shape (records, {self.n_intervals}), "
                             f"got {tuple(logits.shape)}")
        k = target[:, 0].long()
        event = target[:, 1]
        j = torch.arange(self.n_intervals, device=logits.device)
        at_risk = (j[None, :] <= k[:, None]).to(logits.dtype)
        label = ((j[None, :] == k[:, None]) & (event[:, None] > 0.5)).to(logits.dtype)
        terms = F.binary_cross_entropy_with_logits(logits, label, reduction="none") * at_risk
        return _reduce(terms.sum(dim=1), reduction)


@dataclass(frozen=True)
class CoxPartialLikelihood:
    """Negative Breslow partial log-likelihood of a Cox model, over the records of the batch.

    The model's one output per record is its log relative risk eta_i. A record with target [t_i, e_i] that had
    the event (e_i = 1) contributes -(eta_i - log sum_{j: t_j >= t_i} exp(eta_j)): how much riskier it was than
    everyone still at risk when it happened, the batch's records with a time at or after t_i (Breslow's
    handling of tied times: every record tied with t_i is at risk, each tied event counts in full). A censored
    record contributes 0 of its own but sits in the risk sets of every earlier event. `reduction="none"` gives
    each record's own term, so per-record losses (the membership-inference audit, q-FedAvg's loss) stay
    defined; "mean" divides their sum by the batch's records, as the other losses do.

    Numerically stable: the risk sets' log sums are one `logcumsumexp` over the records sorted by descending
    time, read at the last record of each tie.

    Why not under DP-SGD: a record's presence changes the risk-set sums, and so the terms, of every event it
    was at risk for, so clipping its own term's gradient does not bound its influence (`couples_records`)."""

    n_outputs: int = 1
    couples_records: ClassVar[bool] = True

    def check_targets(self, target: np.ndarray) -> None:
        """Refuse targets this loss would read wrongly (not [time, event], a time not positive and finite, an
        event other than 0/1): once, before training. Counts only, never a value."""
        t = np.asarray(target, dtype=np.float64)
        if t.ndim != 2 or t.shape[1] != 2:
            raise ValueError(f"Cox partial likelihood: targets must be (records, 2) = [time, event], got {t.shape}")
        bad = ~np.isfinite(t[:, 0]) | (t[:, 0] <= 0)
        if bad.any():
            raise ValueError(f"Cox partial likelihood: {int(bad.sum())} time(s) are not positive finite numbers "
                             "(targets built as [interval, event] for the logistic hazard?)")
        if not np.isin(t[:, 1], (0.0, 1.0)).all():
            raise ValueError(f"Cox partial likelihood: {int((~np.isin(t[:, 1], (0.0, 1.0))).sum())} event "
                             "indicator(s) are not 0 or 1")

    def __call__(self, output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        eta = output.reshape(-1) if output.dim() == 2 and output.shape[1] == 1 else output
        if eta.dim() != 1 or target.dim() != 2 or target.shape != (len(eta), 2):
            raise ValueError(f"Cox partial likelihood: expected one output per record and targets (records, 2), "
                             f"got {tuple(output.shape)} and {tuple(target.shape)}")
        time, event = target[:, 0], target[:, 1]
        order = torch.argsort(time, descending=True, stable=True)
        eta_sorted, time_sorted = eta[order], time[order]
        log_cumulative = torch.logcumsumexp(eta_sorted, dim=0)
        # the last record (in this order) of each tie of times closes its risk set: everyone with a time >= t_i
        ascending = -time_sorted
        last_tie = torch.searchsorted(ascending, ascending, right=True) - 1
        terms = (log_cumulative[last_tie] - eta_sorted) * event[order].to(eta.dtype)
        return _reduce(terms[torch.argsort(order)], reduction)


def couples_records(loss: object) -> bool:
    """Whether a record's presence changes other records' terms of `loss` (a Cox partial likelihood): DP-SGD's
    per-sample clipping then bounds no record's influence, so `fedhealth.privacy.dp` refuses it."""
    return bool(getattr(loss, "couples_records", False))


def _reduce(per_record: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_record
    if reduction == "sum":
        return per_record.sum()
    if reduction == "mean":
        return per_record.mean()
    raise ValueError(f"reduction {reduction!r}: give 'mean', 'sum' or 'none'")


@dataclass(frozen=True)
class MulticlassLoss:
    """Cross-entropy of `n_classes` logits against the record's class index (a float target, read as long)."""

    n_classes: int

    @property
    def n_outputs(self) -> int:
        return self.n_classes

    def check_targets(self, target: np.ndarray) -> None:
        """Refuse a class index outside 0 .. K-1 or not whole, once before training (counts only)."""
        t = np.asarray(target, dtype=np.float64)
        bad = (t.ndim != 1) | ~np.isfinite(t) | (t != np.round(t)) | (t < 0) | (t >= self.n_classes)
        if np.any(bad):
            raise ValueError(f"multi-class loss: {int(np.sum(bad))} target(s) are not a class index 0 .. "
                             f"{self.n_classes - 1} (built for another class count?)")

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.n_classes:
            raise ValueError(f"multi-class loss: expected logits of shape (records, {self.n_classes}), "
                             f"got {tuple(logits.shape)}")
        return _reduce(F.cross_entropy(logits, target.long(), reduction="none"), reduction)


@dataclass(frozen=True)
class SquaredError:
    """Half the squared error of one output against the standardised value: a Gaussian likelihood with unit
    variance on the standardised scale. Its gradient grows with the residual, which per-sample clipping bounds
    as for every other loss; the fixed centre and scale keep the target near unit size so the clipping norm
    means what it means for the other kinds."""

    n_outputs: int = 1

    def check_targets(self, target: np.ndarray) -> None:
        t = np.asarray(target, dtype=np.float64)
        if t.ndim != 1 or not np.isfinite(t).all():
            raise ValueError(f"squared error: targets must be finite numbers, one per record "
                             f"({int(np.sum(~np.isfinite(t)))} are not)")

    def __call__(self, output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return _reduce(0.5 * (output - target) ** 2, reduction)


BINARY = BinaryLoss()
# what the training loops (plain and DP-SGD) accept as `loss`
OutcomeLoss = BinaryLoss | LogisticHazard | CoxPartialLikelihood | MulticlassLoss | SquaredError


def survival_curve(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """S(t_{j+1}) = prod_{i<=j} (1 - h_i) at each interval's end, from logits of shape (records, K)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    return torch.exp(torch.cumsum(F.logsigmoid(-z), dim=1)).numpy()


def breslow_log_cumulative_hazard(eta: np.ndarray, time: np.ndarray, event: np.ndarray,
                                  at: np.ndarray) -> np.ndarray:
    """Breslow's estimate of a Cox model's log cumulative baseline hazard, log H0(t), at each of `at`.

    H0(t) = sum over the events at times t_i <= t of 1 / sum_{j: t_j >= t_i} exp(eta_j) (tied events each count
    in full, as in the partial likelihood's Breslow ties): the estimate scikit-survival's `BreslowEstimator`
    gives. Computed in logs, with log-sum-exps throughout, so that no exp(eta) overflows.

    Parameters
    ----------
    eta : ndarray, shape (n,)
        The records' log relative risks under the model whose baseline this is.
    time, event : ndarray, shape (n,)
        The records' follow-up and event indicator (1 event, 0 censored).
    at : ndarray, shape (m,)
        The times to read H0 at (a study's interval ends).

    Returns
    -------
    ndarray, shape (m,)
        log H0 at each time, float64; -inf before the first event (and everywhere, for records without one).
    """
    e = np.asarray(eta, dtype=np.float64).reshape(-1)
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    d = np.asarray(event).reshape(-1).astype(bool)
    when = np.atleast_1d(np.asarray(at, dtype=np.float64))
    if not (len(e) == len(t) == len(d)):
        raise ValueError(f"Breslow baseline: eta, time and event must be of one length; got {len(e)}, {len(t)} "
                         f"and {len(d)}")
    if not d.any():
        return np.full(when.shape, -np.inf)
    down = np.argsort(-t, kind="stable")
    log_cumulative = np.logaddexp.accumulate(e[down])
    last_tie = np.searchsorted(-t[down], -t[down], side="right") - 1
    log_risk_set = np.empty(len(t))
    log_risk_set[down] = log_cumulative[last_tie]  # log sum_{j: t_j >= t_i} exp(eta_j), per record
    event_times = t[d]
    up = np.argsort(event_times, kind="stable")
    log_h0 = np.logaddexp.accumulate(-log_risk_set[d][up])  # at each event, in time order
    n_by = np.searchsorted(event_times[up], when, side="right")  # events at or before each time
    return np.where(n_by > 0, log_h0[np.maximum(n_by - 1, 0)], -np.inf)


def cox_survival_curve(eta: np.ndarray, log_baseline: np.ndarray) -> np.ndarray:
    """A Cox model's survival curves, S(t | x) = exp(-H0(t) exp(eta(x))) = S0(t)^exp(eta(x)).

    Parameters
    ----------
    eta : ndarray, shape (n,)
        The log relative risk of each record to predict for.
    log_baseline : ndarray, shape (m,)
        log H0 at each time (`breslow_log_cumulative_hazard`).

    Returns
    -------
    ndarray, shape (n, m)
        S of every record (rows) at each time (columns), float64: 1 where no baseline hazard has accrued,
        0 where H0(t) exp(eta) overflows.
    """
    e = np.asarray(eta, dtype=np.float64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        return np.exp(-np.exp(np.asarray(log_baseline, dtype=np.float64).reshape(1, -1) + e))
