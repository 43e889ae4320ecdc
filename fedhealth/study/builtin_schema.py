"""The outpatient chronic-disease record schema, in one place.

Every other module (the synthetic generator, the reader for a hospital's own files, the models) takes
column names, units, valid ranges and the input encoding from here, so that a change to the record is
a change to this file only.

Standardisation and imputation use fixed clinical reference values (``ref_center``, ``ref_scale``)
rather than statistics computed from data. In a federation no party may pool records across hospitals,
and statistics computed at one hospital would leak information about its patients and differ from site
to site; fixed published-style reference values give every hospital the same encoding with no data
exchange and no privacy cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

FeatureKind = Literal["continuous", "binary", "count"]


@dataclass(frozen=True)
class Feature:
    """One column of a patient record.

    Attributes:
        name: column name, as it appears in CSV/Parquet files and data frames.
        unit: unit of measurement ("1" for binary flags, "visits" for counts).
        kind: ``continuous`` (a measurement, may be missing), ``binary`` (0/1 flag) or ``count``.
        description: what the column holds, for the data dictionary.
        valid_min: smallest physiologically plausible value, in ``unit``; values below are data errors.
        valid_max: largest physiologically plausible value, in ``unit``.
        ref_center: fixed clinical reference value used as the centre when standardising and as the
            imputed value for a missing entry. It is a constant, never estimated from any hospital's
            data, so encoding needs no pooling of records and reveals nothing about a site.
        ref_scale: fixed clinical spread (same unit) used as the divisor when standardising.
    """

    name: str
    unit: str
    kind: FeatureKind
    description: str
    valid_min: float
    valid_max: float
    ref_center: float
    ref_scale: float


FEATURES: tuple[Feature, ...] = (
    Feature("age", "years", "continuous", "Age at the index visit, in completed years.", 18, 100, 55.0, 15.0),
    Feature("sex_male", "1", "binary", "Sex recorded as male (1) or female (0).", 0, 1, 0.5, 0.5),
    Feature("bmi", "kg/m2", "continuous", "Body-mass index, weight / height squared.", 12, 70, 28.0, 5.5),
    Feature(
        "systolic_bp", "mmHg", "continuous", "Seated office systolic blood pressure.", 70, 250, 130.0, 18.0
    ),
    Feature(
        "diastolic_bp", "mmHg", "continuous", "Seated office diastolic blood pressure.", 30, 150, 80.0, 11.0
    ),
    Feature(
        "fasting_glucose",
        "mmol/L",
        "continuous",
        "Fasting plasma glucose, most recent in the past year.",
        1.5,
        35,
        5.8,
        1.6,
    ),
    Feature(
        "hba1c", "%", "continuous", "Glycated haemoglobin (NGSP/DCCT %), most recent.", 3.0, 20, 6.0, 1.2
    ),
    Feature(
        "ldl_cholesterol",
        "mmol/L",
        "continuous",
        "Low-density lipoprotein cholesterol, most recent.",
        0.2,
        12,
        3.0,
        1.0,
    ),
    Feature(
        "hdl_cholesterol",
        "mmol/L",
        "continuous",
        "High-density lipoprotein cholesterol, most recent.",
        0.2,
        5,
        1.3,
        0.4,
    ),
    Feature(
        "creatinine",
        "umol/L",
        "continuous",
        "Serum creatinine (enzymatic assay), most recent.",
        20,
        1500,
        85.0,
        30.0,
    ),
    Feature(
        "egfr",
        "mL/min/1.73m2",
        "continuous",
        "Estimated glomerular filtration rate, CKD-EPI 2021 from the reported creatinine, age and sex.",
        2,
        150,
        80.0,
        22.0,
    ),
    Feature(
        "current_smoker", "1", "binary", "Current tobacco smoker (1) at the index visit.", 0, 1, 0.0, 1.0
    ),
    Feature("hypertension_dx", "1", "binary", "Hypertension recorded as a diagnosis (1).", 0, 1, 0.0, 1.0),
    Feature("diabetes_dx", "1", "binary", "Type 2 diabetes recorded as a diagnosis (1).", 0, 1, 0.0, 1.0),
    Feature(
        "prior_cvd",
        "1",
        "binary",
        "History of myocardial infarction, stroke or revascularisation (1).",
        0,
        1,
        0.0,
        1.0,
    ),
    Feature("on_statin", "1", "binary", "Statin on the active medication list (1).", 0, 1, 0.0, 1.0),
    Feature(
        "visits_past_year",
        "visits",
        "count",
        "Outpatient visits at this hospital in the past 12 months.",
        0,
        100,
        4.0,
        3.0,
    ),
)
"""The model's input columns, in the fixed order used by every array in the project."""

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

REQUIRED_FEATURES: tuple[str, ...] = ("age", "sex_male")
"""A record missing one of these is rejected when read from a file (see the data dictionary)."""

