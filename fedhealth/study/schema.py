"""A study's record schema as a file: columns, types, units, valid ranges, outcome, consent, split.

Why a file: a hospital that brings its own data (deployment) or a researcher who brings several
sites' files (simulation) describes the study once, in TOML, and every party checks and encodes its
records against that same description. The built-in synthetic study is one such schema
(`default_schema`), written next to its files by `fedhealth synth`.

Encoding uses only fixed reference values from the schema (`center`, `scale`): no statistic is ever
computed from, or pooled across, hospitals' records, so encoding costs no privacy and is identical at
every site. A missing value is imputed at `center` and, where `indicator` is on, flagged in an extra
input; a categorical column becomes one-hot inputs (all zero when missing).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_serializer,
    model_validator,
)

from fedhealth.errors import StudyConfigError
from fedhealth.study.textfile import NotTomlError, TextFileError, read_toml

ColumnKind = Literal["continuous", "count", "binary", "categorical"]
Value = int | float | str
CLIP_STANDARDISED = 6.0  # standardised values are clipped to +/- this many reference scales


class SchemaError(StudyConfigError, ValueError):
    """A schema file that cannot describe a study (unreadable, self-contradictory): one line per problem."""


# The reason given for inf or nan in any number of a study, its schema or a site policy (pydantic's type
# `finite_number`), in one wording wherever it is refused.
NOT_FINITE = "not a finite number (inf and nan are refused): give a number"


class _Strict(BaseModel):
    # inf or nan in a range, centre or scale would pass every comparison and break the encoding
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def same_value(a: Value, b: Value) -> bool:
    """Cell values compare as numbers when both read as numbers ("1" == 1 == 1.0), else as trimmed text."""
    fa, fb = as_number(a), as_number(b)
    if fa is not None and fb is not None:
        return fa == fb
    return str(a).strip() == str(b).strip()


def as_number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


class ColumnSpec(_Strict):
    """One model input column. Units are the study's: values in another unit are data errors."""

    name: str = Field(min_length=1)
    kind: ColumnKind
    unit: str = "1"
    description: str = ""
    min: float | None = Field(default=None, description="smallest valid value, in `unit`")
    max: float | None = Field(default=None, description="largest valid value, in `unit`")
    center: float | None = Field(default=None, description="fixed reference centre: imputed value, in `unit`")
    scale: float | None = Field(default=None, gt=0, description="fixed reference spread, in `unit`")
    required: bool = Field(default=False, description="a row missing this value is rejected")
    indicator: bool | None = Field(default=None, description="add a missing-indicator input (default: continuous)")
    categories: list[Value] | None = Field(default=None, description="categorical: the allowed values, one-hot")
    zero_is_missing: bool = Field(default=False, description="read 0 as missing (a registry's 'not measured')")

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        where = f"column {self.name!r}"
        if self.kind == "categorical":
            if not self.categories or len(self.categories) < 2:
                raise ValueError(f"{where}: a categorical column needs at least two `categories`")
            for i, a in enumerate(self.categories):
                if any(same_value(a, b) for b in self.categories[i + 1:]):
                    raise ValueError(f"{where}: category {a!r} is listed twice")
            if any(v is not None for v in (self.min, self.max, self.center, self.scale)):
                raise ValueError(f"{where}: a categorical column takes `categories`, not min/max/center/scale")
            return self
        if self.categories is not None:
            raise ValueError(f"{where}: only a categorical column takes `categories`")
        if self.kind == "binary":
            for key in ("min", "max"):
                if getattr(self, key) not in (None, 0.0 if key == "min" else 1.0):
                    raise ValueError(f"{where}: a binary column takes the values 0 and 1; remove `{key}`")
            return self
        missing = [k for k in ("min", "max", "center", "scale") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"{where}: a {self.kind} column needs {', '.join(missing)} (valid range and fixed "
                             "reference values, in its unit)")
        if self.min >= self.max:
            raise ValueError(f"{where}: min ({self.min:g}) must be below max ({self.max:g})")
        if not self.min <= self.center <= self.max:
            raise ValueError(f"{where}: center ({self.center:g}) lies outside the valid range "
                             f"{self.min:g} to {self.max:g}")
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        if self.kind == "binary":
            return 0.0, 1.0
        return float(self.min), float(self.max)  # type: ignore[arg-type]

    @property
    def reference(self) -> tuple[float, float]:
        """(centre, scale) for standardising; a binary flag defaults to (0, 1)."""
        if self.kind == "binary":
            return (self.center if self.center is not None else 0.0), (self.scale or 1.0)
        return float(self.center), float(self.scale)  # type: ignore[arg-type]

    @property
    def has_indicator(self) -> bool:
        return self.indicator if self.indicator is not None else self.kind == "continuous"


