"""Secure aggregation (Flower's SecAgg+): derived parameters, refusals, and the checks on masked vectors and
on a hospital's weight. Real federations with the protocol: tests/integration/test_secagg_federation.py."""

from __future__ import annotations

import numpy as np
import pytest

from fedhealth.data.study_file import load_config
from fedhealth.privacy.hospital_level import calibrated_secagg_params
from fedhealth.study.config import ConfigError
from fedhealth.study.secagg import (
    MODULUS,
    ROUND_FAILURE_TARGET,
    quantization_range,
    shares_and_threshold,
)
from tests.support import SMOKE, smoke

# -- derived parameters --------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [3, 4, 5, 15, 16, 20, 50, 100, 1000])
@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.3])
def test_derived_shares_and_threshold_are_valid_for_flower(m, dropout):
    k, t = shares_and_threshold(m, dropout)
    assert 3 <= k <= m
    assert k % 2 == 1 or k == m  # Flower breaks on an even neighbourhood smaller than the federation
    assert k // 2 + 1 <= t < k  # a strict majority, below all shares


@pytest.mark.parametrize("m", [20, 100, 1000])
def test_neighbourhoods_grow_slowly_and_meet_the_failure_target(m):
    from fedhealth.study.secagg import _failure_probability

    k, t = shares_and_threshold(m, 0.1)
    assert k <= 4 * np.log2(m) + 3
    assert _failure_probability(m, k, t, 0.1) <= ROUND_FAILURE_TARGET


@pytest.mark.parametrize("m", [3, 20, 100, 5000])
def test_quantisation_never_lets_the_sum_wrap(m):
    q = quantization_range(m)
    assert q & (q - 1) == 0 and m * q < MODULUS and 2 * m * q >= MODULUS or q == 2**30


def test_smoke_study_parameters():
    p = calibrated_secagg_params(smoke())
    assert (p.num_shares, p.reconstruction_threshold, p.tolerated_dropouts) == (3, 2, 1)
    assert p.max_weight == 1500  # the largest hospital's records
    assert p.hospitals_per_round * p.quantization_range < p.modulus_range
    hospital = calibrated_secagg_params(smoke("privacy.mode=hospital", "privacy.noise_multiplier=1.0"))
    assert hospital.max_weight == 1 and hospital.clipping_range == 1.0
    distributed = calibrated_secagg_params(smoke("privacy.mode=hospital", "privacy.noise_multiplier=1.0",
                                              "privacy.hospital_noise=distributed"))
    # privacy.min_contributors (3) shares of variance sigma^2 C^2 / 3 add up to the central noise
    assert distributed.noise_std_per_hospital == pytest.approx(1 / np.sqrt(3))
    assert distributed.clipping_range > 1.0 + 7 * distributed.noise_std_per_hospital


@pytest.mark.parametrize("override, message", [
    ("federation.secure_aggregation.num_shares=4", "is even"),
    ("federation.secure_aggregation.num_shares=9", "exceeds the 5 hospitals"),
    ("federation.secure_aggregation.reconstruction_threshold=5", "must be below the 5 shares"),
    ("federation.secure_aggregation.reconstruction_threshold=2", "not a strict majority"),
    ("federation.secure_aggregation.max_weight=1000", "below hospital 'h1'"),
])
def test_invalid_protocol_parameters_are_refused_with_the_fix(tmp_path, override, message):
    text = 'name = "five"\n' + "".join(
        f'[[hospitals]]\nname = "h{i}"\ntier = "secondary"\nregion = "north"\nrecords = {2000 if i == 1 else 400}\n'
        for i in range(5))
    path = tmp_path / "five.toml"
    path.write_text(text)
    load_config(path)  # the derived parameters are fine
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_two_hospitals_cannot_hide_their_updates_from_each_other(tmp_path):
    text = SMOKE.read_text().split("[[hospitals]]")
    path = tmp_path / "two.toml"
    path.write_text("[[hospitals]]".join(text[:3]))
    with pytest.raises(ConfigError, match="at least 3 hospitals per round.*enabled = false"):
        load_config(path)
    assert not load_config(path, ["federation.secure_aggregation.enabled=false"]).federation.secure_aggregation.enabled


