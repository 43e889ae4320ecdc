"""Calibration: do predicted risks match observed outcome rates?

A ranking metric (AUROC) says nothing about whether a predicted 20 % risk means 20 %. The reliability
table bins predictions into equal-width risk bands and compares, per band, the mean predicted risk
with the observed rate; only counts and means are kept, never a patient's prediction.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict[str, Any]]:
    """Per non-empty band [k/n, (k+1)/n): records, mean predicted risk, observed outcome rate."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    band = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out = []
    for k in range(n_bins):
        members = band == k
        n = int(members.sum())
        if n:
            out.append({"low": k / n_bins, "high": (k + 1) / n_bins, "n": n,
                        "predicted": float(p[members].mean()), "observed": float(y[members].mean())})
    return out


def expected_calibration_error(bins: list[dict[str, Any]]) -> float | None:
    """Record-weighted mean |predicted - observed| over the bands."""
    total = sum(b["n"] for b in bins)
    return sum(b["n"] * abs(b["predicted"] - b["observed"]) for b in bins) / total if total else None