class ClassSpec(_Strict):
    """One category of a multi-class outcome: its name and the cell values that mean it."""

    name: str = Field(min_length=1)
    values: list[Value] = Field(min_length=1, description="cell values meaning this class")


class LabelSpec(_Strict):
    """The outcome column. Binary and time-to-event: `positive`/`negative` (the event indicator for
    time-to-event). Multi-class: `classes`, in order (the model's output k is `classes[k]`). Continuous: the
    column only; its unit and valid range are the schema's `[value]` table."""

    column: str = Field(min_length=1)
    positive: list[Value] = Field(default_factory=list, description="values meaning the positive class")
    negative: list[Value] = Field(default_factory=list, description="values meaning the negative class")
    classes: list[ClassSpec] | None = Field(default=None, description="a multi-class outcome's categories")
    description: str = ""

    @model_validator(mode="after")
    def _disjoint(self) -> LabelSpec:
        both = [p for p in self.positive if any(same_value(p, n) for n in self.negative)]
        if both:
            raise ValueError(f"label: {', '.join(map(repr, both))} listed as both positive and negative")
        if self.classes is not None:
            names = [c.name for c in self.classes]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"label.classes: {', '.join(map(repr, repeated))} named more than once")
            values = [(c.name, v) for c in self.classes for v in c.values]
            shared = sorted({repr(v) for i, (a, v) in enumerate(values) for b, w in values[i + 1:]
                             if a != b and same_value(v, w)})
            if shared:
                raise ValueError(f"label.classes: {', '.join(shared)} listed for more than one class")
        return self

    @model_serializer(mode="wrap")
    def _as_before_outcome_kinds(self, handler: Any) -> dict[str, Any]:
        """Without classes the label dumps as it did before outcome kinds (fingerprints unchanged)."""
        data = handler(self)
        if self.classes is None:
            data.pop("classes", None)
        return data

    def code(self, value: Any) -> int | None:
        """1, 0, or None for a value the schema does not name (binary and time-to-event)."""
        if any(same_value(value, p) for p in self.positive):
            return 1
        if any(same_value(value, n) for n in self.negative):
            return 0
        return None

    def class_of(self, value: Any) -> int | None:
        """The index of the class whose values hold `value`, or None (multi-class)."""
        for k, c in enumerate(self.classes or ()):
            if any(same_value(value, v) for v in c.values):
                return k
        return None


class ConsentSpec(_Strict):
    """Rows whose consent value is not in `granted` (or is missing) are left out of training and testing."""

    column: str = Field(min_length=1)
    granted: list[Value] = Field(min_length=1, description="values that allow research use")


class SplitSpec(_Strict):
    """An official train/test split carried by the data (instead of fedhealth's seeded split)."""

    column: str = Field(min_length=1)
    train: list[Value] = Field(min_length=1)
    test: list[Value] = Field(min_length=1)


MAX_INTERVALS = 100  # a discrete-time hazard model's intervals (one logit each)


class TimeSpec(_Strict):
    """The follow-up time of a time-to-event outcome (`study.outcome = "time_to_event"`); `[label]` is then the
    event indicator (positive: the event was observed at that time; negative: censored, event-free then).

    `intervals` are the edges of the discrete-time hazard model's intervals, from 0, in `unit`
    (`fedhealth.model.losses.LogisticHazard`); `horizons` the times at which time-dependent metrics are read.
    Both are the study's fixed choices, never derived from any hospital's records."""

    column: str = Field(min_length=1)
    unit: str = Field(min_length=1, description="e.g. days")
    max: float = Field(gt=0, allow_inf_nan=False, description="the longest valid follow-up, in `unit`")
    # numbers only (no "60", no true); at most MAX_INTERVALS intervals: each is one model output
    intervals: list[StrictFloat | StrictInt] = Field(min_length=2, max_length=MAX_INTERVALS + 1)
    horizons: list[StrictFloat | StrictInt] = Field(min_length=1, max_length=MAX_INTERVALS)
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> TimeSpec:
        edges = self.intervals
        if edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError("time.intervals: the interval edges must start at 0 and increase strictly")
        if not all(math.isfinite(e) for e in edges) or edges[-1] > self.max:
            raise ValueError(f"time.intervals: the last edge must be finite and at most time.max ({self.max:g})")
        if any(not 0 < h <= edges[-1] for h in self.horizons) or sorted(set(self.horizons)) != self.horizons:
            raise ValueError("time.horizons: give increasing times inside the intervals (above 0, at most the last "
                             f"edge, {edges[-1]:g})")
        return self


