"""The loss's targets of a multi-class or continuous study, from its outcome as the metrics read it.

Here, in the data layer, because the hospital's split carries both (`HospitalSplit.y_*` for the loss,
`HospitalSplit.outcome_*` for the metrics) and the data layer does not import the model's.
"""

from __future__ import annotations

import numpy as np

from fedhealth.study.config import StudyConfig


def outcome_targets(cfg: StudyConfig, outcome: np.ndarray) -> np.ndarray:
    """float32 targets: the class index (multi-class), or the value minus the study's fixed centre over its
    fixed scale (continuous: `StudyConfig.value_spec`; never statistics of any hospital's records)."""
    kind = cfg.outcome_kind
    if kind == "multiclass":
        return np.asarray(outcome, dtype=np.float32)
    if kind == "continuous":
        spec = cfg.value_spec
        return ((np.asarray(outcome, dtype=np.float64) - spec.center) / spec.scale).astype(np.float32)
    raise ValueError(f"outcome_targets: a {kind} study's targets are its labels or `interval_targets`")
