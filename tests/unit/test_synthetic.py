"""Tests for the record schema and the synthetic hospital generator (fast: well under 10 s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhealth.data.synthetic import (
    HospitalProfile,
    HospitalRecords,
    bayes_auroc,
    ckd_epi_2021,
    generate_hospital,
    generate_hospitals,
    train_test_split,
)
from fedhealth.study.builtin_schema import (
    ENCODED_WIDTH,
    FEATURE_NAMES,
    FEATURES,
    LABEL,
    MISSABLE_FEATURES,
    REGIONS,
    TIERS,
    encode_features,
    feature_index,
    valid_bounds,
    write_data_dictionary,
)

LABS = ("fasting_glucose", "hba1c", "ldl_cholesterol", "hdl_cholesterol", "creatinine", "egfr")


def _records_equal(a: HospitalRecords, b: HospitalRecords) -> bool:
    return (
        np.array_equal(a.features, b.features, equal_nan=True)
        and np.array_equal(a.label, b.label)
        and np.array_equal(a.true_risk, b.true_risk)
    )


@pytest.fixture(scope="module")
def by_tier() -> dict[str, list[HospitalRecords]]:
    """3,000 records per tier, spread over all five regions (600 per hospital)."""
    out: dict[str, list[HospitalRecords]] = {}
    index = 0
    for tier in TIERS:
        out[tier] = []
        for region in REGIONS:
            profile = HospitalProfile(f"{tier}-{region}", tier, region, 600)
            out[tier].append(generate_hospital(profile, index, seed=11))
            index += 1
    return out


def _pooled(records: list[HospitalRecords]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.concatenate([r.features for r in records]),
        np.concatenate([r.label for r in records]),
        np.concatenate([r.true_risk for r in records]),
    )


# ------------------------------------------------------------------------------------------------ schema


def test_schema_order_and_units() -> None:
    assert FEATURE_NAMES[:5] == ("age", "sex_male", "bmi", "systolic_bp", "diastolic_bp")
    assert FEATURE_NAMES[-1] == "visits_past_year"
    assert len(FEATURES) >= 15
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert all(f.unit for f in FEATURES)
    assert all(f.valid_min < f.valid_max and f.ref_scale > 0 for f in FEATURES)
    assert all(f.valid_min <= f.ref_center <= f.valid_max for f in FEATURES)
    assert dict((f.name, f.unit) for f in FEATURES)["creatinine"] == "umol/L"
    assert set(MISSABLE_FEATURES) == {f.name for f in FEATURES if f.kind == "continuous"}
    with pytest.raises(KeyError, match="expected one of"):
        feature_index("cholesterol")


def test_encode_features_width_no_nan_and_indicators() -> None:
    records = generate_hospital(HospitalProfile("c", "community", "south", 500), 0, seed=3)
    encoded = encode_features(records.features)
    assert encoded.shape == (500, ENCODED_WIDTH)
    assert len(FEATURES) + len(MISSABLE_FEATURES) == ENCODED_WIDTH
    assert encoded.dtype == np.float32
    assert not np.isnan(encoded).any()
    assert np.abs(encoded[:, : len(FEATURES)]).max() <= 6.0
    for j, name in enumerate(MISSABLE_FEATURES):
        missing = np.isnan(records.features[:, feature_index(name)])
        np.testing.assert_array_equal(encoded[:, len(FEATURES) + j], missing.astype(np.float32))
        assert (encoded[missing, feature_index(name)] == 0.0).all()


def test_encode_features_reference_values_and_clipping() -> None:
    raw = np.array([[f.ref_center for f in FEATURES], [f.valid_max for f in FEATURES]], dtype=np.float64)
    raw[1, feature_index("hba1c")] = np.nan
    encoded = encode_features(raw)
    assert np.allclose(encoded[0, : len(FEATURES)], 0.0)
    assert encoded[1, feature_index("creatinine")] == pytest.approx(6.0)  # (1500 - 85) / 30, clipped
    assert encoded[1, feature_index("hba1c")] == 0.0
    assert encoded[1, len(FEATURES) + MISSABLE_FEATURES.index("hba1c")] == 1.0
    with pytest.raises(ValueError, match="shape"):
        encode_features(np.zeros((3, len(FEATURES) - 1)))


def test_data_dictionary_mentions_every_feature(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "data_dictionary.md"
    write_data_dictionary(path)
    text = path.read_text(encoding="utf-8")
    for f in FEATURES:
        assert f"`{f.name}`" in text
        assert f.unit in text
    assert LABEL in text
    assert "missing" in text.lower()


# ------------------------------------------------------------------------------------------------ generator


def test_same_arguments_give_identical_arrays() -> None:
    profile = HospitalProfile("a", "secondary", "north", 2000)
    a = generate_hospital(profile, 4, seed=123)
    b = generate_hospital(profile, 4, seed=123)
    assert _records_equal(a, b)
    assert a.site_bias == b.site_bias
    assert a.features.shape == (2000, len(FEATURES))
    assert a.features.dtype == np.float64 and a.label.dtype == np.int64 and a.true_risk.dtype == np.float64
    assert len(a) == 2000


def test_different_seed_or_index_gives_different_records() -> None:
    profile = HospitalProfile("a", "secondary", "north", 2000)
    base = generate_hospital(profile, 4, seed=123)
    assert not _records_equal(base, generate_hospital(profile, 4, seed=124))
    assert not _records_equal(base, generate_hospital(profile, 5, seed=123))
    assert base.site_bias != generate_hospital(profile, 5, seed=123).site_bias


def test_independent_of_call_order() -> None:
    profiles = [
        HospitalProfile("t", "tertiary", "east", 800),
        HospitalProfile("s", "secondary", "west", 300),
        HospitalProfile("c", "community", "central", 500),
    ]
    forward = generate_hospitals(profiles, seed=9)
    backward = [generate_hospital(profiles[i], i, seed=9) for i in (2, 1, 0)][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert _records_equal(a, b)
    # Another hospital generated in between changes nothing either.
    generate_hospital(HospitalProfile("x", "tertiary", "north", 10_000), 99, seed=9)
    assert _records_equal(forward[1], generate_hospital(profiles[1], 1, seed=9))


def test_profile_validation_names_allowed_values() -> None:
    with pytest.raises(ValueError, match="tertiary, secondary, community"):
        HospitalProfile("h", "clinic", "north", 10)
    with pytest.raises(ValueError, match="north, south"):
        HospitalProfile("h", "tertiary", "mars", 10)
    with pytest.raises(ValueError, match="positive integer"):
        HospitalProfile("h", "tertiary", "north", 0)


def test_prevalence_ordered_by_tier(by_tier: dict[str, list[HospitalRecords]]) -> None:
    prevalence = {tier: _pooled(recs)[1].mean() for tier, recs in by_tier.items()}
    assert prevalence["tertiary"] > prevalence["secondary"] > prevalence["community"]
    assert 0.13 < prevalence["tertiary"] < 0.25
    assert 0.07 < prevalence["secondary"] < 0.16
    assert 0.03 < prevalence["community"] < 0.11


def test_true_risk_matches_labels(by_tier: dict[str, list[HospitalRecords]]) -> None:
    _, label, risk = _pooled([r for recs in by_tier.values() for r in recs])
    assert ((risk > 0.0) & (risk < 1.0)).all()
    assert set(np.unique(label)) == {0, 1}
    assert abs(label.mean() - risk.mean()) < 0.015


def test_community_has_more_missing_values(by_tier: dict[str, list[HospitalRecords]]) -> None:
    lab_columns = [feature_index(n) for n in LABS]
    rate = {tier: np.isnan(_pooled(recs)[0][:, lab_columns]).mean() for tier, recs in by_tier.items()}
    assert rate["community"] > rate["secondary"] > rate["tertiary"]
    assert 0.01 < rate["tertiary"] < 0.07
    assert 0.12 < rate["community"] < 0.40
    for recs in by_tier.values():
        x = _pooled(recs)[0]
        assert not np.isnan(x[:, feature_index("age")]).any()
        assert not np.isnan(x[:, feature_index("sex_male")]).any()


def test_community_measurements_are_noisier(by_tier: dict[str, list[HospitalRecords]]) -> None:
    def glucose_hba1c_correlation(records: list[HospitalRecords]) -> float:
        x = _pooled(records)[0]
        g, h = x[:, feature_index("fasting_glucose")], x[:, feature_index("hba1c")]
        ok = ~np.isnan(g) & ~np.isnan(h)
        return float(np.corrcoef(g[ok], h[ok])[0, 1])

    corr = {tier: glucose_hba1c_correlation(recs) for tier, recs in by_tier.items()}
    assert corr["tertiary"] > corr["secondary"] > corr["community"]
    assert corr["tertiary"] > 0.85


def test_observed_values_within_schema_ranges_and_precision() -> None:
    lo, hi = valid_bounds()
    index = 0
    for tier in TIERS:
        for region in REGIONS:
            x = generate_hospital(HospitalProfile("h", tier, region, 1500), index, seed=5).features
            index += 1
            observed = ~np.isnan(x)
            assert ((x >= lo) | ~observed).all() and ((x <= hi) | ~observed).all()
            for name in ("age", "systolic_bp", "diastolic_bp", "creatinine", "egfr", "visits_past_year"):
                col = x[:, feature_index(name)]
                col = col[~np.isnan(col)]
                np.testing.assert_array_equal(col, np.round(col))
            for f in FEATURES:
                if f.kind == "binary":
                    assert set(np.unique(x[:, feature_index(f.name)])) <= {0.0, 1.0}


def test_egfr_consistent_with_creatinine() -> None:
    x = generate_hospital(HospitalProfile("h", "tertiary", "east", 3000), 0, seed=2).features
    creat, egfr = x[:, feature_index("creatinine")], x[:, feature_index("egfr")]
    ok = ~np.isnan(creat) & (egfr < 150)
    recomputed = ckd_epi_2021(creat[ok], x[ok, feature_index("age")], x[ok, feature_index("sex_male")])
    assert np.abs(recomputed - egfr[ok]).max() <= 0.5 + 1e-9
    assert np.array_equal(np.isnan(creat), np.isnan(egfr))


def test_bayes_auroc_in_plausible_range(by_tier: dict[str, list[HospitalRecords]]) -> None:
    for recs in by_tier.values():
        _, label, risk = _pooled(recs)
        pooled = HospitalRecords(recs[0].profile, _pooled(recs)[0], label, risk)
        assert 0.7 < bayes_auroc(pooled) < 0.95


def test_to_frame_columns() -> None:
    records = generate_hospital(HospitalProfile("h", "community", "west", 50), 0, seed=1)
    frame = records.to_frame()
    assert list(frame.columns) == [*FEATURE_NAMES, LABEL, "true_risk"]
    assert len(frame) == 50
    np.testing.assert_array_equal(frame[LABEL].to_numpy(), records.label)


def test_population_recipe_deterministic_and_spread() -> None:
    """Many-hospital federations come from the config's population recipe (one place for it)."""
    from fedhealth.study.config import PopulationConfig, expand_population

    recipe = PopulationConfig(count=30, tier_weights={"tertiary": 1, "secondary": 2, "community": 3})
    profiles = expand_population(recipe, seed=4)
    assert profiles == expand_population(recipe, seed=4)
    assert {p.tier for p in profiles} == set(TIERS)
    sizes = [p.records for p in profiles]
    assert max(sizes) / min(sizes) > 10
    assert len({p.name for p in profiles}) == 30


