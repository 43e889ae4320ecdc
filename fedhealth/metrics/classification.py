"""AUROC, AUPRC, accuracy, Brier score and log loss for a binary outcome.

Only these aggregate numbers ever leave a hospital; predictions and labels stay where they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass(frozen=True)
class BinaryMetrics:
    auroc: float  # NaN when the set holds one class only
    auprc: float  # average precision; NaN when the set holds no positive
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
    if n == 0:
        nan = float("nan")
        return BinaryMetrics(nan, nan, nan, nan, nan, 0)
    two_classes = 0 < y.sum() < n
    auroc = float(roc_auc_score(y, p)) if two_classes else float("nan")
    auprc = float(average_precision_score(y, p)) if y.sum() > 0 else float("nan")
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
