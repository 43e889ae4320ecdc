"""Check one hospital's CSV or Parquet file against the study schema: which rows can be used, and why not.

Why counts only: the report is printed at the hospital, written to run directories and may be shown
to a data-protection officer, so it names columns, rules and counts, never a cell's value. A
problem that makes the whole file unusable (missing columns, text where numbers belong, a column
that looks recorded in another unit, no consented row) is a file-level error; a bad cell rejects
its row and is counted under its reason. Rows whose consent does not allow research use are left
out before anything else is looked at.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedhealth.errors import DataError
from fedhealth.study.schema import ColumnSpec, StudySchema, Value, as_number

UNIT_SUSPICION = 0.5  # a column with at least this share of measured values outside its range is suspect
MIN_SUSPECT_VALUES = 5


class DataFileError(DataError, ValueError):
    """A hospital's file that cannot be used at all; the message names the file and what to change."""


@dataclass
class ColumnStats:
    name: str
    missing: int = 0
    out_of_range: int = 0
    not_a_number: int = 0
    unknown_category: int = 0
    rows: int = 0

    @property
    def missing_rate(self) -> float:
        return self.missing / self.rows if self.rows else 0.0


@dataclass
class ValidationReport:
    source: str
    rows: int = 0
    no_consent: int = 0
    rejected: int = 0
    accepted: int = 0
    positives: int = 0
    reasons: Counter = field(default_factory=Counter)
    columns: list[ColumnStats] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.accepted > 0

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "ok": self.ok, "rows": self.rows, "no_consent": self.no_consent,
                "rejected": self.rejected, "accepted": self.accepted, "positives": self.positives,
                "reasons": dict(self.reasons.most_common()), "errors": self.errors, "warnings": self.warnings,
                "columns": [{"name": c.name, "missing": c.missing, "missing_rate": round(c.missing_rate, 4),
                             "out_of_range": c.out_of_range, "not_a_number": c.not_a_number,
                             "unknown_category": c.unknown_category} for c in self.columns]}

    def lines(self) -> list[str]:
        """The report for a terminal: counts and rules, never a patient's value."""
        out = [f"{self.source}: {self.rows} rows; {self.accepted} accepted ({self.positives} positive), "
               f"{self.rejected} rejected, {self.no_consent} without research consent"]
        out += [f"  error: {e}" for e in self.errors]
        out += [f"  warning: {w}" for w in self.warnings]
        if self.reasons:
            out.append("  rows rejected, by reason (a row can have several):")
            out += [f"    {n:>7}  {reason}" for reason, n in self.reasons.most_common()]
        if self.columns:
            out.append(f"  {'column':<24} {'missing':>8} {'out of range':>13} {'not a number':>13} {'unknown':>8}")
            for c in self.columns:
                out.append(f"  {c.name:<24} {c.missing_rate:>7.1%} {c.out_of_range:>13} {c.not_a_number:>13} "
                           f"{c.unknown_category:>8}")
        return out


@dataclass(frozen=True)
class ValidRecords:
    """The usable rows of one file: typed values in schema column order (NaN = missing, a categorical
    column holding its category's index), the 0/1 label and, with a split column, which rows are test."""

    values: np.ndarray
    label: np.ndarray
    is_test: np.ndarray | None
    report: ValidationReport


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (every cell as text, so nothing is guessed) or a Parquet file; DataFileError if unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".tsv"):
            return pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ",")
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{path}: the file is empty (no header, no rows)") from None
    except (OSError, ValueError, TypeError, pd.errors.ParserError) as err:  # the type only: pandas quotes cells
        raise DataFileError(f"{path}: cannot be read as {suffix.lstrip('.').upper()} ({type(err).__name__})") from None
    raise DataFileError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet")


def _missing(series: pd.Series, markers: list[str]) -> np.ndarray:
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        text = series.astype(str).str.strip()
        return (series.isna() | text.isin(markers) | (text == "")).to_numpy()
    return series.isna().to_numpy()


def _numbers(series: pd.Series, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float values with NaN where missing or unparseable, mask of cells that are not numbers)."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        values = series.astype(float).to_numpy(copy=True)
    else:
        values = pd.to_numeric(series.astype(str).str.strip(), errors="coerce").to_numpy(dtype=float, copy=True)
    values[missing] = np.nan
    bad = np.isnan(values) & ~missing
    return values, bad


