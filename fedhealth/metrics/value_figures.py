"""Figures of a continuous model's predicted values, as weighted sums over records.

Weighted for the same reason as `fedhealth.metrics.class_figures`: one call scores every bootstrap resample
(`weights` (resamples, records)). Checked against scikit-learn (`r2_score`, `mean_absolute_error`, the root of
`mean_squared_error`) and `numpy.polyfit` in tests/unit/test_outcome_kinds_summary.py.

- R²: 1 minus the mean squared error over the variance of the observed values (scikit-learn's `r2_score`;
  undefined when the values do not vary);
- MAE and RMSE, in the outcome's unit;
- calibration slope: the slope of the least-squares line of observed on predicted values (1: the predictions
  spread as much as the outcome does; below 1: too spread, as an overfitted model's); undefined when the
  predictions do not vary.
"""

from __future__ import annotations

import numpy as np

FLAT = 1e-12  # a variance this small relative to the values' scale is no variation at all


def regression_rows(value: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """"r2", "mae", "rmse", "calibration_slope" per row of `weights`; all NaN when `pred` holds NaN."""
    y = np.asarray(value, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    r = weights.shape[0]
    if not np.isfinite(p).all() or len(y) == 0:
        nan = np.full(r, np.nan)
        return {"r2": nan, "mae": nan, "rmse": nan, "calibration_slope": nan}
    total = weights.sum(axis=1)
    scale = max(float(np.abs(y).max()), float(np.abs(p).max()), 1.0) ** 2
    yc, pc = y - y.mean(), p - p.mean()  # centred first: the moments below then lose no precision
    e = y - p
    mse = weights @ (e * e) / total
    ybar, pbar = weights @ yc / total, weights @ pc / total
    var_y = weights @ (yc * yc) / total - ybar ** 2
    var_p = weights @ (pc * pc) / total - pbar ** 2
    cov = weights @ (yc * pc) / total - ybar * pbar
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(var_y > FLAT * scale, 1.0 - mse / var_y, np.nan)
        slope = np.where(var_p > FLAT * scale, cov / var_p, np.nan)
    return {"r2": r2, "mae": weights @ np.abs(e) / total, "rmse": np.sqrt(mse), "calibration_slope": slope}


def regression_figures(value: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R², MAE, RMSE and calibration slope of `pred` against the observed `value` (NaN where undefined)."""
    rows = regression_rows(value, pred, np.ones((1, len(value))))
    return {key: float(v[0]) for key, v in rows.items()}
