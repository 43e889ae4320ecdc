"""The model, loss and predictions a study's outcome kind calls for: one place that says what each kind trains.

- binary: one logit per record, binary cross-entropy, predictions P(outcome) of shape (records,);
- time_to_event: one logit per interval of the study's `[time]` table, the logistic-hazard likelihood
  (`fedhealth.model.losses.LogisticHazard`), predictions S(t) at the end of each interval, shape
  (records, intervals).

Both losses are sums of one term per record, so DP-SGD's per-sample clipping bounds each record's influence
as it does for the binary outcome (`fedhealth.model.losses` says why a Cox partial likelihood is not offered).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from fedhealth.model.losses import BINARY, LogisticHazard, OutcomeLoss
from fedhealth.model.tabular import build_model
from fedhealth.study.config import StudyConfig


def study_loss(cfg: StudyConfig) -> OutcomeLoss:
    """The training loss of the study's outcome kind."""
    spec = cfg.time_spec
    if spec is None:
        return BINARY
    return LogisticHazard(len(spec.intervals) - 1)


def study_outputs(cfg: StudyConfig) -> int:
    """Logits per record: 1 for a binary outcome, one per interval for a time-to-event outcome."""
    return study_loss(cfg).n_outputs


def build_study_model(cfg: StudyConfig, n_inputs: int, seed: int) -> nn.Module:
    """The study's model (`cfg.model`), with as many outputs as its outcome kind needs."""
    return build_model(cfg.model.name, n_inputs, cfg.model.hidden, seed=seed, n_outputs=study_outputs(cfg))


def predict(cfg: StudyConfig, model: nn.Module, x: np.ndarray) -> np.ndarray:
    """What the model predicts for each record: P(outcome), or its survival curve at the interval ends."""
    from fedhealth.model.training import predict_logits, predict_proba

    if cfg.time_spec is None:
        return predict_proba(model, x)
    from fedhealth.model.losses import survival_curve

    return survival_curve(predict_logits(model, x))


def edges(cfg: StudyConfig) -> np.ndarray:
    """The interval edges of a time-to-event study (its `[time]` table), as float64."""
    spec = cfg.time_spec
    if spec is None:
        raise ValueError("a binary study has no follow-up intervals")
    return np.asarray(spec.intervals, dtype=np.float64)


def horizons(cfg: StudyConfig) -> np.ndarray:
    spec = cfg.time_spec
    if spec is None:
        raise ValueError("a binary study has no horizons")
    return np.asarray(spec.horizons, dtype=np.float64)


def nan_predictions(cfg: StudyConfig, n: int) -> np.ndarray:
    """Predictions of a model that does not exist (a hospital whose training split cannot fit one)."""
    spec = cfg.time_spec
    return np.full(n, np.nan) if spec is None else np.full((n, len(spec.intervals) - 1), np.nan)


__all__: Sequence[str] = ["build_study_model", "edges", "horizons", "nan_predictions", "predict", "study_loss",
                          "study_outputs"]
