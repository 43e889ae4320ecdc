"""The training loss of each outcome kind, written as a sum of one term per record.

Why a sum over records: DP-SGD's guarantee rests on bounding each record's influence on a step. Per-sample
clipping (Opacus's, and fedhealth's one-backward linear path in `fedhealth.privacy.dp`) clips the gradient
of each record's own term, which is that record's influence only if the batch loss is the sum (or mean) of
terms that each depend on one record. A loss that couples records (a Cox partial likelihood, whose risk sets
hold many records) breaks that, and is not offered here.

- `BinaryLoss`: binary cross-entropy on one logit per record (the binary outcome).
- `LogisticHazard`: a discrete-time survival model (Kvamme & Borgan 2021; Gensheimer & Narasimhan 2019). The
  follow-up is cut into intervals at fixed edges from the study schema; the model gives one logit per
  interval, the hazard h_j = sigmoid(logit_j) = P(event in interval j | alive at its start). A record's
  negative log-likelihood involves only its own logits: the intervals it survived, and the one it had its
  event in.
- `MulticlassLoss`: cross-entropy on one logit per class (a multi-class outcome).
- `SquaredError`: squared error of one output against the standardised value (a continuous outcome: the
  value minus the schema's fixed centre, over its fixed scale), halved, so a record's term is its own.

Targets are float tensors: the label (n,) for `BinaryLoss`; (n, 2) = [interval index, event] for
`LogisticHazard`, from `interval_targets`; the class index (n,) for `MulticlassLoss`; the standardised value
(n,) for `SquaredError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from fedhealth.data.survival_targets import interval_targets  # noqa: F401  (the targets `LogisticHazard` reads)


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
OutcomeLoss = BinaryLoss | LogisticHazard | MulticlassLoss | SquaredError


def survival_curve(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """S(t_{j+1}) = prod_{i<=j} (1 - h_i) at each interval's end, from logits of shape (records, K)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    return torch.exp(torch.cumsum(F.logsigmoid(-z), dim=1)).numpy()
