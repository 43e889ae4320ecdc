"""The model, loss and predictions a study's outcome kind calls for: one place that says what each kind trains.

- binary: one logit per record, binary cross-entropy, predictions P(outcome) of shape (records,);
- time_to_event: one logit per interval of the study's `[time]` table, the logistic-hazard likelihood
  (`fedhealth.model.losses.LogisticHazard`), predictions S(t) at the end of each interval, shape
  (records, intervals);
- multiclass: one logit per class, cross-entropy, predictions the class probabilities (records, classes);
- continuous: one output, the standardised value (`StudyConfig.value_spec`'s fixed centre and scale), half
  squared error, predictions the value in its unit (records,).

Every loss is a sum of one term per record, so DP-SGD's per-sample clipping bounds each record's influence
as it does for the binary outcome (`fedhealth.model.losses` says why a Cox partial likelihood is not offered).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from fedhealth.model.losses import BINARY, LogisticHazard, MulticlassLoss, OutcomeLoss, SquaredError
from fedhealth.model.tabular import build_model
from fedhealth.study.config import StudyConfig


def study_loss(cfg: StudyConfig) -> OutcomeLoss:
    """The training loss of the study's outcome kind."""
    kind = cfg.outcome_kind
    if kind == "time_to_event":
        return LogisticHazard(len(cfg.time_spec.intervals) - 1)
    if kind == "multiclass":
        return MulticlassLoss(len(cfg.class_names))
    if kind == "continuous":
        return SquaredError()
    return BINARY


def study_outputs(cfg: StudyConfig) -> int:
    """Outputs per record: 1 (binary, continuous), one per interval (time-to-event), one per class."""
    return study_loss(cfg).n_outputs


def build_study_model(cfg: StudyConfig, n_inputs: int, seed: int) -> nn.Module:
    """The study's model (`cfg.model`), with as many outputs as its outcome kind needs."""
    return build_model(cfg.model.name, n_inputs, cfg.model.hidden, seed=seed, n_outputs=study_outputs(cfg))


def predict(cfg: StudyConfig, model: nn.Module, x: np.ndarray) -> np.ndarray:
    """What the model predicts for each record: P(outcome), its survival curve at the interval ends, its
    class probabilities, or its value in the outcome's unit."""
    from fedhealth.model.training import predict_logits, predict_proba

    kind = cfg.outcome_kind
    if kind == "binary":
        return predict_proba(model, x)
    out = predict_logits(model, x)
    if kind == "time_to_event":
        from fedhealth.model.losses import survival_curve

        return survival_curve(out)
    if kind == "multiclass":
        z = out - out.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)
    spec = cfg.value_spec
    return out * spec.scale + spec.center


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
    kind = cfg.outcome_kind
    if kind == "time_to_event":
        return np.full((n, len(cfg.time_spec.intervals) - 1), np.nan)
    if kind == "multiclass":
        return np.full((n, len(cfg.class_names)), np.nan)
    return np.full(n, np.nan)


__all__: Sequence[str] = ["build_study_model", "edges", "horizons", "nan_predictions", "predict", "study_loss",
                          "study_outputs"]
