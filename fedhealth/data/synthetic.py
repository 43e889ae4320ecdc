"""Seeded synthetic hospitals whose patients carry a known true risk.

Why synthetic: real hospital records cannot leave a hospital, yet the framework needs data that
differs between sites the way real data does, and a ground truth to measure against. Each patient is
generated in two stages:

1. **Latent truth.** Age, sex, smoking, BMI, blood pressure, glycaemia, lipids, kidney function,
   diagnoses, statin use and visit counts are drawn with clinically sensible dependencies (BMI raises
   BP and diabetes risk, HbA1c and fasting glucose move together, age lowers eGFR, statins follow prior
   CVD and high LDL, sicker patients visit more). Case mix depends on the hospital tier (tertiary
   referral centres: older, sicker; community clinics: younger, healthier on average but less well
   controlled) and region. The one-year complication risk is a logistic function of these latent
   values, with an age-squared term, an eGFR < 60 / < 30 threshold and an HbA1c x diabetes
   interaction, so a small MLP can beat logistic regression a little. ``true_risk`` is that
   probability; the label is one Bernoulli draw from it, so ``roc_auc_score(label, true_risk)`` is the
   best AUROC any model could expect.
2. **Measurement.** What the hospital records is the latent value plus measurement noise (about 2x
   larger in community clinics than in tertiary centres), a per-hospital lab calibration offset drawn
   once per hospital, rounding to the precision a record holds, clipping to the schema's valid range,
   under-recorded diagnoses in community clinics, and missing values (completely at random plus a
   part that depends on recorded diabetes and visit count), far more of them in community clinics.

Determinism: a hospital's records depend only on (profile, index, seed) through
``np.random.default_rng(np.random.SeedSequence([seed, index]))``; they do not depend on other
hospitals or on call order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedhealth.study.builtin_schema import FEATURE_NAMES, FEATURES, LABEL, REGIONS, TIERS, feature_index, valid_bounds

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "HospitalProfile",
    "HospitalRecords",
    "bayes_auroc",
    "ckd_epi_2021",
    "generate_hospital",
    "generate_hospitals",
    "one_class_sides",
    "train_test_split",
]

_F = len(FEATURES)
_I = {name: feature_index(name) for name in FEATURE_NAMES}
_VALID_MIN, _VALID_MAX = valid_bounds()
_MG_DL_TO_UMOL_L = 88.4  # creatinine: umol/L per mg/dL
_LOG_142 = math.log(142.0)  # CKD-EPI 2021 constants, in log space
_LOG_AGE_FACTOR = math.log(0.9938)  # per year of age
_LOG_FEMALE_FACTOR = math.log(1.012)


# --------------------------------------------------------------------------------------------------
# Profiles and records
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HospitalProfile:
    """What the generator needs to know about one hospital.

    Attributes:
        name: unique, human-readable hospital name (used in messages and run directories).
        tier: one of :data:`~fedhealth.study.builtin_schema.TIERS`; sets case mix, noise and missingness.
        region: one of :data:`~fedhealth.study.builtin_schema.REGIONS`; shifts risk-factor prevalence.
        records: number of patient records (rows) to generate, at least 1.
    """

    name: str
    tier: str
    region: str
    records: int

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"hospital {self.name!r}: tier {self.tier!r} is not one of {', '.join(TIERS)}")
        if self.region not in REGIONS:
            raise ValueError(
                f"hospital {self.name!r}: region {self.region!r} is not one of {', '.join(REGIONS)}"
            )
        if int(self.records) != self.records or self.records < 1:
            raise ValueError(
                f"hospital {self.name!r}: records must be a positive integer, got {self.records!r}"
            )


@dataclass
class HospitalRecords:
    """One hospital's patient records as the hospital would hold them, plus the hidden truth.

    Attributes:
        profile: the hospital these records belong to.
        features: shape (n, F) float64 in the units of :data:`~fedhealth.study.builtin_schema.FEATURES`, as
            measured (noise, site bias, rounding, missingness applied); NaN marks a missing value.
        label: shape (n,) int64, 1 if the patient had a complication within 12 months.
        true_risk: shape (n,) float64, P(label = 1 | the patient's latent true values); known only
            because the data are synthetic, used to report the best achievable AUROC.
        site_bias: this hospital's lab calibration offsets, feature name -> offset in that
            feature's unit (empty for records that did not come from the generator).
    """

    profile: HospitalProfile
    features: np.ndarray
    label: np.ndarray
    true_risk: np.ndarray
    site_bias: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.label.shape[0]
        if self.features.shape != (n, _F) or self.true_risk.shape != (n,):
            raise ValueError(
                f"hospital {self.profile.name!r}: inconsistent shapes features={self.features.shape}, "
                f"label={self.label.shape}, true_risk={self.true_risk.shape}; expected (n, {_F}), (n,), (n,)"
            )

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """Records as a DataFrame: the feature columns, the label column and ``true_risk``."""
        import pandas as pd

        frame = pd.DataFrame(self.features, columns=list(FEATURE_NAMES))
        frame[LABEL] = self.label
        frame["true_risk"] = self.true_risk
        return frame


# --------------------------------------------------------------------------------------------------
# Tier and region parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TierParams:
    """Case mix, care quality and data quality of one hospital tier (units in the field comments)."""

    age_mean: float  # years
    age_sd: float  # years
    p_male: float  # probability
    frailty_mean: float  # latent unmeasured frailty, standard-normal units
    frailty_sd: float
    smoke_logit: float  # baseline log-odds of current smoking at age 50, female
    bmi_median: float  # kg/m2
    dm_logit: float  # shift of the log-odds of diabetes
    hba1c_control: float  # % added to diabetics' HbA1c (worse control = larger)
    sbp_shift: float  # mmHg added to untreated systolic BP
    bp_treatment: float  # mean mmHg systolic reduction in treated hypertensives
    cvd_logit: float  # shift of the log-odds of prior CVD (referral case mix)
    statin_logit: float  # shift of the log-odds of statin use (prescribing intensity)
    visits_mean: float  # mean outpatient visits per year for an average patient
    outcome_intercept: float  # log-odds of the complication, tuned to the target prevalence
    noise_multiplier: float  # measurement-noise sd relative to a tertiary centre
    missing_rate: dict[str, float]  # panel -> average fraction missing
    underdx_htn: float  # fraction of true hypertensives with no recorded diagnosis
    underdx_dm: float  # fraction of true diabetics with no recorded diagnosis


@dataclass(frozen=True)
class _RegionParams:
    """Regional shifts in risk factors (units in the field comments)."""

    age_shift: float  # years
    smoke_logit: float  # log-odds
    bmi_shift: float  # kg/m2
    sbp_shift: float  # mmHg
    dm_logit: float  # log-odds
    ldl_shift: float  # mmol/L
    outcome_shift: float  # log-odds of the complication from unmeasured factors (access to care, deprivation)


_TIER_PARAMS: dict[str, _TierParams] = {
    "tertiary": _TierParams(
        age_mean=63.0,
        age_sd=13.0,
        p_male=0.54,
        frailty_mean=0.45,
        frailty_sd=1.15,
        smoke_logit=-1.8,
        bmi_median=28.3,
        dm_logit=0.55,
        hba1c_control=0.25,
        sbp_shift=2.0,
        bp_treatment=14.0,
        cvd_logit=0.9,
        statin_logit=0.4,
        visits_mean=5.0,
        outcome_intercept=-3.82,
        noise_multiplier=1.0,
        missing_rate={"bmi": 0.03, "bp": 0.02, "glucose": 0.04, "hba1c": 0.04, "lipids": 0.05, "renal": 0.03},
        underdx_htn=0.0,
        underdx_dm=0.0,
    ),
    "secondary": _TierParams(
        age_mean=57.0,
        age_sd=14.0,
        p_male=0.49,
        frailty_mean=0.1,
        frailty_sd=1.0,
        smoke_logit=-1.6,
        bmi_median=28.0,
        dm_logit=0.25,
        hba1c_control=0.1,
        sbp_shift=1.0,
        bp_treatment=11.0,
        cvd_logit=0.35,
        statin_logit=0.1,
        visits_mean=3.5,
        outcome_intercept=-3.71,
        noise_multiplier=1.4,
        missing_rate={"bmi": 0.06, "bp": 0.05, "glucose": 0.08, "hba1c": 0.10, "lipids": 0.11, "renal": 0.08},
        underdx_htn=0.04,
        underdx_dm=0.02,
    ),
    "community": _TierParams(
        age_mean=50.0,
        age_sd=15.0,
        p_male=0.46,
        frailty_mean=-0.2,
        frailty_sd=0.95,
        smoke_logit=-1.3,
        bmi_median=27.8,
        dm_logit=0.0,
        hba1c_control=0.55,
        sbp_shift=0.0,
        bp_treatment=7.0,
        cvd_logit=0.0,
        statin_logit=-0.4,
        visits_mean=2.5,
        outcome_intercept=-3.83,
        noise_multiplier=2.0,
        missing_rate={"bmi": 0.15, "bp": 0.12, "glucose": 0.22, "hba1c": 0.30, "lipids": 0.32, "renal": 0.25},
        underdx_htn=0.15,
        underdx_dm=0.10,
    ),
}

_REGION_PARAMS: dict[str, _RegionParams] = {
    # industrial north: more smoking, higher BP and LDL
    "north": _RegionParams(
        age_shift=0.5,
        smoke_logit=0.35,
        bmi_shift=0.0,
        sbp_shift=5.0,
        dm_logit=0.0,
        ldl_shift=0.2,
        outcome_shift=0.0,
    ),
    # south: higher BMI and more diabetes; slightly better outcomes at the same risk factors
    "south": _RegionParams(
        age_shift=-1.0,
        smoke_logit=0.0,
        bmi_shift=1.5,
        sbp_shift=1.0,
        dm_logit=0.35,
        ldl_shift=0.0,
        outcome_shift=-0.06,
    ),
    # east: older population, strong primary care (lower risk at the same risk factors)
    "east": _RegionParams(
        age_shift=2.0,
        smoke_logit=0.1,
        bmi_shift=0.5,
        sbp_shift=2.0,
        dm_logit=0.1,
        ldl_shift=0.1,
        outcome_shift=-0.16,
    ),
    # rural west: fewer risk factors, but far from acute care (higher risk at the same risk factors)
    "west": _RegionParams(
        age_shift=0.5,
        smoke_logit=-0.3,
        bmi_shift=-1.0,
        sbp_shift=-2.0,
        dm_logit=-0.2,
        ldl_shift=-0.1,
        outcome_shift=0.12,
    ),
    # central city: younger, more deprivation (higher risk at the same risk factors)
    "central": _RegionParams(
        age_shift=-1.5,
        smoke_logit=0.0,
        bmi_shift=0.0,
        sbp_shift=0.0,
        dm_logit=0.0,
        ldl_shift=0.0,
        outcome_shift=0.15,
    ),
}

# Measurement-noise sd at a tertiary centre, in each feature's unit (creatinine: relative, fraction).
_NOISE_SD: dict[str, float] = {
    "bmi": 0.4,
    "systolic_bp": 6.0,
    "diastolic_bp": 4.0,
    "fasting_glucose": 0.35,
    "hba1c": 0.15,
    "ldl_cholesterol": 0.15,
    "hdl_cholesterol": 0.07,
    "creatinine": 0.04,
}

# Half-width of the uniform per-hospital calibration offset, in each feature's unit.
_SITE_BIAS_HALF_WIDTH: dict[str, float] = {
    "bmi": 0.5,
    "systolic_bp": 4.0,
    "diastolic_bp": 3.0,
    "fasting_glucose": 0.3,
    "hba1c": 0.2,
    "ldl_cholesterol": 0.15,
    "hdl_cholesterol": 0.06,
    "creatinine": 8.0,
}

# Features that go missing together (one order, one panel of results).
_PANELS: dict[str, tuple[str, ...]] = {
    "bmi": ("bmi",),
    "bp": ("systolic_bp", "diastolic_bp"),
    "glucose": ("fasting_glucose",),
    "hba1c": ("hba1c",),
    "lipids": ("ldl_cholesterol", "hdl_cholesterol"),
    "renal": ("creatinine", "egfr"),
}

# Decimal places a record holds for each feature (age is floored to completed years separately).
_DECIMALS: dict[str, int] = {
    "bmi": 1,
    "systolic_bp": 0,
    "diastolic_bp": 0,
    "fasting_glucose": 1,
    "hba1c": 1,
    "ldl_cholesterol": 1,
    "hdl_cholesterol": 1,
    "creatinine": 0,
    "egfr": 0,
}


# --------------------------------------------------------------------------------------------------
# Kidney function
# --------------------------------------------------------------------------------------------------


def ckd_epi_2021(creatinine_umol_l: np.ndarray, age_years: np.ndarray, male: np.ndarray) -> np.ndarray:
    """eGFR in mL/min/1.73m2 from serum creatinine (umol/L), age (years) and sex (1 = male).

    The race-free CKD-EPI 2021 equation, as laboratories report it, so that a record's eGFR is always
    consistent with its creatinine.
    """
    male_b = np.asarray(male) > 0.5
    kappa = np.where(male_b, 0.9, 0.7)
    alpha = np.where(male_b, -0.302, -0.241)
    # In log space: one log and one exp instead of three array powers (this runs once per record).
    log_ratio = np.log(np.asarray(creatinine_umol_l, dtype=np.float64) / (_MG_DL_TO_UMOL_L * kappa))
    log_egfr = (
        _LOG_142
        + alpha * np.minimum(log_ratio, 0.0)
        - 1.2 * np.maximum(log_ratio, 0.0)
        + _LOG_AGE_FACTOR * np.asarray(age_years, dtype=np.float64)
        + np.where(male_b, 0.0, _LOG_FEMALE_FACTOR)
    )
    return np.exp(log_egfr)


def _creatinine_from_egfr(egfr: np.ndarray, age_years: np.ndarray, male: np.ndarray) -> np.ndarray:
    """Invert :func:`ckd_epi_2021`: the creatinine (umol/L) that gives ``egfr`` at this age and sex."""
    kappa = np.where(male, 0.9, 0.7)
    alpha = np.where(male, -0.302, -0.241)
    # log(egfr / the eGFR at creatinine = kappa); positive means creatinine below kappa.
    log_r = np.log(egfr) - _LOG_142 - _LOG_AGE_FACTOR * age_years - np.where(male, 0.0, _LOG_FEMALE_FACTOR)
    log_ratio = np.where(log_r >= 0.0, log_r / alpha, log_r / -1.2)
    return np.exp(log_ratio) * kappa * _MG_DL_TO_UMOL_L


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _bernoulli(rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
    return rng.random(logit.shape[0]) < _sigmoid(logit)


def _draw_latent(
    rng: np.random.Generator, n: int, tp: _TierParams, rp: _RegionParams
) -> dict[str, np.ndarray]:
    """Draw each patient's true (unmeasured) values; booleans for conditions, floats in schema units."""
    frailty = rng.normal(tp.frailty_mean, tp.frailty_sd, n)

    age = rng.normal(tp.age_mean + rp.age_shift, tp.age_sd, n)
    age = np.where(age < 18.0, rng.uniform(18.0, 30.0, n), np.minimum(age, 97.0))
    male = rng.random(n) < tp.p_male
    smoker = _bernoulli(rng, tp.smoke_logit + rp.smoke_logit - 0.025 * (age - 50.0) + 0.3 * male)

    # BMI is right-skewed: log-normal around the tier median, heavier with frailty.
    bmi = np.exp(rng.normal(np.log(tp.bmi_median + rp.bmi_shift) + 0.03 * frailty, 0.17, n))

    diabetes = _bernoulli(
        rng,
        -2.3 + tp.dm_logit + rp.dm_logit + 0.045 * (age - 55.0) + 0.13 * (bmi - 28.0) + 0.45 * frailty,
    )
    # HbA1c (%): near-normal in non-diabetics, right-skewed in diabetics, worse where control is poor.
    hba1c_nodm = 5.35 + 0.006 * (age - 55.0) + 0.015 * (bmi - 28.0) + rng.normal(0.0, 0.3, n)
    hba1c_dm = 6.3 + tp.hba1c_control + rng.gamma(2.0, 0.55, n)
    hba1c = np.where(diabetes, hba1c_dm, hba1c_nodm)
    # Fasting glucose (mmol/L) tracks HbA1c closely (ADAG-like linear relation), looser in diabetics.
    glucose = np.maximum(1.35 * hba1c - 2.2 + rng.normal(0.0, 0.45, n) * (1.0 + 0.5 * diabetes), 3.0)

    # Systolic BP (mmHg) rises with age, BMI and diabetes; hypertensives are treated, better in tertiary.
    sbp_untreated = (
        112.0
        + 0.8 * (age - 40.0)
        + 0.9 * (bmi - 28.0)
        + tp.sbp_shift
        + rp.sbp_shift
        + 3.0 * frailty
        + 4.0 * diabetes
        + rng.normal(0.0, 14.0, n)
    )
    hypertension = (sbp_untreated >= 140.0) | ((sbp_untreated >= 130.0) & (rng.random(n) < 0.3))
    reduction = np.maximum(rng.normal(tp.bp_treatment, 6.0, n), 0.0)
    sbp = sbp_untreated - hypertension * reduction
    dbp = 30.0 + 0.36 * sbp + 0.25 * (bmi - 28.0) - 0.12 * (age - 55.0) + rng.normal(0.0, 6.0, n)

    # Kidney function (mL/min/1.73m2) falls with age, diabetes and hypertension; creatinine follows.
    egfr = (
        118.0
        - 0.9 * (age - 20.0)
        - 6.0 * diabetes
        - 4.0 * hypertension
        - 5.0 * frailty
        + rng.normal(0.0, 13.0, n)
    )
    egfr = np.clip(egfr, 4.0, 140.0)
    creatinine = _creatinine_from_egfr(egfr, age, male)

    prior_cvd = _bernoulli(
        rng,
        -3.6
        + tp.cvd_logit
        + 0.06 * (age - 55.0)
        + 0.5 * male
        + 0.6 * smoker
        + 0.5 * diabetes
        + 0.4 * hypertension
        + 0.4 * frailty,
    )

    # LDL (mmol/L): statins go to prior CVD, diabetes and high LDL, and lower LDL by 25-50 %.
    ldl_untreated = np.maximum(3.3 + rp.ldl_shift + 0.008 * (age - 55.0) + rng.normal(0.0, 0.85, n), 1.0)
    on_statin = _bernoulli(
        rng,
        -2.4
        + tp.statin_logit
        + 2.6 * prior_cvd
        + 1.1 * diabetes
        + 0.9 * (ldl_untreated - 3.3)
        + 0.04 * (age - 55.0)
        + 0.4 * hypertension,
    )
    ldl = ldl_untreated * np.where(on_statin, rng.uniform(0.5, 0.75, n), 1.0)
    hdl = np.exp(
        rng.normal(
            np.log(1.4) - 0.18 * male - 0.012 * (bmi - 28.0) - 0.08 * smoker - 0.08 * diabetes, 0.22, n
        )
    )

    # Visits per year: over-dispersed (gamma-Poisson), more with comorbidity and in tertiary care.
    visit_rate = tp.visits_mean * np.exp(
        0.35 * diabetes + 0.25 * hypertension + 0.45 * prior_cvd + 0.15 * frailty + 0.004 * (age - 55.0)
    )
    visits = rng.poisson(rng.gamma(3.0, visit_rate / 3.0))

    return {
        "frailty": frailty,
        "age": age,
        "male": male,
        "smoker": smoker,
        "bmi": bmi,
        "diabetes": diabetes,
        "hba1c": hba1c,
        "glucose": glucose,
        "hypertension": hypertension,
        "sbp": sbp,
        "dbp": dbp,
        "egfr": egfr,
        "creatinine": creatinine,
        "prior_cvd": prior_cvd,
        "on_statin": on_statin,
        "ldl": ldl,
        "hdl": hdl,
        "visits": visits.astype(np.float64),
    }


def _outcome_logit(lat: dict[str, np.ndarray], tp: _TierParams, rp: _RegionParams) -> np.ndarray:
    """Log-odds of a complication within 12 months, from the latent values (standardised like the schema)."""
    s_age = (lat["age"] - 55.0) / 15.0
    s_sbp = (lat["sbp"] - 130.0) / 18.0
    s_ldl = (lat["ldl"] - 3.0) / 1.0
    s_hdl = (lat["hdl"] - 1.3) / 0.4
    s_bmi_opt = (lat["bmi"] - 25.0) / 5.5  # distance from the lowest-risk BMI, U-shaped below
    glycaemic_excess = np.clip(lat["hba1c"] - 7.0, -1.5, None)  # % above the usual treatment target
    return (
        tp.outcome_intercept
        + rp.outcome_shift
        + 0.5 * s_age
        + 0.2 * s_age**2
        + 0.2 * lat["male"]
        + 0.45 * lat["smoker"]
        + 0.2 * s_sbp
        + 0.45 * (lat["sbp"] >= 160.0)
        + 0.2 * s_ldl
        - 0.15 * s_hdl
        + 0.25 * s_bmi_opt**2
        + 0.75 * lat["prior_cvd"]
        + lat["diabetes"] * (0.3 + 0.6 * glycaemic_excess)
        + 0.7 * (lat["egfr"] < 60.0)
        + 0.6 * (lat["egfr"] < 30.0)
        + 0.25 * lat["frailty"]
    )


def _draw_site_bias(rng: np.random.Generator) -> dict[str, float]:
    """One lab/device calibration offset per measured feature for this hospital, in the feature's unit."""
    return {name: float(rng.uniform(-hw, hw)) for name, hw in _SITE_BIAS_HALF_WIDTH.items()}


def _measure(
    rng: np.random.Generator, lat: dict[str, np.ndarray], tp: _TierParams, bias: dict[str, float]
) -> np.ndarray:
    """Turn latent values into the (n, F) record a hospital holds: noise, bias, rounding, missingness."""
    n = lat["age"].shape[0]
    k = tp.noise_multiplier
    # Built feature-major (F, n) so every column operation is contiguous, transposed once at the end.
    x = np.empty((_F, n), dtype=np.float64)

    x[_I["age"]] = np.floor(lat["age"])
    x[_I["sex_male"]] = lat["male"]
    for name, key in (
        ("bmi", "bmi"),
        ("systolic_bp", "sbp"),
        ("diastolic_bp", "dbp"),
        ("fasting_glucose", "glucose"),
        ("hba1c", "hba1c"),
        ("ldl_cholesterol", "ldl"),
        ("hdl_cholesterol", "hdl"),
    ):
        x[_I[name]] = lat[key] + rng.normal(0.0, _NOISE_SD[name] * k, n) + bias[name]
    creatinine = (
        lat["creatinine"] * (1.0 + rng.normal(0.0, _NOISE_SD["creatinine"] * k, n)) + bias["creatinine"]
    )
    x[_I["creatinine"]] = np.round(np.clip(creatinine, _VALID_MIN[_I["creatinine"]], None))
    # The lab reports eGFR computed from its own (noisy, biased) creatinine.
    x[_I["egfr"]] = ckd_epi_2021(x[_I["creatinine"]], x[_I["age"]], lat["male"])

    x[_I["current_smoker"]] = lat["smoker"]
    x[_I["hypertension_dx"]] = lat["hypertension"] & (rng.random(n) >= tp.underdx_htn)
    x[_I["diabetes_dx"]] = lat["diabetes"] & (rng.random(n) >= tp.underdx_dm)
    x[_I["prior_cvd"]] = lat["prior_cvd"]
    x[_I["on_statin"]] = lat["on_statin"]
    x[_I["visits_past_year"]] = lat["visits"]

    for name, decimals in _DECIMALS.items():
        np.round(x[_I[name]], decimals, out=x[_I[name]])
    np.clip(x, _VALID_MIN[:, None], _VALID_MAX[:, None], out=x)

    # Missingness: MCAR at the tier's panel rate, modulated (MAR) by what is recorded: labs are ordered
    # more for recorded diabetics and frequent attenders. The modulation has mean 1 within the hospital.
    weight = np.exp(-0.6 * x[_I["diabetes_dx"]] - 0.1 * np.minimum(x[_I["visits_past_year"]], 15.0))
    weight /= weight.mean()
    for panel, names in _PANELS.items():
        p = np.minimum(tp.missing_rate[panel] * weight, 0.95)
        missing = rng.random(n) < p
        for name in names:
            x[_I[name], missing] = np.nan
    return np.ascontiguousarray(x.T)


def generate_hospital(profile: HospitalProfile, index: int, seed: int) -> HospitalRecords:
    """Generate one hospital's records, deterministically from (profile, index, seed).

    Args:
        profile: the hospital's tier, region and number of records.
        index: the hospital's position in the federation; with ``seed`` it selects the random stream,
            so two hospitals with the same profile but different indices get different patients.
        seed: the experiment seed.

    Returns:
        The records as measured at this hospital, with labels and each patient's true risk.
    """
    return generate_with_uniforms(profile, index, seed)[0]


def generate_with_uniforms(profile: HospitalProfile, index: int, seed: int) -> tuple[HospitalRecords, np.ndarray]:
    """`generate_hospital`, and the uniform draw U of each record that decided its label (label = U < risk).

    Why: the time-to-event generator (`fedhealth.data.synthetic_survival`) turns the same U into an event
    time, so that its patients are these patients and its event by 12 months is exactly this label."""
    records, uniforms, _ = generate_with_latent(profile, index, seed)
    return records, uniforms


def generate_with_latent(
    profile: HospitalProfile, index: int, seed: int
) -> tuple[HospitalRecords, np.ndarray, dict[str, np.ndarray]]:
    """`generate_with_uniforms`, and each record's latent true values (name -> (n,) array, as `_draw_latent`).

    Why: the multi-class and continuous generators (`fedhealth.data.synthetic_outcomes`) draw their outcome
    from these patients' true values, so their truth is a function of the latent patient, not of its noisy
    record. The random stream is the one `generate_hospital` draws from, in the same order, so the records,
    uniforms and labels are bit-identical to it."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    tp = _TIER_PARAMS[profile.tier]
    rp = _REGION_PARAMS[profile.region]
    n = int(profile.records)

    site_bias = _draw_site_bias(rng)
    latent = _draw_latent(rng, n, tp, rp)
    true_risk = _sigmoid(_outcome_logit(latent, tp, rp))
    uniforms = rng.random(n)
    label = (uniforms < true_risk).astype(np.int64)
    features = _measure(rng, latent, tp, site_bias)
    return HospitalRecords(
        profile=profile, features=features, label=label, true_risk=true_risk, site_bias=site_bias
    ), uniforms, latent


def generate_hospitals(profiles: Sequence[HospitalProfile], seed: int) -> list[HospitalRecords]:
    """Generate every hospital of a federation; hospital ``i`` uses stream (seed, i)."""
    return [generate_hospital(profile, index, seed) for index, profile in enumerate(profiles)]



# --------------------------------------------------------------------------------------------------
# Splitting and the best achievable AUROC
# --------------------------------------------------------------------------------------------------


def _subset(records: HospitalRecords, idx: np.ndarray) -> HospitalRecords:
    return HospitalRecords(
        profile=records.profile,
        features=records.features[idx],
        label=records.label[idx],
        true_risk=records.true_risk[idx],
        site_bias=dict(records.site_bias),
    )


def train_test_split(
    records: HospitalRecords, test_fraction: float, seed: int, index: int
) -> tuple[HospitalRecords, HospitalRecords]:
    """Split one hospital's records into (train, test), stratified by label and deterministic.

    Each class is shuffled with ``default_rng(SeedSequence([seed, index, 1]))`` and ``test_fraction``
    of it (rounded, at least one and at most all but one) goes to the test side, so both sides hold at
    least one record of every class that has two or more. A class with one record trains (it can still
    teach the federated model); a class with none is absent from both sides. Such a site is not refused:
    it trains with the federation, and the figures its sides cannot give (its own AUROC on a one-class
    test side, a local-only model from one class) are reported as undefined (`one_class_sides`). Rows
    keep their original order within each side.

    Raises:
        ValueError: if ``test_fraction`` is not in (0, 1).
    """
    test_mask = stratified_test_mask(records.label, test_fraction, seed, index, records.profile.name)
    return _subset(records, np.flatnonzero(~test_mask)), _subset(records, np.flatnonzero(test_mask))


def stratified_test_mask(label: np.ndarray, test_fraction: float, seed: int, index: int, name: str,
                         classes: Sequence[int] = (0, 1)) -> np.ndarray:
    """Which rows go to the test side: see `train_test_split`. Shared by generated and file hospitals, so
    the same rows in the same order split identically whichever path they came by. `classes`: the values of
    `label` stratified by, in order (a multi-class outcome's class indices; one group for no stratification)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"hospital {name!r}: test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 1]))
    test_parts = []
    for cls in classes:
        idx = np.flatnonzero(label == cls)
        n_test = min(max(round(test_fraction * idx.size), 1), idx.size - 1) if idx.size >= 2 else 0
        test_parts.append(rng.permutation(idx)[:n_test])
    test_mask = np.zeros(len(label), dtype=bool)
    test_mask[np.concatenate(test_parts)] = True
    return test_mask


def one_class_sides(y_train: np.ndarray, y_test: np.ndarray) -> list[str]:
    """Which sides of a hospital's split hold one class only (or no records), as phrases for a warning:
    e.g. ``["its training split holds 31 positive and 0 negative records"]``; empty when both hold both."""
    out = []
    for side, y in (("training", y_train), ("test", y_test)):
        pos = int(np.sum(y == 1))
        neg = int(np.size(y) - pos)
        if pos == 0 or neg == 0:
            out.append(f"its {side} split holds {pos} positive and {neg} negative records")
    return out


def bayes_auroc(records: HospitalRecords) -> float:
    """AUROC of the true risk against the observed labels: the best a model could expect on these rows.

    Raises:
        ValueError: if the records hold only one class, where AUROC is undefined.
    """
    from sklearn.metrics import roc_auc_score

    if np.unique(records.label).size < 2:
        raise ValueError(
            f"hospital {records.profile.name!r}: AUROC needs both outcome classes in the records"
        )
    return float(roc_auc_score(records.label, records.true_risk))
