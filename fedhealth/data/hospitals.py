"""A study's hospitals as model-ready splits: generate (or read from the hospital's file), split, encode.

Each party calls this for its own hospital only; the seeded generator and split make every
process (Ray actor, driver, resumed run) see exactly the same records without moving any.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedhealth.data.synthetic import HospitalProfile, generate_hospital, stratified_test_mask, train_test_split
from fedhealth.metrics.classification import roc_auc
from fedhealth.study.builtin_schema import ENCODED_WIDTH, encode_features
from fedhealth.study.config import HospitalConfig, StudyConfig

log = logging.getLogger(__name__)


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


def input_width(cfg: StudyConfig) -> int:
    """Model inputs per record: the study schema's encoded width, or the built-in record's."""
    return cfg.study_schema.encoded_width if cfg.study_schema is not None else ENCODED_WIDTH


def _profile(h: HospitalConfig) -> HospitalProfile:
    return HospitalProfile(name=h.name, tier=h.tier, region=h.region, records=h.records)


def load_hospital(cfg: StudyConfig, index: int, data_file: str | None = None) -> HospitalSplit:
    """The split of hospital `index` (0-based) of the study, cached per process. `data_file`: the
    hospital's own file (deployment: from its node config), which wins over the study config's path."""
    if not 0 <= index < len(cfg.hospitals):
        raise IndexError(f"hospital index {index} outside 0..{len(cfg.hospitals) - 1}")
    key = (cfg.fingerprint(), index, data_file)
    if key not in _CACHE:
        if len(_CACHE) >= 256:
            _CACHE.clear()
        _CACHE[key] = _build(cfg, index, data_file)
    return _CACHE[key]


_CACHE: dict[tuple[str, int, str | None], HospitalSplit] = {}


def _build(cfg: StudyConfig, index: int, data_file: str | None = None) -> HospitalSplit:
    h = cfg.hospitals[index]
    if cfg.study_schema is not None:
        return _build_from_file(cfg, index, Path(data_file) if data_file else Path(h.data) if h.data else None,
                                check_sha=data_file is None)
    if data_file:
        raise ValueError(f"hospital {h.name!r}: the node config names a data file, but the study has no schema "
                         "(its hospitals are generated); the study config needs `schema = ...`")
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


def _build_from_file(cfg: StudyConfig, index: int, path: Path | None, check_sha: bool = True) -> HospitalSplit:
    """A hospital's own file, validated and consent-filtered, split by the schema's split column or by the
    same seeded stratified split as a generated hospital, and encoded with the schema's fixed references.
    There is no true risk, so no best-possible AUROC (NaN)."""
    from fedhealth.data.files import load_file_records

    h = cfg.hospitals[index]
    schema = cfg.study_schema
    assert schema is not None
    if path is None:
        raise FileNotFoundError(f"hospital {h.name!r} has no data file: give hospitals.data in the config "
                                "(simulation) or data-file in its node config (deployment)")
    records = load_file_records(path, schema, h.name, h.data_sha256 if check_sha else None)
    declared = int(h.records or 0)
    if len(records.label) > declared:
        # SecAgg+'s max_weight was sized from the declared count, and DP-SGD's schedule is derived from it.
        # Refusing would tell the server, request by request, whether its declared count is below the
        # hospital's true count (a free oracle on it): the hospital uses its first `declared` usable rows
        # and says so in its own log only.
        log.warning("hospital %s: %s has %d usable rows, more than the %d the study declares for it; using the "
                    "first %d (ask the study coordinator to raise its `records`)", h.name, path,
                    len(records.label), declared, declared)
        records = replace(records, values=records.values[:declared], label=records.label[:declared],
                          is_test=None if records.is_test is None else records.is_test[:declared])
    if records.is_test is not None:
        test = records.is_test
    else:
        test = stratified_test_mask(records.label, cfg.training.test_fraction, cfg.seed, index, h.name)
    x = schema.encode(records.values)
    y = records.label.astype(np.float32)
    return HospitalSplit(
        index=index, hospital=h,
        x_train=x[~test], y_train=y[~test], x_test=x[test], y_test=y[test],
        test_true_risk=np.full(int(test.sum()), np.nan), bayes_auroc=float("nan"),
        prevalence=float(records.label.mean()),
    )