class ValueSpec(_Strict):
    """A continuous outcome (`study.outcome = "continuous"`): its unit, its valid range (a value outside is a
    data error, rejected with the row) and the fixed reference centre and scale the model's target is
    standardised by (chosen for the study, like a column's; never statistics of any hospital's records)."""

    unit: str = Field(min_length=1, description="e.g. days, mmol/L")
    min: float = Field(description="the smallest valid value, in `unit`")
    max: float = Field(description="the largest valid value, in `unit`")
    center: float = Field(description="the reference value the target is centred on")
    scale: float = Field(gt=0, description="the reference spread the target is divided by")
    description: str = ""

    @model_validator(mode="after")
    def _range(self) -> ValueSpec:
        if not self.min < self.max:
            raise ValueError(f"value: min ({self.min:g}) must be below max ({self.max:g})")
        return self


Outcome = Literal["binary", "time_to_event", "multiclass", "continuous"]


class StudyInfo(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    outcome: Outcome = Field(default="binary", description="binary: [label] is the outcome; time_to_event: "
                                                            "[label] is the event indicator and [time] the "
                                                            "follow-up; multiclass: [label] names its classes; "
                                                            "continuous: [label] is a number, [value] its unit "
                                                            "and range")
    missing_values: list[str] = Field(default_factory=lambda: ["", "NA", "NaN", "nan"],
                                      description="cell texts read as missing (an empty cell always is)")


class StudySchema(_Strict):
    study: StudyInfo
    label: LabelSpec
    time: TimeSpec | None = None
    value: ValueSpec | None = None
    consent: ConsentSpec | None = None
    split: SplitSpec | None = None
    columns: list[ColumnSpec] = Field(min_length=1)
    not_inputs: list[str] = Field(default_factory=list,
                                  description="columns the files hold on purpose that are neither an input nor a "
                                              "role column (a site code, a record number): read past without a "
                                              "warning, never used")

    @model_validator(mode="after")
    def _names(self) -> StudySchema:
        names = [c.name for c in self.columns]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"columns: {', '.join(repeated)} listed more than once")
        if (self.study.outcome == "time_to_event") != (self.time is not None):
            raise ValueError("a time_to_event study needs a [time] table (its follow-up column), and only such a "
                             "study has one: set study.outcome = \"time_to_event\" or remove [time]")
        if (self.study.outcome == "continuous") != (self.value is not None):
            raise ValueError("a continuous study needs a [value] table (unit, min, max, center, scale), and only "
                             "such a study has one: set study.outcome = \"continuous\" or remove [value]")
        kind, label = self.study.outcome, self.label
        if kind in ("binary", "time_to_event") and not (label.positive and label.negative):
            raise ValueError(f"label: a {kind} study names the values of its two classes: give label.positive "
                             "and label.negative")
        if kind in ("binary", "time_to_event", "continuous") and label.classes is not None:
            raise ValueError(f"label.classes: only a multiclass study has classes (this one is {kind}); set "
                             "study.outcome = \"multiclass\" or remove label.classes")
        if kind == "multiclass" and (label.classes is None or len(label.classes) < 3):
            raise ValueError("label.classes: a multiclass study names at least three classes (two are a binary "
                             "study: use label.positive and label.negative)")
        if kind in ("multiclass", "continuous") and (label.positive or label.negative):
            raise ValueError(f"label: a {kind} study has no positive/negative values"
                             + (": name its classes in label.classes" if kind == "multiclass" else
                                ": its values are numbers in [value]'s range"))
        special = {"label": self.label.column}
        if self.time:
            special["time"] = self.time.column
        if self.consent:
            special["consent"] = self.consent.column
        if self.split:
            special["split"] = self.split.column
        for role, col in special.items():
            if col in names:
                raise ValueError(f"{role}: column {col!r} is also a model input; a {role} column cannot be one")
        if len(set(special.values())) < len(special):
            raise ValueError(f"label, time, consent and split must be different columns; got {special}")
        used = [n for n in self.not_inputs if n in names or n in special.values()]
        if used:
            raise ValueError(f"not_inputs: {', '.join(map(repr, used))} is a column the study uses; list in "
                             "not_inputs only columns it must read past")
        return self

    # -- what the model sees --------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def numeric_columns(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.kind != "categorical"]

    @property
    def encoded_names(self) -> list[str]:
        """The model's inputs, in order: standardised numeric columns, missing indicators, one-hots."""
        names = [c.name for c in self.numeric_columns]
        names += [f"{c.name}_missing" for c in self.numeric_columns if c.has_indicator]
        for c in self.columns:
            if c.kind == "categorical":
                names += [f"{c.name}={v}" for v in c.categories or []]
        return names

    @property
    def encoded_width(self) -> int:
        return len(self.encoded_names)

    @model_serializer(mode="wrap")
    def _as_before_outcome_kinds(self, handler: Any) -> dict[str, Any]:
        """A binary schema dumps exactly as it did before outcome kinds (no `study.outcome`, no `time`), so
        its fingerprint, the study config's fingerprint (which keys run directories, resumes and the ledger's
        study id), written schema files and the wire payload are what they were, and an older fedhealth reads
        them. Likewise an empty `not_inputs` is left out."""
        data = handler(self)
        if not self.not_inputs:
            data.pop("not_inputs", None)
        if self.value is None:
            data.pop("value", None)
        if self.study.outcome == "binary":
            data.pop("time", None)
            if isinstance(data.get("study"), dict):
                data["study"].pop("outcome", None)
        return data

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Model inputs from typed values: shape (n, len(columns)) float64 in schema order, NaN = missing,
        a categorical column holding the index of its category. Returns float32 (n, encoded_width)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(f"expected values of shape (n, {len(self.columns)}) for columns "
                             f"{', '.join(self.feature_names)}; got {x.shape}")
        out = np.zeros((x.shape[0], self.encoded_width), dtype=np.float32)
        at = 0
        numeric = [i for i, c in enumerate(self.columns) if c.kind != "categorical"]
        for i in numeric:
            center, scale = self.columns[i].reference
            col = x[:, i]
            z = np.clip((col - center) / scale, -CLIP_STANDARDISED, CLIP_STANDARDISED)
            out[:, at] = np.where(np.isnan(col), 0.0, z)
            at += 1
        for i in numeric:
            if self.columns[i].has_indicator:
                out[:, at] = np.isnan(x[:, i])
                at += 1
        for i, c in enumerate(self.columns):
            if c.kind != "categorical":
                continue
            k = len(c.categories or [])
            col = x[:, i]
            present = ~np.isnan(col)
            idx = np.where(present, col, 0).astype(np.int64)
            block = np.zeros((x.shape[0], k), dtype=np.float32)
            block[np.flatnonzero(present), idx[present]] = 1.0
            out[:, at:at + k] = block
            at += k
        return out


