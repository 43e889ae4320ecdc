"""fedhealth.privacy.rdp against Opacus itself: the epsilon is Opacus's RDP accountant's, to the bit, and the
calibrated noise never spends more than its target by that accountant, nor much less."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedhealth.privacy import rdp

HISTORIES = [
    [(1.0, 64 / 5000, 780)],
    [(0.8, 0.01, 1000)],
    [(1.5, 0.02, 2500)],
    [(0.73, 1 / 37, 37), (0.73, 1 / 37, 37), (1.1, 1 / 37, 74)],
    [(2.3, 0.5, 2), (0.6, 0.004, 10)],
    [(5.0, 1.0, 10)],  # q = 1: hospital-level DP's single Gaussian per round
]


def _opacus(history, delta):
    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta))


@pytest.mark.parametrize("history", HISTORIES, ids=str)
@pytest.mark.parametrize("delta", [1e-5, 1e-7])
def test_epsilon_is_opacus_rdp_accountants_to_the_bit(history, delta):
    assert rdp.epsilon(history, delta) == _opacus(history, delta)
    assert rdp.epsilon(history, delta) == _opacus(history, delta)  # from the one-step cache, the same again


def test_the_documented_reference_values_hold():
    """FLOWER-NOTES' RDP column (Google's dp-accounting with Opacus's orders), to the 4 decimals it gives
    (the second differs from Opacus by 1.7e-4, within its rounding and the two libraries' conversions)."""
    assert rdp.epsilon([(1.0, 64 / 5000, 780)], 1e-5) == pytest.approx(2.4191, abs=5e-4)
    assert rdp.epsilon([(0.8, 0.01, 1000)], 1e-5) == pytest.approx(3.6956, abs=5e-4)
    assert rdp.epsilon([(1.5, 0.02, 2500)], 1e-6) == pytest.approx(3.9218, abs=5e-4)


@pytest.mark.parametrize(("target", "q", "steps"), [(8.0, 1 / 37, 370), (8.0, 0.5, 20), (3.0, 1 / 37, 370),
                                                    (1.0, 1 / 37, 370), (8.0, 1 / 235, 2350), (2.0, 1.0, 10)])
def test_the_calibrated_noise_spends_at_most_the_target_and_is_near_opacus_own_search(target, q, steps):
    sigma = rdp.calibrate(target, 1e-5, q, steps)
    spent = _opacus([(sigma, q, steps)], 1e-5)
    assert spent <= target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps,
                                      accountant="rdp", epsilon_tolerance=0.005)
    assert theirs <= sigma * (1 + 1e-12) and sigma <= theirs * 1.02  # never less noise, at most 2 % more
    assert spent >= 0.95 * target  # and most of the budget is used


def test_a_target_no_noise_can_meet_is_refused():
    with pytest.raises(ValueError, match="no noise multiplier"):
        rdp.calibrate(1e-9, 1e-12, 0.9, 10_000)


def test_the_orders_are_opacus_defaults():
    assert rdp.orders() == tuple(RDPAccountant.DEFAULT_ALPHAS)
    assert np.all(np.diff(rdp.orders()) > 0)
