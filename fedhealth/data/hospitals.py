"""A study's hospitals as model-ready splits: generate (or later, read), split, encode.

Each party calls this for its own hospital only; the seeded generator and split make every
process (Ray actor, driver, resumed run) see exactly the same records without moving any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedhealth.config import HospitalConfig, StudyConfig
from fedhealth.data.schema import encode_features
from fedhealth.data.synthetic import HospitalProfile, generate_hospital, train_test_split
from fedhealth.metrics.classification import roc_auc


@dataclass(frozen=True)
class HospitalSplit:
    """One hospital's encoded train and held-out test records, with what is known of the truth."""

    index: int
    hospital: HospitalConfig
    x_train: np.ndarray  # float32 (n_train, ENCODED_WIDTH)
    y_train: np.ndarray  # float32 (n_train,)
    x_test: np.ndarray
    y_test: np.ndarray
    test_true_risk: np.ndarray  # P(outcome) from the generator's latent values, test records
    bayes_auroc: float  # best AUROC any model could reach on this test set (NaN if one class)
    prevalence: float  # outcome rate over all of this hospital's records


def _profile(h: HospitalConfig) -> HospitalProfile:
    return HospitalProfile(name=h.name, tier=h.tier, region=h.region, records=h.records)


def load_hospital(cfg: StudyConfig, index: int) -> HospitalSplit:
    """The split of hospital `index` (0-based) of the study, cached per process."""
    if not 0 <= index < len(cfg.hospitals):
        raise IndexError(f"hospital index {index} outside 0..{len(cfg.hospitals) - 1}")
    key = (cfg.fingerprint(), index)
    if key not in _CACHE:
        if len(_CACHE) >= 256:
            _CACHE.clear()
        _CACHE[key] = _build(cfg, index)
    return _CACHE[key]


_CACHE: dict[tuple[str, int], HospitalSplit] = {}


def _build(cfg: StudyConfig, index: int) -> HospitalSplit:
    h = cfg.hospitals[index]
    records = generate_hospital(_profile(h), index, cfg.seed)
    train, test = train_test_split(records, cfg.training.test_fraction, cfg.seed, index)
    best = roc_auc(test.label, test.true_risk)
    return HospitalSplit(
        index=index,
        hospital=h,
        x_train=encode_features(train.features),
        y_train=train.label.astype(np.float32),
        x_test=encode_features(test.features),
        y_test=test.label.astype(np.float32),
        test_true_risk=test.true_risk,
        bayes_auroc=best,
        prevalence=float(records.label.mean()),
    )
