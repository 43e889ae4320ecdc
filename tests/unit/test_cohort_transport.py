"""A description's vector through SecAgg+'s arithmetic (`fedhealth.statistics.transport`, `study.secagg`).

Flower's own quantiser and dequantiser, as its SecAgg+ client and server apply them (the masks cancel in the
sum, so they are left out here; the federation tests run the whole protocol): with the description's
parameters, the sum of the hospitals' encoded vectors comes back as the exact sum of their count cells, and
of their sum cells to the stated fixed-point resolution.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from fedhealth.api import description_study
from fedhealth.data.cohort_records import cohort_records
from fedhealth.statistics import StatisticsError, local_statistics
from fedhealth.statistics.study import description_terms
from fedhealth.statistics.transport import decode, encode, resolution, sum_cells
from fedhealth.study.secagg import derive_secagg_params
from tests.support import ROOT


def _secure_sum(encoded: list[np.ndarray], clipping_range: float, q: int) -> np.ndarray:
    """What Flower's SecAgg+ client quantises (weight ratio 1) and its server reconstructs, then the mean it
    hands the strategy times the number of contributors."""
    quantized = [quantize([v], clipping_range, q)[0].astype(np.int64) for v in encoded]
    total = np.sum(quantized, axis=0)
    (vector,) = dequantize([total], clipping_range, q)
    vector = vector - (len(encoded) - 1) * clipping_range
    mean = vector * (q / (len(encoded) * q))  # the workflow's weight factor: total ratio m x Q
    return mean * len(encoded)


@pytest.mark.parametrize("config", ["default.toml", "survival.toml", "multiclass.toml", "continuous.toml"])
def test_the_secure_sum_of_encoded_vectors_is_the_sum_of_the_vectors(config):
    cfg = description_study(ROOT / "configs" / config)
    terms = description_terms(cfg)
    params = derive_secagg_params(cfg, 0.0)
    assert params.max_weight == 1 and params.clipping_range == params.quantization_range // 2
    assert params.quantization_std == 0.0 and terms.clipping_range == params.clipping_range
    vectors = [local_statistics(terms.layout, cohort_records(cfg, i).records) for i in range(len(cfg.hospitals))]
    encoded = [encode(terms.layout, v, terms.scale, terms.clipping_range) for v in vectors]
    assert all(np.array_equal(e, np.rint(e)) for e in encoded)  # integers, which the quantiser keeps as they are
    summed = decode(terms.layout, _secure_sum(encoded, params.clipping_range, params.quantization_range),
                    terms.scale)
    exact = np.sum(vectors, axis=0)
    counts = ~sum_cells(terms.layout)
    np.testing.assert_array_equal(summed[counts], exact[counts])
    bound = len(vectors) * 0.5 / terms.scale  # each hospital's sum cells rounded to 1 / scale
    assert np.max(np.abs(summed[~counts] - exact[~counts])) <= bound
    assert bound < 1e-3  # in units of u, summed over thousands of records: a mean off by < 1e-7 of the range


def test_the_scale_leaves_room_for_the_largest_hospital_and_its_noise():
    assert resolution(2.0**28, 20_000) == 2**13
    assert resolution(2.0**28, 20_000, noise_sd=1e5) < 2**13  # noise tails need room too
    with pytest.raises(StatisticsError, match="clipping range"):
        resolution(1000.0, 20_000)


def test_a_cell_outside_the_clipping_range_is_refused_not_clipped():
    cfg = description_study(ROOT / "configs" / "default.toml")
    terms = description_terms(cfg)
    vector = np.zeros(len(terms.layout.cells))
    vector[0] = 2 * terms.clipping_range
    with pytest.raises(StatisticsError, match="outside SecAgg"):
        encode(terms.layout, vector, terms.scale, terms.clipping_range)


def test_the_noise_multiplier_spends_the_requested_epsilon_in_one_release():
    from fedhealth.privacy.ledger import epsilon_of

    cfg = description_study(ROOT / "configs" / "default.toml", epsilon=1.0)
    terms = description_terms(cfg)
    spent = epsilon_of([(terms.noise_multiplier, 1.0, 1)], terms.delta)
    assert 0.99 <= spent <= 1.0
    # the default's secondary and community tiers have three hospitals each: a record reaches two slots
    assert terms.groups == (("tier", "community"), ("tier", "secondary"))
    assert terms.sensitivity == pytest.approx(terms.layout.sensitivity * 2**0.5)
    assert terms.noise_sd == pytest.approx(terms.noise_multiplier * terms.sensitivity)