LABEL = "complication_1y"
LABEL_DESCRIPTION = (
    "Major cardiovascular or diabetic complication within 12 months of the index visit "
    "(myocardial infarction, stroke, heart-failure admission, diabetic foot ulcer or amputation, "
    "or hospital admission for hyper-/hypoglycaemia); 1 = yes, 0 = no."
)

TIERS: tuple[str, ...] = ("tertiary", "secondary", "community")
"""Hospital tiers: tertiary referral centres, secondary (district) hospitals, community clinics."""

REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")

MISSABLE_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.kind == "continuous")
"""Features that get a missing-indicator column in the model input: every continuous measurement."""

ENCODED_WIDTH: int = len(FEATURES) + len(MISSABLE_FEATURES)
"""Width of :func:`encode_features` output: one standardised column per feature plus the indicators."""

CLIP_STANDARDISED = 6.0
"""Standardised values are clipped to +/- this many reference scales, so one wild value cannot dominate."""

_FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
_MISSABLE_INDEX = np.array([_FEATURE_INDEX[name] for name in MISSABLE_FEATURES], dtype=np.intp)


def feature_index(name: str) -> int:
    """Column index of feature ``name`` in every (n, F) array; raises KeyError listing the valid names."""
    try:
        return _FEATURE_INDEX[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; expected one of {', '.join(FEATURE_NAMES)}") from None


def valid_bounds() -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (valid_min, valid_max) as float64 arrays of length F, in each feature's unit."""
    return (
        np.array([f.valid_min for f in FEATURES], dtype=np.float64),
        np.array([f.valid_max for f in FEATURES], dtype=np.float64),
    )


def reference_values() -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (ref_center, ref_scale) as float64 arrays of length F, in each feature's unit."""
    return (
        np.array([f.ref_center for f in FEATURES], dtype=np.float64),
        np.array([f.ref_scale for f in FEATURES], dtype=np.float64),
    )


def encode_features(x: np.ndarray) -> np.ndarray:
    """Turn raw records into the model input, using only fixed reference values (no pooled statistics).

    Args:
        x: raw records, shape (n, F) in the units of :data:`FEATURES`, NaN for a missing value.

    Returns:
        float32 array of shape (n, :data:`ENCODED_WIDTH`). Columns ``0..F-1`` hold
        ``(value - ref_center) / ref_scale`` clipped to [-6, 6], with a missing value set to 0
        (the reference centre); columns ``F..`` hold 1.0 where the matching feature in
        :data:`MISSABLE_FEATURES` was missing, so the model can tell "imputed" from "measured normal".
        A missing binary or count (outside the missable list) is imputed at its reference centre
        without an indicator.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(FEATURES):
        raise ValueError(
            f"expected raw records of shape (n, {len(FEATURES)}) with columns {', '.join(FEATURE_NAMES)}; "
            f"got shape {arr.shape}"
        )
    center, scale = reference_values()
    missing = np.isnan(arr)
    standardised = np.clip((arr - center) / scale, -CLIP_STANDARDISED, CLIP_STANDARDISED)
    standardised[missing] = 0.0
    out = np.empty((arr.shape[0], ENCODED_WIDTH), dtype=np.float32)
    out[:, : len(FEATURES)] = standardised
    out[:, len(FEATURES) :] = missing[:, _MISSABLE_INDEX]
    return out


def write_data_dictionary(path: Path) -> None:
    """Write the schema as a Markdown data dictionary to ``path`` (parent folders are created).

    Hospitals use it to map their own extracts onto the expected columns and units before a run.
    """
    path = Path(path)
    lines = [
        "# fedhealth data dictionary",
        "",
        "One row per patient (one outpatient record per patient at one hospital). Columns in this order:",
        "",
        "| name | unit | kind | valid range | description |",
        "|---|---|---|---|---|",
    ]
    for f in FEATURES:
        lines.append(
            f"| `{f.name}` | {f.unit} | {f.kind} | {f.valid_min:g} to {f.valid_max:g} | {f.description} |"
        )
    lines += [
        "",
        "## Label",
        "",
        f"`{LABEL}` (binary, 0/1): {LABEL_DESCRIPTION}",
        "",
        "## Missing values",
        "",
        "Leave a value empty (NaN) when it was not measured; never fill in zeros or a default. "
        "Age and sex are required. Binary flags are 1 when recorded and 0 otherwise. "
        "For the model, a missing value is replaced by the fixed reference centre of its feature and "
        "every continuous measurement gets a missing-indicator column, so no statistics are pooled "
        "across hospitals: " + ", ".join(f"`{n}`" for n in MISSABLE_FEATURES) + ".",
        "",
        "## Units",
        "",
        "Use SI laboratory units exactly as listed: glucose and cholesterol in mmol/L (divide mg/dL "
        "glucose by 18.0 and mg/dL cholesterol by 38.67), creatinine in umol/L (multiply mg/dL by 88.4), "
        "HbA1c in NGSP % (from IFCC mmol/mol: % = 0.0915 * mmol/mol + 2.15). Values outside the valid "
        "range are treated as data errors.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
