"""Opacus's RDP accountant, cheap enough for a thousand hospitals, computing what Opacus computes.

The accountant is the same as everywhere else in fedhealth: Rényi DP of the Poisson-subsampled
Gaussian mechanism at Opacus's default orders (`RDPAccountant.DEFAULT_ALPHAS`), composed by adding,
turned into (epsilon, delta) by Opacus's `get_privacy_spent`. What changes is how often it runs. On a
100-hospital DP study the accountant was 85 % of the federation's time (profile in docs/results.md):
each fractional order is a series Opacus sums term by term in Python, and both the noise calibration
(a bisection, about 20 evaluations per hospital) and the ledger (one evaluation per charge) paid it.

- `epsilon(history, delta)` is `RDPAccountant.get_epsilon` bit for bit. Opacus computes the RDP of
  `steps` steps as the one-step vector times `steps`; the one-step vector of each (sigma, q) is kept for
  the life of the process, so a hospital's later charges (the same sigma and q every round) cost a
  multiplication.
- `calibrate(target, delta, q, steps)` runs Opacus's own bisection (`get_noise_multiplier`: the same
  bracket doubling from 20, the same tolerance) but evaluates epsilon at Opacus's *integer* orders only,
  which are a closed-form sum instead of a series. Epsilon is a minimum over orders, so epsilon at a
  subset of the orders is never below epsilon at all of them: the noise found spends *at most* the target
  by the full accountant, which is checked before it is returned. The price is a little more noise than
  a search over every order would pick (measured 0 to 1.4 %, docs/results.md), that is, a little budget
  left unspent; the ledger charges what is actually spent, by the full accountant.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["calibrate", "epsilon", "orders"]

MAX_SIGMA = 1e6  # Opacus's get_noise_multiplier gives up above this noise multiplier


@lru_cache(maxsize=1)
def orders() -> tuple[float, ...]:
    """Opacus's default RDP orders (imported on first use: a study without DP never imports Opacus)."""
    from opacus.accountants import RDPAccountant

    return tuple(RDPAccountant.DEFAULT_ALPHAS)


@lru_cache(maxsize=1)
def _integer_orders() -> tuple[float, ...]:
    return tuple(a for a in orders() if float(a).is_integer())


@lru_cache(maxsize=65_536)
def _one_step(sigma: float, q: float, at: tuple[float, ...]) -> np.ndarray:
    """Opacus's `compute_rdp(q, sigma, steps=1, orders)`: the array `compute_rdp` multiplies by `steps`."""
    from opacus.accountants.analysis.rdp import _compute_rdp

    rdp = np.array([_compute_rdp(q, sigma, order) for order in at])
    rdp.setflags(write=False)
    return rdp


def _epsilon_at(history: Sequence[tuple[float, float, int]], delta: float, at: tuple[float, ...]) -> float:
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = sum([_one_step(float(s), float(q), at) * int(n) for s, q, n in history])  # as RDPAccountant sums
    with warnings.catch_warnings():  # "the best order is the largest alpha": the bound is loose, never too low
        warnings.filterwarnings("ignore", message=".*Optimal order is the.*")
        eps, _ = get_privacy_spent(orders=list(at), rdp=rdp, delta=delta)
    return float(eps)


def epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at `delta` of a sequence of (noise multiplier, sample rate, steps): Opacus's
    `RDPAccountant.get_epsilon` with that history, the same number."""
    if not history:
        return 0.0
    return _epsilon_at(history, delta, orders())


def calibrate(target_epsilon: float, delta: float, q: float, steps: int, tolerance: float = 0.005) -> float:
    """A noise multiplier whose `steps` steps at rate `q` spend at most `target_epsilon` at `delta` (see the
    module docstring: Opacus's bisection over the integer orders, checked with all of them)."""
    ints = _integer_orders()

    def eps(sigma: float) -> float:
        return _epsilon_at([(sigma, q, steps)], delta, ints)

    low, high, eps_high = 0.0, 10.0, math.inf
    while eps_high > target_epsilon:
        high *= 2
        eps_high = eps(high)
        if high > MAX_SIGMA:
            raise ValueError(f"no noise multiplier up to {MAX_SIGMA:g} spends at most epsilon {target_epsilon:g} "
                             f"at delta {delta:g} over {steps} steps at sampling rate {q:g}")
    while target_epsilon - eps_high > tolerance:
        middle = (low + high) / 2
        e = eps(middle)
        if e < target_epsilon:
            high, eps_high = middle, e
        else:
            low = middle
    spent = epsilon([(high, q, steps)], delta)
    if not spent <= target_epsilon:  # cannot happen (a minimum over more orders); never return a wrong noise
        raise RuntimeError(f"calibrated noise {high!r} spends epsilon {spent!r} > target {target_epsilon!r}")
    return high
