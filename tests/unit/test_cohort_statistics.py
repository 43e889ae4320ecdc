"""Federated cohort statistics (fedhealth.statistics): exact sums without noise, the sensitivity bound, the
Gaussian mechanism's noise and ledger charge, Kaplan-Meier and log-rank, small-cell suppression."""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedhealth.data.export import hospital_frame, kind_schema
from fedhealth.data.synthetic import HospitalProfile
from fedhealth.data.validation import ValidRecords, validate_table
from fedhealth.privacy.ledger import BudgetExceeded, PrivacyLedger, epsilon_of
from fedhealth.privacy.secret import HospitalSecret
from fedhealth.statistics import (
    StatisticsError,
    StatisticsLayout,
    charge_release,
    cohort_table,
    figure_noise_sd,
    kaplan_meier,
    local_statistics,
    logrank,
    noise_for_release,
    release_statistics,
)
from fedhealth.statistics.layout import OUTCOME, histogram_edges
from fedhealth.statistics.table import histogram_quantile
from fedhealth.study.schema import StudySchema
from tests.support import check_kaplan_meier_against_scikit_survival, times_at_interval_ends

KINDS = ("binary", "multiclass", "continuous", "time_to_event")
PROFILES = [HospitalProfile("north-gen", "tertiary", "north", 400),
            HospitalProfile("south-com", "community", "south", 250),
            HospitalProfile("east-sec", "secondary", "east", 300)]
CATEGORIES = ["urban", "rural", "remote", "island"]
SEED = 11


@cache
def _schema(kind: str) -> StudySchema:
    """The built-in schema of `kind` plus one categorical column (the built-in study has none)."""
    data: dict[str, Any] = kind_schema(kind).model_dump(mode="json", exclude_none=True)
    data["columns"].append({"name": "residence", "kind": "categorical", "categories": CATEGORIES})
    return StudySchema.model_validate(data)


@cache
def _hospitals(kind: str) -> tuple[ValidRecords, ...]:
    out = []
    for i, profile in enumerate(PROFILES):
        frame = hospital_frame(kind, profile, i, SEED)
        rng = np.random.default_rng(i)
        residence = rng.choice(CATEGORIES, size=len(frame), p=[0.6, 0.3, 0.09, 0.01]).astype(object)
        residence[rng.random(len(frame)) < 0.05] = None
        frame["residence"] = residence
        records = validate_table(frame, _schema(kind), profile.name)
        assert records.report.ok, records.report.lines()
        out.append(records)
    return tuple(out)


def _pool(records: tuple[ValidRecords, ...]) -> ValidRecords:
    time = None if records[0].time is None else np.concatenate([r.time for r in records])
    return ValidRecords(np.concatenate([r.values for r in records]), np.concatenate([r.label for r in records]),
                        None, records[0].report, time)


def _one(records: ValidRecords, rows: np.ndarray | list[int]) -> ValidRecords:
    time = None if records.time is None else records.time[rows]
    return ValidRecords(records.values[rows], records.label[rows], None, records.report, time)


