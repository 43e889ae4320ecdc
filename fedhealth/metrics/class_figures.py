"""Figures of a multi-class model's class probabilities, as weighted sums over records.

Why weighted: a bootstrap resample is the test records drawn with replacement, that is the same records with
multiplicities. Writing every figure as sums over records with a weight each lets one call score hundreds of
resamples at once (`weights` of shape (resamples, records)); a weight of one per record is the figure itself.
Checked against scikit-learn in tests/unit/test_outcome_kinds_summary.py (`roc_auc_score` one-vs-rest,
`accuracy_score`, `log_loss`; weights against duplicated records).

- class AUROC: one-vs-rest, the probability that a record of the class gets a higher probability of it than a
  record of another class, ties counting half (scikit-learn's `roc_auc_score` of the class indicator);
- macro AUROC: the mean of the class AUROCs over the classes the records hold (a class absent from the test
  records has no AUROC; the summary names it);
- accuracy of the most probable class; log loss (mean negative log-probability of the true class, clipped
  at 1e-15 as scikit-learn); ECE: the expected calibration error of the top-class confidence, 10 equal-width
  bins of confidence, |share correct - mean confidence| per bin weighted by the bin's records.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-15  # log loss clips probabilities as scikit-learn does
ECE_BINS = 10


def _ones(n: int) -> np.ndarray:
    return np.ones((1, n))


def class_auroc_rows(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted AUROC of `score` for the records where `positive` holds against the others, per row of
    `weights` (resamples, records); NaN for a row with no positive or no negative weight."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    pos = positive[order]
    w = weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    wp = np.add.reduceat(w * pos, starts, axis=1)
    wn = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each group
    concordant = (wp * (below + 0.5 * wn)).sum(axis=1)
    total = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, concordant / np.where(total > 0, total, 1.0), np.nan)


def present_classes(label: np.ndarray, n_classes: int) -> list[int]:
    """The classes whose AUROC the records can give: held by some records, and not by all."""
    return [k for k in range(n_classes) if 0 < int(np.sum(label == k)) < len(label)]


def multiclass_rows(label: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every figure per row of `weights`: "macro_auroc", "accuracy", "log_loss", "ece" (each (resamples,)) and
    "class_auroc" ((resamples, classes), NaN for a class absent from the records). All NaN when `probs` holds
    NaN (a model that does not exist)."""
    label = np.asarray(label, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    r, n_classes = weights.shape[0], probs.shape[1]
    if not np.isfinite(probs).all() or len(label) == 0:
        nan = np.full(r, np.nan)
        return {"macro_auroc": nan, "accuracy": nan, "log_loss": nan, "ece": nan,
                "class_auroc": np.full((r, n_classes), np.nan)}
    total = weights.sum(axis=1)
    top = probs.argmax(axis=1)
    correct = (top == label).astype(np.float64)
    nll = -np.log(np.clip(probs[np.arange(len(label)), label], EPS, 1.0))
    confidence = probs.max(axis=1)
    bins = np.minimum((confidence * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    gap = np.zeros(r)
    for b in np.unique(bins):
        inside = bins == b
        gap += np.abs(weights[:, inside] @ correct[inside] - weights[:, inside] @ confidence[inside])
    per_class = np.full((r, n_classes), np.nan)
    present = present_classes(label, n_classes)
    for k in present:
        per_class[:, k] = class_auroc_rows(label == k, probs[:, k], weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = (np.nanmean(per_class[:, present], axis=1) if len(present) >= 2 else np.full(r, np.nan))
        return {"macro_auroc": macro, "accuracy": weights @ correct / total, "log_loss": weights @ nll / total,
                "ece": gap / total, "class_auroc": per_class}


def multiclass_figures(label: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The figures of `probs` (records, classes) on the records' class indices `label`: macro AUROC,
    accuracy, log loss, ECE (NaN where undefined). What a hospital sends back for the global model."""
    rows = multiclass_rows(label, probs, _ones(len(label)))
    return {key: float(rows[key][0]) for key in ("macro_auroc", "accuracy", "log_loss", "ece")}
