"""A study's hospitals as model-ready splits: generate (or read from the hospital's file), split, encode.

Each party calls this for its own hospital only; the seeded generator and split make every
process (Ray actor, driver, resumed run) see exactly the same records without moving any.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedhealth.data.synthetic import (
    HospitalProfile,
    generate_hospital,
    one_class_sides,
    stratified_test_mask,
    train_test_split,
)
from fedhealth.metrics.classification import roc_auc
from fedhealth.study.builtin_schema import ENCODED_WIDTH, encode_features
from fedhealth.study.config import MIN_TRAIN_RECORDS, ConfigError, HospitalConfig, StudyConfig

if TYPE_CHECKING:
    from fedhealth.data.validation import ValidRecords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HospitalSplit:
    """One hospital's encoded train and held-out test records, with what is known of the truth."""

    index: int
    hospital: HospitalConfig
    x_train: np.ndarray  # float32 (n_train, ENCODED_WIDTH)
    y_train: np.ndarray  # the loss's targets: float32 (n_train,) labels, or (n_train, 2) `interval_targets`
    #                      (or `cox_targets` for a study with model.survival = "cox")
    x_test: np.ndarray
    y_test: np.ndarray
    test_true_risk: np.ndarray  # the generator's true risk of each test record (NaN for a file's records)
    bayes_auroc: float  # best discrimination any model could reach on this test set: AUROC, or for a
    #                     time-to-event study Harrell's C of the true risk (NaN if undefined or unknown)
    prevalence: float  # outcome rate over all of this hospital's records (time-to-event: share with the event)
    kind: str = "binary"  # the study's outcome kind (`StudyConfig.outcome_kind`)
    # A time-to-event study's follow-up (the schema's unit) and event indicator (1 event, 0 censored), per
    # record; None for other kinds. The metrics read these, the loss reads y_train/y_test.
    time_train: np.ndarray | None = None
    event_train: np.ndarray | None = None
    time_test: np.ndarray | None = None
    event_test: np.ndarray | None = None
    # A multi-class or continuous study's outcome as its metrics read it: the class index (int64, 0 .. K-1, in
    # `StudyConfig.class_names` order) or the value in `StudyConfig.value_spec.unit` (float64); None for other
    # kinds. (y_train/y_test are the loss's targets: the class index as float32, or the standardised value.)
    outcome_train: np.ndarray | None = None
    outcome_test: np.ndarray | None = None
    # What the generator knows of each test record: the true class probabilities (n_test, K), or the true mean
    # value (n_test,) in the unit; None for a file's records and for other kinds.
    test_truth: np.ndarray | None = None

    @property
    def label_train(self) -> np.ndarray:
        """The 0/1 figure each side is stratified and checked by: the label, or the event indicator."""
        return self.y_train if self.event_train is None else self.event_train

    @property
    def label_test(self) -> np.ndarray:
        return self.y_test if self.event_test is None else self.event_test


def _enough_to_train(cfg: StudyConfig, h: HospitalConfig, n_train: int, n_all: int, official: bool) -> None:
    """Refuse a split that leaves a hospital fewer than MIN_TRAIN_RECORDS training records (`test_fraction =
    0.999` trained on one record). Here, where every split is made, so a simulation (`size_problems`, before
    round 1) and a deployed hospital (at its first round; its guard sends the server the category only)
    refuse it alike."""
    if n_train < MIN_TRAIN_RECORDS:
        how = ("its file's official train split holds" if official
               else f"training.test_fraction = {cfg.training.test_fraction:g} leaves it")
        raise ConfigError(f"hospital {h.name!r}: {how} {n_train} training records of its {n_all} (at least "
                          f"{MIN_TRAIN_RECORDS} are needed); lower training.test_fraction or give it more records")