@pytest.mark.parametrize("kind", KINDS)
def test_summed_vectors_equal_the_pooled_vector_and_the_table_equals_pandas(kind):
    layout = StatisticsLayout.from_schema(_schema(kind))
    parts = [local_statistics(layout, r) for r in _hospitals(kind)]
    pooled = _pool(_hospitals(kind))
    summed, direct = np.sum(parts, axis=0), local_statistics(layout, pooled)
    assert len(summed) == len(layout.cells)
    counts = np.array([":sum_unit" not in c for c in layout.cells])
    assert np.array_equal(summed[counts], direct[counts]) and np.all(summed[counts] == np.rint(summed[counts]))
    np.testing.assert_allclose(summed[~counts], direct[~counts], rtol=1e-9)

    table = cohort_table(layout, summed, suppress_below=0)
    assert table.n == len(pooled.label)
    for i, spec in enumerate(_schema(kind).columns):
        x = pd.Series(pooled.values[:, i])
        assert table.figure(spec.name, "missing share").value == pytest.approx(x.isna().mean(), rel=1e-9, abs=1e-12)
        valid = x.dropna()
        if spec.kind == "categorical":
            shares = valid.value_counts(normalize=True)
            for k, name in enumerate(CATEGORIES):
                assert table.figure(spec.name, f"share {name}").value == pytest.approx(shares.get(float(k), 0.0),
                                                                                       rel=1e-9)
        elif spec.kind == "binary":
            assert table.figure(spec.name, "share of 1").value == pytest.approx(valid.mean(), rel=1e-9)
        else:
            _check_numeric(table, spec.name, valid.to_numpy(), layout)
    out = layout.block(OUTCOME)
    if kind == "binary":
        assert table.figure(OUTCOME, "prevalence").value == pytest.approx(pooled.label.mean(), rel=1e-9)
    elif kind == "multiclass":
        shares = pd.Series(pooled.label).value_counts(normalize=True)
        for k, name in enumerate(out.labels):
            assert table.figure(OUTCOME, f"share {name}").value == pytest.approx(shares.get(k, 0.0), rel=1e-9)
    elif kind == "continuous":
        _check_numeric(table, OUTCOME, pooled.label.astype(np.float64), layout)
    else:
        late = pooled.time > out.edges[-1]
        assert table.figure(OUTCOME, "event share").value == pytest.approx(
            (pooled.label.astype(bool) & ~late).mean(), rel=1e-9)
    assert all(f["error"] == 0.0 for f in table.rows())