def _match(series: pd.Series, allowed: list[Value], missing: np.ndarray) -> np.ndarray:
    """Index into `allowed` per cell (NaN where missing or not allowed); numbers match numbers."""
    out = np.full(len(series), np.nan)
    keys_num = {as_number(v): i for i, v in enumerate(allowed) if as_number(v) is not None}
    keys_txt = {str(v).strip(): i for i, v in enumerate(allowed)}
    lookup: dict[Any, float] = {}
    for raw in pd.unique(series[~missing]):
        num = as_number(raw)
        idx = keys_num.get(num) if num is not None else None
        if idx is None:
            idx = keys_txt.get(str(raw).strip())
        lookup[raw] = np.nan if idx is None else float(idx)
    present = np.flatnonzero(~missing)
    out[present] = series.iloc[present].map(lookup).to_numpy(dtype=float)
    return out


def _check_column(spec: ColumnSpec, series: pd.Series, markers: list[str], stats: ColumnStats,
                  bad_rows: np.ndarray, report: ValidationReport) -> np.ndarray:
    missing = _missing(series, markers)
    if spec.kind == "categorical":
        codes = _match(series, list(spec.categories or []), missing)
        unknown = np.isnan(codes) & ~missing
        stats.unknown_category = int(unknown.sum())
        _reject(report, bad_rows, unknown, f"{spec.name}: value not among its {len(spec.categories or [])} categories")
        values = codes
    else:
        values, not_number = _numbers(series, missing)
        stats.not_a_number = int(not_number.sum())
        if spec.zero_is_missing:
            missing = missing | (values == 0)
            values[values == 0] = np.nan
        _reject(report, bad_rows, not_number, f"{spec.name}: not a number")
        lo, hi = spec.bounds
        below, above = values < lo, values > hi
        stats.out_of_range = int(below.sum() + above.sum())
        unit = "" if spec.unit == "1" else f" {spec.unit}"
        if spec.kind == "binary":
            _reject(report, bad_rows, below | above | ((values != 0) & (values != 1) & ~np.isnan(values)),
                    f"{spec.name}: not 0 or 1")
        else:
            _reject(report, bad_rows, below, f"{spec.name}: below its valid minimum {lo:g}{unit}")
            _reject(report, bad_rows, above, f"{spec.name}: above its valid maximum {hi:g}{unit}")
        measured = int((~np.isnan(values)).sum() + not_number.sum())
        if measured >= MIN_SUSPECT_VALUES and spec.kind != "binary":
            for share, side, bound in ((above.sum() / measured, "above the valid maximum", hi),
                                       (below.sum() / measured, "below the valid minimum", lo)):
                if share >= UNIT_SUSPICION:
                    report.errors.append(f"column {spec.name!r}: {share:.0%} of its values are {side} {bound:g}"
                                         f"{unit}: is it recorded in another unit? The schema declares "
                                         f"{spec.unit!r}; convert the column or fix the schema")
            if stats.not_a_number / measured >= UNIT_SUSPICION:
                report.errors.append(f"column {spec.name!r}: {stats.not_a_number} of {measured} cells are not "
                                     "numbers (text where numbers are expected); check the column and its "
                                     "missing-value markers")
    stats.missing = int(missing.sum())
    if spec.required:
        _reject(report, bad_rows, missing, f"{spec.name}: missing (required)")
    return values


def _reject(report: ValidationReport, bad_rows: np.ndarray, mask: np.ndarray, reason: str) -> None:
    n = int(mask.sum())
    if n:
        report.reasons[reason] += n
        bad_rows |= mask


def validate_table(frame: pd.DataFrame, schema: StudySchema, source: str) -> ValidRecords:
    """Check a hospital's rows against `schema`; returns the usable rows and the report (never raises for
    bad data: callers decide, see `require_valid`). A table pandas cannot check (a Parquet column of lists,
    say) raises DataFileError naming the file and the error's type only: pandas quotes the cell."""
    try:
        return _validate_table(frame, schema, source)
    except DataFileError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as err:
        raise DataFileError(f"{source}: cannot be checked against schema {schema.study.name!r} "
                            f"({type(err).__name__}); check that each column holds one kind of value") from None


