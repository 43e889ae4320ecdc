"""The figures a hospital sends back for a multi-class or continuous model, under `EVALUATION_KEYS`.

One function so that both sides read the same keys (`fedhealth.metrics.headline`): the hospital evaluates
the global model on its test records with it (`fedhealth.hospital.app`), and the coordinator records them per
round. NaN where the test records cannot give a figure (a class absent, constant values), never a guess.
"""

from __future__ import annotations

import numpy as np

from fedhealth.metrics.headline import EVALUATION_KEYS


def outcome_figures(kind: str, outcome: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """The kind's evaluation figures of `prediction` (class probabilities (n, K), or values (n,)) against the
    test records' `outcome` (class index, or value in the unit)."""
    if kind == "multiclass":
        from fedhealth.metrics.class_figures import multiclass_figures

        figures = multiclass_figures(np.asarray(outcome, dtype=np.int64), np.asarray(prediction, dtype=np.float64))
    elif kind == "continuous":
        from fedhealth.metrics.value_figures import regression_figures

        figures = regression_figures(np.asarray(outcome, dtype=np.float64), np.asarray(prediction, dtype=np.float64))
    else:
        raise ValueError(f"outcome_figures: {kind!r} is not a multi-class or continuous outcome")
    return {key: float(figures[key]) if figures.get(key) is not None else float("nan")
            for key in EVALUATION_KEYS[kind]}
