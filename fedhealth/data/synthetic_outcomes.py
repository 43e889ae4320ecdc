"""Synthetic multi-class and continuous records with a known truth: the binary generator's patients again.

Why these constructions: a study of another outcome kind should compare the federation with the same patients,
the same hospitals and the same "best possible" column as the binary study, so both generators start from
`fedhealth.data.synthetic.generate_with_latent` (the binary records, the uniform draw U that decided each label,
and each patient's latent true values) and add only what the new outcome needs, from random streams of their own
(``SeedSequence([seed, index, 3])`` and ``[seed, index, 4]``; 1 is the train/test split's, 2 the survival
censoring's), so the features and the binary labels are untouched.

**Multi-class: the severity of the 12-month complication** (`fedhealth.study.config.GENERATED_CLASSES`: none,
moderate, severe). A patient is "none" exactly when the binary label is 0, i.e. with probability 1 - p(x), p the
binary true risk. A patient with the complication is "severe" when a second, independent uniform V falls below

    q(x) = sigmoid(b0 + 0.3 age + 1.2 kidney + 0.45 glycaemic + 0.3 prior CVD + 0.4 smoker - 0.6 statin
                   + 0.2 frailty),

a logistic model of the latent values (age per 15 years from 55; kidney: eGFR shortfall below 90 per
30 mL/min/1.73m2; glycaemic: a diabetic's HbA1c above 7 %; ``_SEVERITY``). The same risk factors weigh
differently on how bad a complication is than on whether it happens (kidney function weighs more, and statins,
which the binary risk ignores, make events milder), so the truth carries signal beyond p. The true class
probabilities are exactly

    P(none) = 1 - p,   P(moderate) = p (1 - q),   P(severe) = p q

(U and V are independent). At the default hospitals (configs/default.toml, seed 42) the classes are 83 / 10 / 7 %
of the records; among patients with a complication q ranks severe above moderate with AUROC 0.75 where p alone
gives 0.68. The macro one-vs-rest AUROC of the true probabilities (0.85) is only about 0.005 above that of
[1 - p, p (1 - q̄), p q̄] (q̄ the mean severity share): it is dominated by each class against "none", which p
decides.

**Continuous: HbA1c at the 12-month visit** (`fedhealth.study.config.GENERATED_VALUE`, %, valid range [3, 20]).
The latent baseline HbA1c carries over, a diabetic's pulled toward the 7 % treatment target by a share that
depends on the tier's care intensity (tertiary pulls hardest), plus small effects of BMI, age, statin use and
unmeasured frailty and a regional shift (``_VALUE_*``), so hospitals differ. The value is that mean plus Gaussian
noise (sd 0.4 %, 1.2 % in diabetics: glycaemia varies more under treatment), clipped to [3, 20] and rounded to
0.1 % as a lab reports it; the best possible R² (of the true mean) is about 0.69 at the default hospitals.
``true_mean`` is the exact mean of the clipped, unrounded value, in closed form for a clipped normal
(`clipped_normal_mean`), so the rare clipping (means reach down to about 1.4 sd above 3 %) never biases the
truth. Rounding to the 0.1 grid moves the mean by less than 5e-4 % for any mean (the most where the mean sits on
a clip bound; under 1e-5 % three sd inside), negligible beside any model's error, which is why the truth is
stated for the unrounded value (a closed form) rather than as a sum over the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from fedhealth.data.synthetic import HospitalProfile, generate_with_latent
from fedhealth.study.config import GENERATED_CLASSES, GENERATED_VALUE

__all__ = [
    "ContinuousRecords",
    "MulticlassRecords",
    "clipped_normal_mean",
    "generate_continuous",
    "generate_multiclass",
    "severity_logit",
    "value_mean_sd",
]

# The multi-class construction is for three ordered classes: none, moderate, severe.
assert len(GENERATED_CLASSES) == 3, GENERATED_CLASSES

_MULTICLASS_STREAM = 3  # SeedSequence([seed, index, k]) keys: 1 is the split's, 2 the survival censoring's
_CONTINUOUS_STREAM = 4

# Log-odds of "severe" among patients with a complication (see the module docstring for the covariates).
_SEVERITY = {
    "intercept": -2.2,
    "age": 0.3,  # per 15 years from 55
    "kidney": 1.2,  # per 30 mL/min/1.73m2 of eGFR below 90
    "glycaemic": 0.45,  # per % of a diabetic's HbA1c above 7
    "prior_cvd": 0.3,
    "smoker": 0.4,
    "on_statin": -0.6,  # treated patients' events are milder (the binary risk ignores statins)
    "frailty": 0.2,  # unmeasured: the part of severity no model can learn
}

# Share of a diabetic's HbA1c excess over the 7 % target that a year of care removes, by tier.
_VALUE_PULL = {"tertiary": 0.35, "secondary": 0.25, "community": 0.15}
_VALUE_TARGET = 7.0  # % (the usual treatment target)
# Regional shift of the 12-month HbA1c (%): diet, deprivation, access to care; not a recorded feature.
_VALUE_REGION = {"north": 0.05, "south": 0.1, "east": -0.05, "west": 0.0, "central": 0.08}
_VALUE_NOISE_SD = (0.4, 1.2)  # % (non-diabetic, diabetic)
_VALUE_DECIMALS = 1


@dataclass(frozen=True)
class MulticlassRecords:
    """One hospital's records with a three-class outcome, and the hidden truth.

    Attributes:
        profile: the hospital.
        features: (n, F) as measured, exactly `generate_hospital`'s features for the same profile, index, seed.
        label: (n,) int64 class index into `GENERATED_CLASSES` (0 none, 1 moderate, 2 severe); 0 exactly where
            the binary generator's label is 0.
        true_probs: (n, 3) float64, P(class k | the patient's latent true values); rows sum to 1.
    """

    profile: HospitalProfile
    features: np.ndarray
    label: np.ndarray
    true_probs: np.ndarray


@dataclass(frozen=True)
class ContinuousRecords:
    """One hospital's records with a continuous outcome, and the hidden truth.

    Attributes:
        profile: the hospital.
        features: (n, F) as measured, exactly `generate_hospital`'s features for the same profile, index, seed.
        value: (n,) float64 HbA1c at the 12-month visit, %, in [3, 20], rounded to 0.1.
        true_mean: (n,) float64 E[value | the patient's latent true values] (of the unrounded value; see the
            module docstring for why rounding does not matter).
    """

    profile: HospitalProfile
    features: np.ndarray
    value: np.ndarray
    true_mean: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def severity_logit(latent: dict[str, np.ndarray]) -> np.ndarray:
    """Log-odds that a complication is severe rather than moderate, from the latent values."""
    w = _SEVERITY
    s_age = (latent["age"] - 55.0) / 15.0
    kidney = np.maximum(90.0 - latent["egfr"], 0.0) / 30.0
    glycaemic = latent["diabetes"] * np.maximum(latent["hba1c"] - 7.0, 0.0)
    return (w["intercept"] + w["age"] * s_age + w["kidney"] * kidney + w["glycaemic"] * glycaemic
            + w["prior_cvd"] * latent["prior_cvd"] + w["smoker"] * latent["smoker"]
            + w["on_statin"] * latent["on_statin"] + w["frailty"] * latent["frailty"])


def generate_multiclass(profile: HospitalProfile, index: int, seed: int) -> MulticlassRecords:
    """Generate one hospital's three-class records, deterministically from (profile, index, seed).

    The binary generator's patients and labels: class 0 exactly where its label is 0; a complication is severe
    (2) when an independent uniform falls below q(x) (`severity_logit`), else moderate (1). So the true class
    probabilities are exactly [1 - p, p (1 - q), p q], p the binary true risk.

    Args:
        profile: the hospital's tier, region and number of records.
        index: the hospital's position in the federation (selects its random streams, with ``seed``).
        seed: the experiment seed.

    Returns:
        The binary generator's features for (profile, index, seed), each record's class and true probabilities.
    """
    records, _, latent = generate_with_latent(profile, index, seed)
    p = records.true_risk
    q = _sigmoid(severity_logit(latent))
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _MULTICLASS_STREAM]))
    severe = rng.random(len(p)) < q
    label = np.where(records.label == 1, np.where(severe, 2, 1), 0).astype(np.int64)
    true_probs = np.stack([1.0 - p, p * (1.0 - q), p * q], axis=1)
    return MulticlassRecords(profile=profile, features=records.features, label=label, true_probs=true_probs)


def clipped_normal_mean(mean: np.ndarray, sd: np.ndarray, low: float, high: float) -> np.ndarray:
    """E[clip(Y, low, high)] for Y ~ Normal(mean, sd**2), elementwise, in closed form.

    With a = (low - mean) / sd and b = (high - mean) / sd:
    low Phi(a) + high (1 - Phi(b)) + mean (Phi(b) - Phi(a)) + sd (phi(a) - phi(b)).
    """
    mu = np.asarray(mean, dtype=np.float64)
    s = np.asarray(sd, dtype=np.float64)
    a = (low - mu) / s
    b = (high - mu) / s
    pdf_a = np.exp(-0.5 * a * a) / np.sqrt(2.0 * np.pi)
    pdf_b = np.exp(-0.5 * b * b) / np.sqrt(2.0 * np.pi)
    cdf_a, cdf_b = ndtr(a), ndtr(b)
    return low * cdf_a + high * (1.0 - cdf_b) + mu * (cdf_b - cdf_a) + s * (pdf_a - pdf_b)


def value_mean_sd(latent: dict[str, np.ndarray], profile: HospitalProfile) -> tuple[np.ndarray, np.ndarray]:
    """The mean and sd (%) of the unclipped 12-month HbA1c, from the latent values, tier and region."""
    diabetes = latent["diabetes"].astype(np.float64)
    hba1c = latent["hba1c"]
    pulled = diabetes * _VALUE_PULL[profile.tier] * (hba1c - _VALUE_TARGET)
    mean = (hba1c - pulled
            + 0.02 * (latent["bmi"] - 28.0)
            + (1.0 - diabetes) * 0.004 * (latent["age"] - 55.0)
            + 0.1 * latent["on_statin"]
            + 0.05 * latent["frailty"]
            + _VALUE_REGION[profile.region])
    sd = np.where(diabetes > 0.5, _VALUE_NOISE_SD[1], _VALUE_NOISE_SD[0])
    return mean, sd


def generate_continuous(profile: HospitalProfile, index: int, seed: int) -> ContinuousRecords:
    """Generate one hospital's 12-month HbA1c records, deterministically from (profile, index, seed).

    value = round(clip(mean(x) + sd(x) Z, 3, 20), 1) with Z standard normal from the hospital's own stream;
    true_mean is E[clip(mean(x) + sd(x) Z, 3, 20)] exactly (`clipped_normal_mean`).

    Args:
        profile: the hospital's tier (care intensity), region (a shift) and number of records.
        index: the hospital's position in the federation (selects its random streams, with ``seed``).
        seed: the experiment seed.

    Returns:
        The binary generator's features for (profile, index, seed), each record's value and true mean.
    """
    records, _, latent = generate_with_latent(profile, index, seed)
    mean, sd = value_mean_sd(latent, profile)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _CONTINUOUS_STREAM]))
    low, high = float(GENERATED_VALUE.min), float(GENERATED_VALUE.max)
    raw = np.clip(mean + sd * rng.standard_normal(len(mean)), low, high)
    value = np.round(raw, _VALUE_DECIMALS)
    true_mean = clipped_normal_mean(mean, sd, low, high)
    return ContinuousRecords(profile=profile, features=records.features, value=value, true_mean=true_mean)