def _validate_table(frame: pd.DataFrame, schema: StudySchema, source: str) -> ValidRecords:
    report = ValidationReport(source=source, rows=len(frame))
    markers = [m.strip() for m in schema.study.missing_values]
    frame = frame.rename(columns=lambda c: str(c).strip())
    names = [str(c) for c in frame.columns]
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:  # `age` and ` age`: which of the two holds the ages cannot be guessed
        report.errors.append("column(s) " + ", ".join(map(repr, repeated)) + " appear more than once in the "
                             "header (spaces around a name are ignored); keep one column of each name")
        return ValidRecords(np.empty((0, len(schema.columns))), np.empty(0, dtype=np.int64), None, report)
    needed = [*schema.feature_names, schema.label.column]
    needed += [s.column for s in (schema.consent, schema.split) if s is not None]
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        report.errors.append(f"missing column(s) {', '.join(absent)}: the schema {schema.study.name!r} needs "
                             f"{', '.join(needed)}")
    extra = [c for c in frame.columns if c not in needed]
    if extra:
        report.warnings.append(f"column(s) not in the schema, ignored: {', '.join(map(str, extra))}")
    if len(frame) == 0:
        report.errors.append("the file has a header but no rows")
    if report.errors:
        return ValidRecords(np.empty((0, len(schema.columns))), np.empty(0, dtype=np.int64), None, report)

    keep = np.ones(len(frame), dtype=bool)
    if schema.consent is not None:
        c = frame[schema.consent.column]
        granted = ~np.isnan(_match(c, list(schema.consent.granted), _missing(c, markers)))
        report.no_consent = int((~granted).sum())
        keep &= granted
        if not granted.any():
            report.errors.append(f"no row allows research use (column {schema.consent.column!r} is never one of "
                                 f"{schema.consent.granted}); nothing can be trained on")
            return ValidRecords(np.empty((0, len(schema.columns))), np.empty(0, dtype=np.int64), None, report)
    frame = frame.loc[keep].reset_index(drop=True)
    bad = np.zeros(len(frame), dtype=bool)

    label_series = frame[schema.label.column]
    label_missing = _missing(label_series, markers)
    label_idx = _match(label_series, [*schema.label.positive, *schema.label.negative], label_missing)
    n_pos = len(schema.label.positive)
    label = np.where(np.isnan(label_idx), -1, (label_idx < n_pos).astype(np.int64))
    _reject(report, bad, label_missing, f"{schema.label.column} (label): missing")
    unexpected = np.isnan(label_idx) & ~label_missing
    _reject(report, bad, unexpected, f"{schema.label.column} (label): value is neither a positive "
                                     f"{schema.label.positive} nor a negative {schema.label.negative}")
    if len(frame) and unexpected.mean() >= UNIT_SUSPICION:
        report.errors.append(f"label column {schema.label.column!r}: {unexpected.mean():.0%} of rows hold a value "
                             f"the schema does not name (positive {schema.label.positive}, negative "
                             f"{schema.label.negative}); fix label.positive/label.negative in the schema")

    is_test = None
    if schema.split is not None:
        s = frame[schema.split.column]
        s_missing = _missing(s, markers)
        side = _match(s, [*schema.split.train, *schema.split.test], s_missing)
        _reject(report, bad, np.isnan(side), f"{schema.split.column} (split): neither a train value "
                                             f"{schema.split.train} nor a test value {schema.split.test}")
        is_test = side >= len(schema.split.train)

    values = np.empty((len(frame), len(schema.columns)))
    for j, spec in enumerate(schema.columns):
        stats = ColumnStats(spec.name, rows=len(frame))
        try:
            values[:, j] = _check_column(spec, frame[spec.name], markers, stats, bad, report)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as err:
            # pandas and numpy quote the cell they could not convert: only the type may be shown
            raise DataFileError(f"{source}: column {spec.name!r} cannot be checked ({type(err).__name__}); "
                                "check that it holds one kind of value (numbers, or the schema's categories)"
                                ) from None
        report.columns.append(stats)
        if stats.missing_rate > 0.5 and not spec.required:
            report.warnings.append(f"column {spec.name!r} is missing in {stats.missing_rate:.0%} of rows")

    good = ~bad
    report.rejected = int(bad.sum())
    report.accepted = int(good.sum())
    report.positives = int(label[good].sum())
    if not report.errors and report.accepted == 0:
        report.errors.append("every row was rejected; see the reasons above")
    return ValidRecords(values[good], label[good].astype(np.int64),
                        None if is_test is None else is_test[good], report)


def read_hospital_file(path: Path, schema: StudySchema, hospital: str | None = None) -> ValidRecords:
    """Read and validate a hospital's file; DataFileError (naming hospital, file and every problem) if
    nothing usable is left."""
    who = f"hospital {hospital!r}: " if hospital else ""
    try:
        frame = read_table(path)
    except DataFileError as err:
        raise DataFileError(f"{who}{err}") from None
    records = validate_table(frame, schema, str(path))
    if not records.report.ok:
        raise DataFileError("\n".join([f"{who}{path}: not usable with schema {schema.study.name!r}",
                                       *records.report.lines()]))
    return records