def load_schema(path: Path) -> StudySchema:
    """Read and check a schema TOML file; SchemaError names the file and every problem."""
    path = Path(path)
    try:
        data = read_toml(path)
    except FileNotFoundError:
        raise SchemaError(f"{path}: schema file not found") from None
    except NotTomlError as err:
        raise SchemaError(f"{path}: not a readable TOML file ({err.why})") from None
    except TextFileError as err:
        raise SchemaError(str(err)) from None
    except OSError as err:
        raise SchemaError(f"{path}: not a readable TOML file ({err.strerror or type(err).__name__})") from None
    return schema_from_dict(data, str(path))


def schema_from_dict(data: dict[str, Any], source: str) -> StudySchema:
    try:
        return StudySchema.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = NOT_FINITE if e["type"] == "finite_number" else e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {loc + ': ' if loc else ''}{msg}")
        raise SchemaError("\n".join(lines)) from None


def write_schema(schema: StudySchema, path: Path) -> None:
    import tomli_w

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Study schema for {schema.study.name!r}: read by `fedhealth validate`, `fedhealth simulate` and\n"
              "# every hospital's client. Units are the study's; center/scale are fixed reference values\n"
              "# (never statistics of any hospital's data).\n")
    path.write_text(header + tomli_w.dumps(schema.model_dump(mode="json", exclude_none=True)), encoding="utf-8")


def default_schema() -> StudySchema:
    """The built-in synthetic outpatient study (`fedhealth.study.builtin_schema`) as a StudySchema; encoding
    with it gives exactly `fedhealth.study.builtin_schema.encode_features`."""
    from fedhealth.study import builtin_schema as builtin

    columns = []
    for f in builtin.FEATURES:
        spec: dict[str, Any] = {"name": f.name, "kind": f.kind, "unit": f.unit, "description": f.description,
                                "center": f.ref_center, "scale": f.ref_scale,
                                "required": f.name in builtin.REQUIRED_FEATURES}
        if f.kind != "binary":
            spec.update(min=f.valid_min, max=f.valid_max)
        columns.append(spec)
    return StudySchema.model_validate({
        "study": {"name": "fedhealth-outpatient-synthetic",
                  "description": "The synthetic outpatient chronic-disease study of fedhealth's generator."},
        "label": {"column": builtin.LABEL, "positive": [1], "negative": [0],
                  "description": builtin.LABEL_DESCRIPTION},
        "columns": columns,
    })