def _warn_one_class(h: HospitalConfig, y_train: np.ndarray, y_test: np.ndarray, events: bool = False) -> None:
    """Say so, naming the site, when a side of its split holds one class: it trains with the federation all the
    same (a referral centre where nearly everyone has the disease still has something to teach), and what needs
    both classes is reported as undefined, never as a number (`fedhealth.experiments.summary.undefined_reasons`)."""
    from fedhealth.data.validation import one_class_consequence

    if events:  # time-to-event: a side without an event (every record censored) is the one-class case
        sides = [f"its {side} split holds no event among {len(e)} records"
                 for side, e in (("training", y_train), ("test", y_test)) if not np.any(e == 1)]
        if sides:
            log.warning("hospital %s: %s: %s", h.name, " and ".join(sides),
                        "figures that need an event there (its C-index, or a local-only model) are undefined; it "
                        "trains with the federation all the same")
        return
    sides = one_class_sides(y_train, y_test)
    if sides:
        log.warning("hospital %s: %s: %s", h.name, " and ".join(sides),
                    one_class_consequence(np.unique(y_train).size < 2, np.unique(y_test).size < 2))


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
    if cfg.outcome_kind == "time_to_event":
        return _build_survival(cfg, index)
    if cfg.outcome_kind in ("multiclass", "continuous"):
        return _build_outcome(cfg, index)
    records = generate_hospital(_profile(h), index, cfg.seed)
    train, test = train_test_split(records, cfg.training.test_fraction, cfg.seed, index)
    _enough_to_train(cfg, h, len(train.label), len(records.label), official=False)
    _warn_one_class(h, train.label, test.label)
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


def _survival_split(cfg: StudyConfig, index: int, x: np.ndarray, time: np.ndarray, event: np.ndarray,
                    test: np.ndarray, true_risk: np.ndarray, n_all: int, official: bool) -> HospitalSplit:
    """A time-to-event hospital's split: the loss's targets (interval targets from the study's fixed interval
    edges, or for a Cox model [time, event] as they are), and the follow-up and event indicator kept beside
    them for the metrics (and a Cox model's baseline hazard)."""
    from fedhealth.data.survival_targets import cox_targets, interval_targets
    from fedhealth.metrics.survival import harrell_c

    h = cfg.hospitals[index]
    spec = cfg.time_spec
    assert spec is not None
    _enough_to_train(cfg, h, int((~test).sum()), n_all, official=official)
    event = event.astype(np.int64)
    time = time.astype(np.float64)
    targets = (cox_targets(time, event) if cfg.model.survival == "cox"
               else interval_targets(time, event, np.asarray(spec.intervals, dtype=np.float64)))
    _warn_one_class(h, event[~test], event[test], events=True)
    best = float("nan")
    if np.isfinite(true_risk).all() and event[test].any():
        best = harrell_c(time[test], event[test], true_risk[test])
    return HospitalSplit(
        index=index, hospital=h, x_train=x[~test], y_train=targets[~test], x_test=x[test], y_test=targets[test],
        test_true_risk=true_risk[test], bayes_auroc=best, prevalence=float(event.mean()) if len(event) else 0.0,
        kind="time_to_event", time_train=time[~test], event_train=event[~test], time_test=time[test],
        event_test=event[test])


def _build_survival(cfg: StudyConfig, index: int) -> HospitalSplit:
    """A generated time-to-event hospital (`fedhealth.data.synthetic_survival`): the binary generator's patients
    followed in time, split by the same seeded stratified split (on the event indicator)."""
    from fedhealth.data.synthetic_survival import generate_survival

    h = cfg.hospitals[index]
    records = generate_survival(_profile(h), index, cfg.seed)
    test = stratified_test_mask(records.event, cfg.training.test_fraction, cfg.seed, index, h.name)
    return _survival_split(cfg, index, encode_features(records.features), records.time, records.event, test,
                           records.risk_scale, len(test), official=False)


def _best_possible(cfg: StudyConfig, outcome: np.ndarray, truth: np.ndarray | None) -> float:
    """The headline figure of the generator's truth on these test records: the macro one-vs-rest AUROC of the
    true class probabilities, or the R^2 of the true mean; NaN when unknown or undefined."""
    if truth is None or len(outcome) == 0:
        return float("nan")
    if cfg.outcome_kind == "multiclass":
        present = [k for k in range(truth.shape[1]) if 0 < int((outcome == k).sum()) < len(outcome)]
        if not present:
            return float("nan")
        return float(np.mean([roc_auc((outcome == k).astype(np.int64), truth[:, k]) for k in present]))
    spread = float(((outcome - outcome.mean()) ** 2).sum())
    return 1.0 - float(((outcome - truth) ** 2).sum()) / spread if spread > 0 else float("nan")