# ------------------------------------------------------------------------------------------------ split


def test_split_is_stratified_and_deterministic() -> None:
    records = generate_hospital(HospitalProfile("h", "secondary", "south", 2000), 3, seed=8)
    train, test = train_test_split(records, 0.25, seed=8, index=3)
    again_train, again_test = train_test_split(records, 0.25, seed=8, index=3)
    assert _records_equal(train, again_train) and _records_equal(test, again_test)
    assert len(train) + len(test) == len(records)
    assert abs(len(test) - 500) <= 2
    positives = int(records.label.sum())
    assert int(test.label.sum()) == round(0.25 * positives)
    assert abs(test.label.mean() - train.label.mean()) < 0.01
    # The two sides partition the rows: together they hold each row exactly once.
    both = np.concatenate([train.true_risk, test.true_risk])
    np.testing.assert_array_equal(np.sort(both), np.sort(records.true_risk))
    other_train, _ = train_test_split(records, 0.25, seed=9, index=3)
    assert not _records_equal(train, other_train)


def _tiny(labels: list[int]) -> HospitalRecords:
    n = len(labels)
    return HospitalRecords(
        profile=HospitalProfile("tiny-clinic", "community", "west", n),
        features=np.zeros((n, len(FEATURES))),
        label=np.array(labels, dtype=np.int64),
        true_risk=np.full(n, 0.1),
    )


