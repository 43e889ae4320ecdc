"""The two reference points every study needs, trained on the very same splits as the federation.

- local-only: each hospital trains alone on its own records (what it could do without joining);
- pooled: all hospitals' training records centralised (the non-private ceiling).

Both use the federation's optimiser settings and the same total number of epochs
(rounds x local epochs), and start from the same initial weights. A Cox study's curves take their baseline
hazard from the training records of whoever predicts (`fedhealth.model.outcomes.baseline_records`): the
federated model at each hospital from that hospital's, a local-only model from its own, the pooled model
from every hospital's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedhealth.data.hospitals import HospitalSplit
from fedhealth.model import set_weights
from fedhealth.model.outcomes import baseline_records, build_study_model, nan_predictions, predict, study_loss
from fedhealth.model.training import train
from fedhealth.seeding import derive_seed
from fedhealth.study.config import StudyConfig


@dataclass(frozen=True)
class Predictions:
    """Test-set predictions per hospital index, for one model family (federated, local-only, pooled):
    P(outcome) per record, or for a time-to-event study each record's survival curve at the interval ends
    (`fedhealth.model.outcomes.predict`)."""

    by_hospital: dict[int, np.ndarray]


def _fresh_model(cfg: StudyConfig, init: Sequence[np.ndarray], width: int):
    model = build_study_model(cfg, width, seed=cfg.seed)
    set_weights(model, init)
    return model


def _fit(cfg: StudyConfig, model, x: np.ndarray, y: np.ndarray, purpose: str) -> None:
    t = cfg.training
    train(model, x, y, epochs=cfg.federation.rounds * t.local_epochs, batch_size=t.batch_size,
          learning_rate=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay,
          seed=derive_seed(cfg.seed, purpose), loss=study_loss(cfg))


def local_only(cfg: StudyConfig, splits: Sequence[HospitalSplit], init: Sequence[np.ndarray]) -> Predictions:
    """Each hospital's own model. A hospital whose training split holds one class has none: a model fitted to
    one class says nothing about telling the classes apart, so its predictions are NaN and every figure of it
    is undefined (`fedhealth.experiments.summary`, `undefined`), never a number. Likewise a time-to-event
    hospital without an event in its training split: its model could only learn that nobody has one."""
    out = {}
    for s in splits:
        if np.unique(s.label_train).size < 2:
            out[s.index] = nan_predictions(cfg, len(s.y_test))
            continue
        model = _fresh_model(cfg, init, s.x_train.shape[1])
        _fit(cfg, model, s.x_train, s.y_train, f"local-only/{s.index}")
        out[s.index] = predict(cfg, model, s.x_test, baseline_records(cfg, [s]))
    return Predictions(out)


def pooled(cfg: StudyConfig, splits: Sequence[HospitalSplit], init: Sequence[np.ndarray]) -> Predictions:
    x = np.concatenate([s.x_train for s in splits])
    y = np.concatenate([s.y_train for s in splits])
    model = _fresh_model(cfg, init, x.shape[1])
    _fit(cfg, model, x, y, "pooled")
    baseline = baseline_records(cfg, splits)
    return Predictions({s.index: predict(cfg, model, s.x_test, baseline) for s in splits})


def federated(cfg: StudyConfig, splits: Sequence[HospitalSplit], weights: Sequence[np.ndarray]) -> Predictions:
    """The final global model's predictions, computed in the simulation driver for pooled-test figures (as
    each hospital computes its own: a Cox model's baseline from that hospital's training records)."""
    model = _fresh_model(cfg, weights, splits[0].x_train.shape[1])
    return Predictions({s.index: predict(cfg, model, s.x_test, baseline_records(cfg, [s])) for s in splits})