def _outcome_split(cfg: StudyConfig, index: int, x: np.ndarray, outcome: np.ndarray, test: np.ndarray,
                   truth: np.ndarray | None, n_all: int, official: bool) -> HospitalSplit:
    """A multi-class or continuous hospital's split: the loss's targets (`outcome_targets`) and the outcome as
    the metrics read it (class index, or value in the unit) side by side."""
    from fedhealth.data.outcome_targets import outcome_targets

    h = cfg.hospitals[index]
    kind = cfg.outcome_kind
    _enough_to_train(cfg, h, int((~test).sum()), n_all, official=official)
    outcome = outcome.astype(np.int64 if kind == "multiclass" else np.float64)
    y = outcome_targets(cfg, outcome)
    if kind == "multiclass":
        _warn_missing_classes(h, cfg.class_names, outcome[~test], outcome[test])
    test_truth = None if truth is None else truth[test]
    n_test = int(test.sum())
    return HospitalSplit(
        index=index, hospital=h, x_train=x[~test], y_train=y[~test], x_test=x[test], y_test=y[test],
        test_true_risk=np.full(n_test, np.nan), bayes_auroc=_best_possible(cfg, outcome[test], test_truth),
        prevalence=float("nan"), kind=kind, outcome_train=outcome[~test], outcome_test=outcome[test],
        test_truth=test_truth)


def _warn_missing_classes(h: HospitalConfig, names: tuple[str, ...], train: np.ndarray, test: np.ndarray) -> None:
    """A site may lack a class and still train (issue 18): say which, on which side; counts never values."""
    for side, values in (("training", train), ("test", test)):
        absent = [names[k] for k in range(len(names)) if not (values == k).any()]
        if absent:
            log.warning("hospital %s: its %s split holds no record of class %s: %s", h.name, side,
                        ", ".join(absent), "it still trains; figures of that class are undefined for it"
                        if side == "test" else "it still trains; its local-only model never predicts that class")


def _split_labels(cfg: StudyConfig, outcome: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """What a multi-class or continuous hospital's seeded test split is stratified by: its class index (each
    class keeps its share on both sides), or nothing (one group) for a continuous outcome."""
    if cfg.outcome_kind == "multiclass":
        return outcome.astype(np.int64), tuple(range(len(cfg.class_names)))
    return np.zeros(len(outcome), dtype=np.int64), (0,)


def _build_outcome(cfg: StudyConfig, index: int) -> HospitalSplit:
    """A generated multi-class or continuous hospital (`fedhealth.data.synthetic_outcomes`): the binary
    generator's patients with the complication's severity, or their HbA1c at 12 months, and the truth."""
    from fedhealth.data import synthetic_outcomes

    h = cfg.hospitals[index]
    if cfg.outcome_kind == "multiclass":
        mc = synthetic_outcomes.generate_multiclass(_profile(h), index, cfg.seed)
        features, outcome, truth = mc.features, mc.label, mc.true_probs
    else:
        co = synthetic_outcomes.generate_continuous(_profile(h), index, cfg.seed)
        features, outcome, truth = co.features, co.value, co.true_mean
    labels, classes = _split_labels(cfg, outcome)
    test = stratified_test_mask(labels, cfg.training.test_fraction, cfg.seed, index, h.name, classes=classes)
    return _outcome_split(cfg, index, encode_features(features), outcome, test, truth, len(test), official=False)


def file_records(cfg: StudyConfig, index: int, path: Path | None, check_sha: bool = True) -> ValidRecords:
    """A file hospital's usable rows (validated, consent-filtered), at most the `records` the study declares
    for it. `check_sha`: the file must be the one the study was configured with (simulation; a deployed
    hospital's own file is its own)."""
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
                          is_test=None if records.is_test is None else records.is_test[:declared],
                          time=None if records.time is None else records.time[:declared])
    return records


