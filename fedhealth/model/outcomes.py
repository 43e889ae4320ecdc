"""The model, loss and predictions a study's outcome kind calls for: one place that says what each kind trains.

- binary: one logit per record, binary cross-entropy, predictions P(outcome) of shape (records,);
- time_to_event, by `model.survival`: "logistic_hazard" (the default), one logit per interval of the study's
  `[time]` table and the logistic-hazard likelihood (`fedhealth.model.losses.LogisticHazard`); "cox", one
  output per record (the log relative risk) and Cox's partial likelihood with Breslow ties
  (`fedhealth.model.losses.CoxPartialLikelihood`). Either way the predictions are S(t) at the end of each
  interval, shape (records, intervals), so every survival figure reads both alike;
- multiclass: one logit per class, cross-entropy, predictions the class probabilities (records, classes);
- continuous: one output, the standardised value (`StudyConfig.value_spec`'s fixed centre and scale), half
  squared error, predictions the value in its unit (records,).

A Cox model's curves S(t | x) = S0(t)^exp(eta(x)) need a baseline survival S0, which no federated weight
carries: `predict` estimates it (Breslow) from the training records of whoever predicts, with the same model
(`baseline_records`): a hospital from its own, the local-only reference from its hospital's, the pooled one
from every hospital's. A federated Cox model is so a Cox model stratified by hospital: coefficients shared,
each site its own baseline hazard (the site's local loss is its own records' partial likelihood, too).

Every loss but Cox's is a sum of one term per record, so DP-SGD's per-sample clipping bounds each record's
influence as it does for the binary outcome; Cox's couples the records of each risk set, and the study config
refuses it with record-level DP (`fedhealth.model.losses` says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from fedhealth.model.losses import (
    BINARY,
    CoxPartialLikelihood,
    LogisticHazard,
    MulticlassLoss,
    OutcomeLoss,
    SquaredError,
)
from fedhealth.model.tabular import build_model
from fedhealth.study.config import StudyConfig

if TYPE_CHECKING:
    from fedhealth.data.hospitals import HospitalSplit


def is_cox(cfg: StudyConfig) -> bool:
    """Whether the study trains a Cox model (`model.survival = "cox"`, a time-to-event study)."""
    return cfg.outcome_kind == "time_to_event" and cfg.model.survival == "cox"


def study_loss(cfg: StudyConfig) -> OutcomeLoss:
    """The training loss of the study's outcome kind (for time-to-event, of its `model.survival`)."""
    kind = cfg.outcome_kind
    if kind == "time_to_event":
        return CoxPartialLikelihood() if is_cox(cfg) else LogisticHazard(len(cfg.time_spec.intervals) - 1)
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


@dataclass(frozen=True)
class BaselineRecords:
    """The training records a Cox model's Breslow baseline hazard is estimated from: their features, follow-up
    and event indicator. They never leave whoever predicts (`baseline_records`)."""

    x: np.ndarray
    time: np.ndarray
    event: np.ndarray


def baseline_records(cfg: StudyConfig, splits: Sequence[HospitalSplit]) -> BaselineRecords | None:
    """The training records of `splits` (one hospital's, or every hospital's for the pooled reference) for a
    Cox study's `predict`; None for every other study, whose predictions need none."""
    if not is_cox(cfg):
        return None
    if len(splits) == 1:
        s = splits[0]
        return BaselineRecords(s.x_train, s.time_train, s.event_train)
    return BaselineRecords(np.concatenate([s.x_train for s in splits]),
                           np.concatenate([s.time_train for s in splits]),
                           np.concatenate([s.event_train for s in splits]))


def predict(cfg: StudyConfig, model: nn.Module, x: np.ndarray, baseline: BaselineRecords | None = None) -> np.ndarray:
    """What the model predicts for each record: P(outcome), its survival curve at the interval ends, its
    class probabilities, or its value in the outcome's unit.

    Parameters
    ----------
    cfg : StudyConfig
        The study; its outcome kind (and for time-to-event its `model.survival`) says what is predicted.
    model : nn.Module
        The study's model (`build_study_model`) with the weights to predict with.
    x : ndarray, shape (n, inputs)
        The encoded records to predict for.
    baseline : BaselineRecords, optional
        A Cox study's training records of whoever predicts, which its Breslow baseline hazard is estimated
        from under `model` (`baseline_records`): required for a Cox study, ignored by every other.

    Returns
    -------
    ndarray
        (n,) probabilities or values; (n, intervals) survival at each interval's end; (n, classes).

    Raises
    ------
    ValueError
        A Cox study without `baseline`.
    """
    from fedhealth.model.training import predict_logits, predict_proba

    kind = cfg.outcome_kind
    if kind == "binary":
        return predict_proba(model, x)
    out = predict_logits(model, x)
    if kind == "time_to_event":
        if is_cox(cfg):
            return _cox_curves(cfg, model, out, baseline)
        from fedhealth.model.losses import survival_curve

        return survival_curve(out)
    if kind == "multiclass":
        z = out - out.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)
    spec = cfg.value_spec
    return out * spec.scale + spec.center


def _cox_curves(cfg: StudyConfig, model: nn.Module, eta: np.ndarray, baseline: BaselineRecords | None) -> np.ndarray:
    """S(t | x) at each interval's end for records of log relative risk `eta`, the baseline hazard estimated
    (Breslow) from `baseline` under the same model. Records without an event give no baseline hazard to
    estimate (its maximum-likelihood value, 0, would say nobody there ever has the event): the curves are then
    NaN, undefined, as a model that does not exist is (`nan_predictions`)."""
    from fedhealth.model.losses import breslow_log_cumulative_hazard, cox_survival_curve
    from fedhealth.model.training import predict_logits

    if baseline is None:
        raise ValueError("a Cox model's survival curves need the training records its baseline hazard is "
                         "estimated from: pass `baseline=baseline_records(cfg, splits)` to predict")
    if not np.any(np.asarray(baseline.event) == 1):
        return np.full((len(eta), len(edges(cfg)) - 1), np.nan)
    log_h0 = breslow_log_cumulative_hazard(predict_logits(model, baseline.x), baseline.time, baseline.event,
                                           edges(cfg)[1:])
    return cox_survival_curve(eta, log_h0)


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


__all__: Sequence[str] = ["BaselineRecords", "baseline_records", "build_study_model", "edges", "horizons", "is_cox",
                          "nan_predictions", "predict", "study_loss", "study_outputs"]
