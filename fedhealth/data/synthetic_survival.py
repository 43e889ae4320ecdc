"""Synthetic time-to-event records with a known truth: the binary generator's patients, followed in time.

Why this construction: each record of `fedhealth.data.synthetic` has a true 12-month risk p(x) and a
uniform draw U that decided its label (label = U < p). Here the same patient's cumulative hazard is

    H(t | x) = g(x) * (t / 365) ** shape,    g(x) = -log(1 - p(x)),

a Weibull proportional-hazards model whose 12-month event probability is exactly p(x), and its event time
is the inverse of that curve at the same draw: T = 365 * (-log(1 - U) / g(x)) ** (1 / shape). So T <= 365
days exactly when the binary label is 1: the survival study and the binary study are the same patients,
and every truth is known in closed form (the true survival S(t | x) = exp(-H(t | x)), the true risk
ordering g(x)), which gives the "best possible" column of a time-to-event study.

Censoring is independent of the patient and of the event (non-informative): administrative at the end of
follow-up (`follow_up_days`), and loss to follow-up, exponential with mean `dropout_mean_days`, drawn from a
stream of its own so that the patients and their event times do not depend on the censoring settings.
Times are whole days, at least 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedhealth.data.synthetic import HospitalProfile, generate_with_uniforms

DAYS_PER_YEAR = 365.0


@dataclass(frozen=True)
class SurvivalRecords:
    """One hospital's time-to-event records and the hidden truth.

    Attributes:
        profile: the hospital.
        features: (n, F) as measured, exactly `generate_hospital`'s features for the same profile, index, seed.
        time: (n,) float64 whole days to the event or to censoring, at least 1.
        event: (n,) int64, 1 if the event was observed at `time`, 0 if censored then.
        risk_scale: (n,) float64 g(x), the patient's true cumulative hazard at one year; the higher, the
            earlier the event is expected (the true risk ordering).
        shape: the Weibull shape of the baseline hazard (above 1: a hazard rising with time).
    """

    profile: HospitalProfile
    features: np.ndarray
    time: np.ndarray
    event: np.ndarray
    risk_scale: np.ndarray
    shape: float

    def true_survival(self, at: np.ndarray) -> np.ndarray:
        """S(t | x) for every record (rows) at each time in `at` days (columns)."""
        t = np.asarray(at, dtype=np.float64)
        return np.exp(-self.risk_scale[:, None] * (t[None, :] / DAYS_PER_YEAR) ** self.shape)


def generate_survival(profile: HospitalProfile, index: int, seed: int, *, shape: float = 1.3,
                      follow_up_days: float = 3 * DAYS_PER_YEAR, dropout_mean_days: float = 2000.0
                      ) -> SurvivalRecords:
    """Generate one hospital's time-to-event records, deterministically from (profile, index, seed).

    Raises:
        ValueError: if `shape`, `follow_up_days` or `dropout_mean_days` is not a positive finite number.
    """
    for name, value in (("shape", shape), ("follow_up_days", follow_up_days),
                        ("dropout_mean_days", dropout_mean_days)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"hospital {profile.name!r}: {name} must be a positive number, got {value!r}")
    records, uniforms = generate_with_uniforms(profile, index, seed)
    g = -np.log1p(-records.true_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        event_time = DAYS_PER_YEAR * (-np.log1p(-uniforms) / g) ** (1.0 / shape)
    event_time = np.where(g > 0, event_time, np.inf)  # a risk that underflowed to 0: no event, ever
    # Exactly the label, also where rounding of the two formulas would disagree (U within an ulp of p):
    # an event by one year for label 1, after it for label 0.
    event_time = np.where(records.label == 1, np.minimum(event_time, DAYS_PER_YEAR),
                          np.maximum(event_time, np.nextafter(DAYS_PER_YEAR, np.inf)))
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 2]))
    censor_time = np.minimum(follow_up_days, rng.exponential(dropout_mean_days, len(uniforms)))
    observed = np.minimum(event_time, censor_time)
    return SurvivalRecords(profile=profile, features=records.features,
                           time=np.maximum(np.ceil(observed), 1.0), event=(event_time <= censor_time).astype(np.int64),
                           risk_scale=g, shape=float(shape))
