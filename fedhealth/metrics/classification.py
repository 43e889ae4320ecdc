"""AUROC, AUPRC, accuracy, Brier score and log loss for a binary outcome.

Only these aggregate numbers ever leave a hospital; predictions and labels stay where they are.
Written in NumPy (checked against scikit-learn in the tests) because every simulated hospital
imports this module, and importing scikit-learn there cost 1.7 s per Ray actor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class, or when a
    score is not a number (a model that was never trained, e.g. a local-only model from one class)."""
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0 or not np.isfinite(s).all():
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum_pos = average_rank[inverse][y[order] == 1].sum()
    return float((rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum over distinct thresholds (scikit-learn's
    definition: sum of (R_k - R_{k-1}) * P_k); NaN when the set holds one class (no positive: no recall;
    no negative: 1.0 whatever the model, which would read as a perfect model)."""
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    if y.sum() == 0 or y.sum() == len(y) or not np.isfinite(s).all():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]
    tps = np.cumsum(ys)[last_of_threshold]
    precision = tps / (last_of_threshold + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class BinaryMetrics:
    auroc: float  # NaN when the set holds one class only
    auprc: float  # average precision; NaN when the set holds one class
    accuracy: float  # at threshold 0.5
    brier: float  # mean squared error of the probability
    loss: float  # mean binary cross-entropy (nats)
    n: int  # records evaluated

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def binary_metrics(y_true: np.ndarray, p: np.ndarray) -> BinaryMetrics:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n = int(len(y))
    if n == 0 or not np.isfinite(p).all():  # no records, or no model (NaN predictions): every figure undefined
        nan = float("nan")
        return BinaryMetrics(nan, nan, nan, nan, nan, n)
    auroc = roc_auc(y, p)
    auprc = average_precision(y, p)
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
    return BinaryMetrics(
        auroc=auroc,
        auprc=auprc,
        accuracy=float(np.mean((p >= 0.5) == (y == 1))),
        brier=float(np.mean((p - y) ** 2)),
        loss=loss,
        n=n,
    )