def _check_numeric(table, name: str, values: np.ndarray, layout: StatisticsLayout) -> None:
    assert table.figure(name, "mean").value == pytest.approx(values.mean(), rel=1e-9)
    assert table.figure(name, "sd").value == pytest.approx(values.std(ddof=1), rel=1e-9)
    block = layout.block(name)
    edges = histogram_edges(block, layout.bins)
    hist, _ = np.histogram(values, bins=layout.bins, range=(block.low, block.high))
    for statistic, p in (("median", 0.5), ("q1", 0.25), ("q3", 0.75)):
        assert table.figure(name, statistic).value == pytest.approx(histogram_quantile(hist, edges, p), rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_one_record_moves_the_vector_by_at_most_the_sensitivity_and_some_record_nearly_attains_it(kind):
    layout = StatisticsLayout.from_schema(_schema(kind))
    pooled = _pool(_hospitals(kind))
    rng = np.random.default_rng(5)
    rows = rng.choice(len(pooled.label), size=300, replace=False)
    norms = [np.linalg.norm(local_statistics(layout, _one(pooled, [r]))) for r in rows]
    # a record at the upper bounds of every range, every flag 1, nothing missing: the worst case
    schema = _schema(kind)
    extreme = np.array([[c.bounds[1] if c.kind != "categorical" else 0.0 for c in schema.columns]])
    label = {"binary": np.array([1]), "multiclass": np.array([2]), "time_to_event": np.array([1])}.get(
        kind, np.array([schema.value.max if schema.value else 0.0]))
    time = None if kind != "time_to_event" else np.array([schema.time.intervals[-1]])
    worst = ValidRecords(extreme, label, None, pooled.report, time)
    missing = ValidRecords(np.full((1, len(schema.columns)), np.nan), label, None, pooled.report, time)
    norms += [np.linalg.norm(local_statistics(layout, r)) for r in (worst, missing)]
    assert max(norms) <= layout.sensitivity * (1 + 1e-12)
    assert max(norms) >= 0.9 * layout.sensitivity
    # adding one record to a hospital's records: the difference is that record's own vector
    base = _hospitals(kind)[0]
    with_one = ValidRecords(np.vstack([base.values, extreme]), np.concatenate([base.label, label]), None, base.report,
                            None if time is None else np.concatenate([base.time, time]))
    diff = local_statistics(layout, with_one) - local_statistics(layout, base)
    assert np.linalg.norm(diff) <= layout.sensitivity * (1 + 1e-12)


def test_kaplan_meier_equals_scikit_survival_on_times_moved_to_interval_ends():
    layout = StatisticsLayout.from_schema(_schema("time_to_event"))
    pooled = _pool(_hospitals("time_to_event"))
    summed = np.sum([local_statistics(layout, r) for r in _hospitals("time_to_event")], axis=0)
    curve = kaplan_meier(layout, summed)
    edges = layout.block(OUTCOME).edges
    check_kaplan_meier_against_scikit_survival(curve, pooled.time, pooled.label, edges)
    assert np.all(curve.variance >= 0) and np.all(np.diff(curve.survival) <= 0)
    noisy = kaplan_meier(layout, summed, noise_sd=3.0)
    assert np.all(noisy.variance >= curve.variance) and noisy.variance[-1] > curve.variance[-1]


def test_logrank_equals_scikit_survival_compare_survival():
    from sksurv.compare import compare_survival
    from sksurv.util import Surv

    layout = StatisticsLayout.from_schema(_schema("time_to_event"))
    hospitals = _hospitals("time_to_event")
    first = local_statistics(layout, hospitals[0])
    second = np.sum([local_statistics(layout, r) for r in hospitals[1:]], axis=0)
    result = logrank(layout, first, second)
    pooled = _pool(hospitals)
    edges = layout.block(OUTCOME).edges
    group = np.repeat([0, 1], [len(hospitals[0].label), len(pooled.label) - len(hospitals[0].label)])
    event = pooled.label.astype(bool) & (pooled.time <= edges[-1])
    y = Surv.from_arrays(event, times_at_interval_ends(pooled.time, edges))
    chisq, p = compare_survival(y, group)
    assert result.statistic == pytest.approx(chisq, rel=1e-9)
    assert result.p_value == pytest.approx(p, rel=1e-9)


def _secret(byte: int) -> HospitalSecret:
    return HospitalSecret(bytes([byte]) * 32)


def test_noise_has_the_stated_sd_and_comes_only_from_the_secret_and_release_key():
    layout = StatisticsLayout.from_schema(_schema("binary"))
    z = 0.8
    draws = np.concatenate([noise_for_release(layout, z, _secret(1), f"study:{k}") for k in range(60)])
    sd = z * layout.sensitivity
    assert figure_noise_sd(layout, z) == pytest.approx(sd)
    assert figure_noise_sd(layout, z, hospitals=4) == pytest.approx(2 * sd)
    assert np.std(draws) == pytest.approx(sd, rel=0.03) and abs(np.mean(draws)) < 0.03 * sd
    again = noise_for_release(layout, z, _secret(1), "study:0")
    assert np.array_equal(again, draws[:len(layout.cells)])
    assert not np.allclose(again, noise_for_release(layout, z, _secret(2), "study:0"))
    assert not np.allclose(again, noise_for_release(layout, z, _secret(1), "study:1"))
    public = np.random.default_rng(SEED).normal(0.0, sd, size=len(layout.cells))  # what the server could draw
    assert not np.allclose(again, public)
    with pytest.raises(StatisticsError, match="release key"):
        noise_for_release(layout, z, _secret(1), "")


def test_a_release_charges_one_gaussian_step_composes_with_training_and_stops_at_the_cap(tmp_path):
    layout = StatisticsLayout.from_schema(_schema("binary"))
    vector = local_statistics(layout, _hospitals("binary")[0])
    delta, z = 1e-5, 2.0
    ledger = PrivacyLedger(tmp_path / "h.json", "h", cap=50.0, delta=delta)
    ledger.charge(1, 1.1, 0.02, 200, 1.0, study="s", release="train-1")
    training = ledger.history()
    released = release_statistics(ledger, layout, vector, z, _secret(1), release="stats-1", study="s",
                                  server_round=2)
    assert ledger.spent == pytest.approx(epsilon_of([*training, (z, 1.0, 1)], delta), rel=1e-12)
    assert ledger.entries[-1].steps == 1 and ledger.entries[-1].sample_rate == 1.0
    assert ledger.entries[-1].max_grad_norm == pytest.approx(layout.sensitivity)
    assert np.array_equal(released, vector + noise_for_release(layout, z, _secret(1), "stats-1"))
    retry = charge_release(ledger, layout, z, release="stats-1", study="s", server_round=2)
    assert retry == ledger.entries[-1] and len(ledger.entries) == 2  # a retry costs nothing

    tight = PrivacyLedger(tmp_path / "t.json", "t", cap=epsilon_of([(z, 1.0, 1)], delta) * 1.01, delta=delta)
    charge_release(tight, layout, z, release="a", study="s", server_round=1)
    before = (tmp_path / "t.json").read_text()
    with pytest.raises(BudgetExceeded):
        release_statistics(tight, layout, vector, z, _secret(1), release="b", study="s", server_round=2)
    assert (tmp_path / "t.json").read_text() == before and len(tight.entries) == 1


def test_small_categories_are_withheld_with_a_reason_and_threshold_zero_shows_them():
    layout = StatisticsLayout.from_schema(_schema("binary"))
    vector = np.sum([local_statistics(layout, r) for r in _hospitals("binary")], axis=0)
    b = layout.block("residence")
    vector[b.start + 3] = 3  # "island": 3 records
    table = cohort_table(layout, vector, suppress_below=5)
    island = table.figure("residence", "share island")
    assert island.value is None and "fewer than 5" in island.suppressed
    secondary = [f for f in table.figures if f.variable == "residence" and f.statistic.startswith("share ")
                 and f.value is None and f.statistic != "share island"]
    assert len(secondary) == 1 and "subtraction" in secondary[0].suppressed  # not recoverable as 1 - the rest
    for row in table.rows():
        if row["suppressed"] and row["suppressed"].startswith("suppressed"):
            assert row["value"] is None
    shown = cohort_table(layout, vector, suppress_below=0).figure("residence", "share island")
    assert shown.value is not None and shown.value > 0 and shown.suppressed is None


def test_noised_tables_clamp_counts_and_state_error_bounds():
    layout = StatisticsLayout.from_schema(_schema("continuous"))
    exact = np.sum([local_statistics(layout, r) for r in _hospitals("continuous")], axis=0)
    sd = figure_noise_sd(layout, 1.0, hospitals=3)
    noisy = exact + noise_for_release(layout, 1.0, _secret(3), "t") * math.sqrt(3)
    table = cohort_table(layout, noisy, noise_sd=sd)
    plain = cohort_table(layout, exact)
    assert isinstance(table.n, int) and table.n >= 0
    mean, truth = table.figure("age", "mean"), plain.figure("age", "mean").value
    assert mean.error > 0 and abs(mean.value - truth) < 4 * mean.error
    assert all(r["error"] >= 0 for r in table.rows())


def test_wrong_vectors_and_layouts_are_refused_naming_what_is_wrong():
    layout = StatisticsLayout.from_schema(_schema("binary"))
    other = StatisticsLayout.from_schema(_schema("binary"), bins=10)
    assert layout.digest == StatisticsLayout.from_schema(_schema("binary")).digest != other.digest
    vector = local_statistics(layout, _hospitals("binary")[0])
    with pytest.raises(StatisticsError, match=f"has {len(layout.cells)} cells, got shape") as err:
        cohort_table(layout, vector[:-1])
    assert str(vector[1]) not in str(err.value)
    with pytest.raises(StatisticsError, match="same schema and bins"):
        cohort_table(layout, vector, digest=other.digest)
    with pytest.raises(StatisticsError, match="time_to_event"):
        kaplan_meier(layout, vector)
    bad = vector.copy()
    bad[3] = np.nan
    with pytest.raises(StatisticsError, match="1 cells .* not finite"):
        cohort_table(layout, bad)