def test_split_small_hospital_keeps_both_classes_on_each_side() -> None:
    train, test = train_test_split(_tiny([1, 1, 0, 0, 0, 0, 0, 0]), 0.05, seed=0, index=0)
    for side in (train, test):
        assert set(side.label.tolist()) == {0, 1}
    train, test = train_test_split(_tiny([1, 1, 0, 0]), 0.9, seed=0, index=0)
    assert set(train.label.tolist()) == {0, 1} == set(test.label.tolist())


def test_a_class_with_fewer_than_two_records_trains_and_is_never_tested() -> None:
    """A site with one positive (or none) is split, not refused (issue 18): the lone positive trains, the test
    side holds negatives only, and `one_class_sides` says which side holds one class."""
    from fedhealth.data.synthetic import one_class_sides

    train, test = train_test_split(_tiny([1, 0, 0, 0, 0]), 0.3, seed=0, index=0)
    assert list(train.label).count(1) == 1 and 1 not in test.label and len(test.label) == 1
    assert one_class_sides(train.label, test.label) == ["its test split holds 0 positive and 1 negative records"]
    train, test = train_test_split(_tiny([0, 0, 0, 0, 0]), 0.4, seed=0, index=0)
    assert (len(train.label), len(test.label)) == (3, 2)
    assert one_class_sides(train.label, test.label) == ["its training split holds 0 positive and 3 negative records",
                                                        "its test split holds 0 positive and 2 negative records"]
    both, other = train_test_split(_tiny([1, 1, 0, 0]), 0.5, seed=0, index=0)
    assert one_class_sides(both.label, other.label) == []


def test_split_raises_naming_the_hospital() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(_tiny([1, 1, 0, 0]), 1.0, seed=0, index=0)