def test_distributed_noise_needs_hospital_mode_and_secure_aggregation():
    with pytest.raises(ConfigError, match="hospital_noise"):
        smoke("privacy.hospital_noise=distributed")
    with pytest.raises(ConfigError, match="hospital_noise"):
        smoke("privacy.mode=hospital", "privacy.noise_multiplier=1.0", "privacy.hospital_noise=distributed",
              "federation.secure_aggregation.enabled=false")


def test_dropout_injection_names_a_real_hospital():
    with pytest.raises(ConfigError, match="no hospital named nowhere"):
        smoke('testing.dropouts=[{hospital = "nowhere", stage = "unmask"}]')


def test_a_hospitals_minimum_aggregate_and_its_public_decline_reasons():
    from fedhealth.hospital.secure_aggregation import minimum_aggregate
    from fedhealth.study.policy import SitePolicy
    from fedhealth.wire import declined_from_error, public_decline_reason

    assert minimum_aggregate(None) == 3 and minimum_aggregate(SitePolicy(min_hospitals=1)) == 3
    assert minimum_aggregate(SitePolicy(min_hospitals=7)) == 7
    own = ("hospital county: ledger /secure/ledgers/county.json: epsilon 5.71 would pass its cap of 5.0 "
           "after round 3 (1,234 records); declining this round")
    public = public_decline_reason(4, own)
    assert public == "fedhealth-declined: hospital 4 declined this round (its privacy ledger)"
    assert not any(part in public for part in ("/", "5.7", "1,234", "county"))
    assert declined_from_error(f"Exception ...<'{public}'>") == (4, "its privacy ledger")
    assert public_decline_reason(0, "epsilon 9.1 above its cap").endswith("(its privacy budget)")
    assert public_decline_reason(0, "model 'mlp' is not allowed by the site policy").endswith("(its site policy)")
    assert public_decline_reason(0, "something unforeseen: 42").endswith("(its own checks)")
    assert declined_from_error("hospital 2 vanished at SecAgg+ stage 'setup'") is None


# -- the screen on masked vectors ----------------------------------------------------------------------------

def _reply(arrays: list[np.ndarray]):
    from flwr.app import ConfigRecord, RecordDict
    from flwr.common import ndarray_to_bytes
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    record = ConfigRecord({Key.MASKED_PARAMETERS: [ndarray_to_bytes(a) for a in arrays]})
    return RecordDict({RECORD_KEY_CONFIGS: record})


def test_malformed_masked_vectors_are_named():
    from fedhealth.coordinator.secure_aggregation import masked_vector_problem

    shapes = [(1, 27), (1,)]
    good = [np.array([5]), np.zeros((1, 27), dtype=np.int64), np.array([MODULUS - 1])]
    assert masked_vector_problem(_reply(good), shapes, MODULUS) is None
    cases = {
        "has 2 arrays, expected 3": good[:2],
        "shape (27,), expected (1, 27)": [good[0], np.zeros(27, dtype=np.int64), good[2]],
        "dtype float64, expected integers": [good[0], np.zeros((1, 27)), good[2]],
        "outside [0, 4294967296)": [good[0], good[1], np.array([MODULUS])],
    }
    for expected, arrays in cases.items():
        assert expected in masked_vector_problem(_reply(arrays), shapes, MODULUS)


def test_a_hospital_refuses_a_weight_above_max_weight():
    from fedhealth.hospital.secure_aggregation import UpdateRefused, _prepare_for_masking

    cfg = smoke()
    with pytest.raises(UpdateRefused, match="exceeds the study's SecAgg\\+ max_weight 1500"):
        _prepare_for_masking(cfg, [np.zeros((1, 27), np.float32)], 1501, {})
    metrics: dict = {}
    big = [np.full((1, 27), 9.0, np.float32)]
    _prepare_for_masking(cfg, big, 1500, metrics)
    assert metrics["secagg_clipped"] == 27  # reported, never silent