def _build_from_file(cfg: StudyConfig, index: int, path: Path | None, check_sha: bool = True) -> HospitalSplit:
    """A hospital's own file, validated and consent-filtered, split by the schema's split column or by the
    same seeded stratified split as a generated hospital, and encoded with the schema's fixed references.
    There is no true risk, so no best-possible AUROC (NaN)."""
    h = cfg.hospitals[index]
    schema = cfg.study_schema
    assert schema is not None
    records = file_records(cfg, index, path, check_sha)
    if records.is_test is not None:
        test = records.is_test
    elif cfg.outcome_kind in ("multiclass", "continuous"):
        labels, classes = _split_labels(cfg, records.label)
        test = stratified_test_mask(labels, cfg.training.test_fraction, cfg.seed, index, h.name, classes=classes)
    else:
        test = stratified_test_mask(records.label, cfg.training.test_fraction, cfg.seed, index, h.name)
    if cfg.outcome_kind in ("multiclass", "continuous"):
        return _outcome_split(cfg, index, schema.encode(records.values), records.label, test, None, len(test),
                              official=records.is_test is not None)
    if cfg.outcome_kind == "time_to_event":
        assert records.time is not None  # the schema has a [time] table, so validation read the column
        return _survival_split(cfg, index, schema.encode(records.values), records.time, records.label, test,
                               np.full(len(test), np.nan), len(test), official=records.is_test is not None)
    _enough_to_train(cfg, h, int((~test).sum()), len(test), official=records.is_test is not None)
    x = schema.encode(records.values)
    y = records.label.astype(np.float32)
    _warn_one_class(h, y[~test], y[test])
    return HospitalSplit(
        index=index, hospital=h,
        x_train=x[~test], y_train=y[~test], x_test=x[test], y_test=y[test],
        test_true_risk=np.full(int(test.sum()), np.nan), bayes_auroc=float("nan"),
        prevalence=float(records.label.mean()),
    )


LARGE_DELTA_FACTOR = 10  # delta must stay below 1 / (this x the smallest hospital's training records)


def size_problems(cfg: StudyConfig) -> list[str]:
    """Why the hospitals' records, once built or read, cannot carry this study (one line per problem).

    Why here and not at config load: a hospital's training-record count is known only once its records
    are generated or its file read and split, and a test fraction or a delta that looks harmless in the
    config (`test_fraction = 0.999`, `delta = 0.9`) is wrong only against that count. The splits are built
    once, in this process, and stay cached for the references afterwards, so checking costs no more work.

    - every hospital must keep at least MIN_TRAIN_RECORDS training records;
    - with differential privacy, delta must be below 1 / (10 x the smallest hospital's training records)
      (record level; at hospital level, 1 / (10 x the hospitals)), unless `privacy.allow_large_delta`: a
      delta near 1/n allows a mechanism that publishes one record outright with probability delta. Only a
      delta the study gives is checked: the default (`StudyConfig.privacy_delta`) is derived to meet it."""
    problems: list[str] = []
    smallest: tuple[int, str] | None = None
    for i, h in enumerate(cfg.hospitals):
        try:
            split = load_hospital(cfg, i)
        except (ValueError, OSError) as err:
            text = str(err)
            problems.append(text if h.name in text else f"hospital {h.name!r}: {text}")
            continue
        n_train = len(split.y_train)  # at least MIN_TRAIN_RECORDS: `_enough_to_train` refused fewer
        if smallest is None or n_train < smallest[0]:
            smallest = (n_train, h.name)
    mode = cfg.privacy.mode
    if mode == "none" or cfg.privacy.delta is None or cfg.privacy.allow_large_delta or smallest is None:
        return problems
    delta = cfg.privacy_delta()
    if mode == "record":
        n, name = smallest
        bound = 1.0 / (LARGE_DELTA_FACTOR * max(1, n))
        if delta >= bound:
            problems.append(f"privacy.delta = {delta:g} is not below 1 / ({LARGE_DELTA_FACTOR} x {n}) = {bound:.3g}: "
                            f"hospital {name!r}, the smallest, has {n} training records, and a delta near 1/{n} "
                            "allows one record to be published outright; lower privacy.delta, or set "
                            "privacy.allow_large_delta = true to accept the weaker guarantee")
    else:
        n = len(cfg.hospitals)
        bound = 1.0 / (LARGE_DELTA_FACTOR * n)
        if delta >= bound:
            problems.append(f"privacy.delta = {delta:g} is not below 1 / ({LARGE_DELTA_FACTOR} x {n} hospitals) = "
                            f"{bound:.3g} (hospital-level DP: the unit is a hospital); lower privacy.delta, or set "
                            "privacy.allow_large_delta = true to accept the weaker guarantee")
    return problems
