"""The Gaussian mechanism for one release of a hospital's statistics vector, charged to its privacy ledger.

Privacy meaning: with noise of sd z x `layout.sensitivity` on every cell, one release is the Gaussian
mechanism with L2 sensitivity `layout.sensitivity` (one record added or removed) and noise multiplier z:
its RDP at order a is a / (2 z**2), exactly one DP-SGD step with sample rate 1. So it is charged to the
same ledger, by the same accountant, as training (`unit = "record"`), and composes with DP-SGD in one budget.

The noise comes only from the hospital's own secret (`fedhealth.privacy.secret`): its generator is seeded by
HMAC(secret, purpose, layout digest, release key), so nothing the server knows (the study seed, the round)
can regenerate it, and a retry of the same release draws the same noise.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from fedhealth.statistics.layout import StatisticsError, StatisticsLayout

if TYPE_CHECKING:
    from fedhealth.privacy.ledger import LedgerEntry, PrivacyLedger
    from fedhealth.privacy.secret import HospitalSecret

PURPOSE = "cohort-statistics-noise"


def _check_z(noise_multiplier: float) -> float:
    z = float(noise_multiplier)
    if not math.isfinite(z) or z <= 0:
        raise StatisticsError(f"the noise multiplier must be a finite number above 0, got {noise_multiplier!r}")
    return z


def noise_sd(layout: StatisticsLayout, noise_multiplier: float) -> float:
    """The sd of one hospital's noise on every cell: noise multiplier x the layout's L2 sensitivity."""
    return _check_z(noise_multiplier) * layout.sensitivity


def figure_noise_sd(layout: StatisticsLayout, noise_multiplier: float, hospitals: int = 1) -> float:
    """The sd of the noise on each cell of the sum of `hospitals` noised vectors (independent noise adds in
    variance): what `cohort_table` and `kaplan_meier` take as `noise_sd` for their stated error bounds."""
    if isinstance(hospitals, bool) or not isinstance(hospitals, int) or hospitals < 1:
        raise StatisticsError(f"hospitals must be a whole number of at least 1, got {hospitals!r}")
    return noise_sd(layout, noise_multiplier) * math.sqrt(hospitals)


def noise_for_release(layout: StatisticsLayout, noise_multiplier: float, secret: HospitalSecret,
                      release: str) -> np.ndarray:
    """The noise vector of one release: N(0, (z x sensitivity)**2) per cell, from the hospital's secret.

    Parameters
    ----------
    layout : StatisticsLayout
        The vector's layout (its digest keys the draw, so another layout never shares noise).
    noise_multiplier : float
        z: the noise sd in units of the layout's sensitivity.
    secret : HospitalSecret
        The hospital's own secret, never sent: the only source of the noise.
    release : str
        The release key (a study, its round, what is released): another key draws independent noise.
    """
    if not release:
        raise StatisticsError("give a release key (e.g. 'study:round:statistics'): the noise of a release is "
                              "keyed by it, and an empty key would be shared by every release")
    sd = noise_sd(layout, noise_multiplier)
    rng = np.random.default_rng(secret.seed(PURPOSE, layout.digest, release))
    return rng.normal(0.0, sd, size=len(layout.cells))


def charge_release(ledger: PrivacyLedger, layout: StatisticsLayout, noise_multiplier: float, *, release: str,
                   study: str = "", server_round: int = 0, terms: str = "") -> LedgerEntry:
    """Charge one release of the vector to `ledger` before anything leaves: one Gaussian step (sample rate 1,
    steps 1, noise multiplier z, L2 bound `layout.sensitivity`), record unit. Raises BudgetExceeded (charging
    nothing) at the cap; the same release key again is a retry and costs nothing (same noise, same vector)."""
    if not release:
        raise StatisticsError("give a release key: the ledger tells retries from new releases by it")
    return ledger.charge(server_round, _check_z(noise_multiplier), 1.0, 1, layout.sensitivity, study=study,
                         release=release, unit="record", terms=terms)


def release_statistics(ledger: PrivacyLedger, layout: StatisticsLayout, vector: np.ndarray,
                       noise_multiplier: float, secret: HospitalSecret, *, release: str, study: str = "",
                       server_round: int = 0, terms: str = "") -> np.ndarray:
    """The noised vector of one release, charged first: when the charge raises, no noised vector exists.
    Nothing is sent here; the caller sends what this returns (under secure aggregation)."""
    v = layout.check(vector)
    charge_release(ledger, layout, noise_multiplier, release=release, study=study, server_round=server_round,
                   terms=terms)
    return v + noise_for_release(layout, noise_multiplier, secret, release)
