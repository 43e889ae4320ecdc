"""Check one hospital's CSV or Parquet file against the study schema: which rows can be used, and why not.

Why counts only: the report is printed at the hospital, written to run directories and may be shown
to a data-protection officer, so it names columns, rules and counts, never a cell's value. A
problem that makes the whole file unusable (missing columns, text where numbers belong, a column
that looks recorded in another unit, no consented row) is a file-level error; a bad cell rejects
its row and is counted under its reason. Rows whose consent does not allow research use are left
out before anything else is looked at.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedhealth.durable import special_kind
from fedhealth.errors import DataError
from fedhealth.study.config import MIN_TRAIN_RECORDS
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
    positives: int = 0  # rows of the positive class; of a time_to_event study, rows with the event observed
    # a multiclass study's accepted rows per class, in `label.classes` order (None for the other kinds)
    class_counts: dict[str, int] | None = None
    reasons: Counter = field(default_factory=Counter)
    columns: list[ColumnStats] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    positive_word: str = "positive"  # "with the event" for a time_to_event study
    outcome: str = "binary"  # the study's outcome kind (`study.outcome`)

    @property
    def ok(self) -> bool:
        return not self.errors and self.accepted > 0

    def _outcome_counts(self) -> dict[str, Any]:
        """What the report counts of the outcome: positives (binary, time-to-event: the key of before outcome
        kinds, so their reports are unchanged), rows per class (multiclass), nothing (continuous: any figure
        of a hospital's values would be a release)."""
        if self.outcome == "multiclass":
            return {"outcome": self.outcome, "class_counts": dict(self.class_counts or {})}
        if self.outcome == "continuous":
            return {"outcome": self.outcome}
        return {"positives": self.positives}

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "ok": self.ok, "rows": self.rows, "no_consent": self.no_consent,
                "rejected": self.rejected, "accepted": self.accepted, **self._outcome_counts(),
                "reasons": dict(self.reasons.most_common()), "errors": self.errors, "warnings": self.warnings,
                "columns": [{"name": c.name, "missing": c.missing, "missing_rate": round(c.missing_rate, 4),
                             "out_of_range": c.out_of_range, "not_a_number": c.not_a_number,
                             "unknown_category": c.unknown_category} for c in self.columns]}

    def lines(self) -> list[str]:
        """The report for a terminal: counts and rules, never a patient's value."""
        if self.outcome == "multiclass":
            per_class = ", ".join(f"{name} {n}" for name, n in (self.class_counts or {}).items())
            accepted = f"{self.accepted} accepted ({per_class})"
        elif self.outcome == "continuous":
            accepted = f"{self.accepted} accepted"
        else:
            accepted = f"{self.accepted} accepted ({self.positives} {self.positive_word})"
        out = [f"{self.source}: {self.rows} rows; {accepted}, "
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
    column holding its category's index), the label, the follow-up time of a time_to_event study, and, with a
    split column, which rows are test.

    `label` by `study.outcome`: binary, the 0/1 class (1 = positive); time_to_event, the event indicator
    (1 = event, 0 = censored); both int64. Multiclass: the index of the row's class in `label.classes`, int64.
    Continuous: the value in `[value].unit`, float64, inside [value.min, value.max]. Without values
    (`keep_values=False`, `fedhealth validate`) the labels are only counted: int8 (float32 for continuous)."""

    values: np.ndarray
    label: np.ndarray
    is_test: np.ndarray | None
    report: ValidationReport
    time: np.ndarray | None = None  # a time_to_event study's follow-up per usable row (float64, the schema's unit)


DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB: far above any hospital's table, far below what would exhaust memory
MAX_BYTES_ENV = "FEDHEALTH_MAX_DATA_BYTES"  # overrides DEFAULT_MAX_BYTES for every command and process
CHUNK_ROWS = 50_000  # rows of a CSV held as text at once while it is validated


def max_data_bytes() -> int:
    """The size limit on a data file: FEDHEALTH_MAX_DATA_BYTES if set, else DEFAULT_MAX_BYTES (2 GiB)."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise DataFileError(f"{MAX_BYTES_ENV} = {raw!r}: expected a positive whole number of bytes "
                            f"(default {DEFAULT_MAX_BYTES}, 2 GiB)")
    return limit


def check_data_file(path: Path, max_bytes: int | None = None) -> int:
    """Refuse, before the file is opened, what cannot be a hospital's table; returns its size in bytes.

    Why before opening: opening a FIFO waits for a writer forever, and a link to /dev/zero or /dev/urandom
    reads without end until memory runs out. `os.stat` follows links, so the type checked is the type of the
    file actually read. The size limit (`max_bytes`, else `max_data_bytes()`) keeps a wrong path (a disk
    image, a database dump) from being read whole."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataFileError(f"{path}: data file not found") from None
    except OSError as err:
        raise DataFileError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    kind = special_kind(info.st_mode)
    if kind is not None:
        via = f" (it is a link to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise DataFileError(f"{path}: is {kind}{via}, not a regular file; give the path of the CSV or Parquet "
                            "file itself")
    limit = max_bytes if max_bytes is not None else max_data_bytes()
    if info.st_size > limit:
        raise DataFileError(f"{path}: {info.st_size} bytes, above the data-file size limit of {limit} bytes "
                            f"({limit / 1024**3:.3g} GiB); if this is the right file, raise the limit with "
                            f"`fedhealth validate --max-bytes N` or the environment variable {MAX_BYTES_ENV}")
    return info.st_size


def _unreadable(path: Path, err: BaseException) -> DataFileError:
    if isinstance(err, pd.errors.EmptyDataError):
        return DataFileError(f"{path}: the file is empty (no header, no rows)")
    if isinstance(err, UnicodeDecodeError):
        return DataFileError(f"{path}: not UTF-8 text (a byte of another encoding, such as Latin-1); save the "
                             "file as UTF-8")
    return DataFileError(f"{path}: cannot be read as {path.suffix.lstrip('.').upper()} ({type(err).__name__})")


def iter_table(path: Path, chunk_rows: int = CHUNK_ROWS, max_bytes: int | None = None) -> Iterator[pd.DataFrame]:
    """A CSV in blocks of `chunk_rows` rows, every cell as text (so nothing is guessed), or a Parquet file
    whole (its columns are typed and compact); DataFileError if it is special, too big or unreadable.

    Why blocks: a CSV's cells held as Python strings take about seven times the file, so a large hospital
    file read whole could exhaust the memory of the machine that validates it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".txt", ".tsv"):
        if not path.exists():
            raise DataFileError(f"{path}: data file not found")
        raise DataFileError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet")
    check_data_file(path, max_bytes)
    try:
        if suffix in (".parquet", ".pq"):
            yield pd.read_parquet(path)
            return
        sep = "\t" if suffix == ".tsv" else ","
        header = _raw_header(path, sep)
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, chunksize=chunk_rows)
        with reader:
            for block in reader:
                if header is not None and len(header) == block.shape[1]:
                    block.columns = header  # `age,age` as written, not pandas' `age, age.1`
                yield block
    except (OSError, ValueError, TypeError, pd.errors.ParserError) as err:  # the type only: pandas quotes cells
        raise _unreadable(path, err) from None


def _raw_header(path: Path, sep: str) -> list[str] | None:
    """The header as written, when it repeats a name exactly (else None): pandas renames a second `age` to
    `age.1`, which would then be ignored as an unknown column while the first is checked, so the file would
    pass with half its ages unread. Only the first line is read; its cells are column names, not records."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        row = next(csv.reader(handle, delimiter=sep), None)
    if row is None or len(set(row)) == len(row):
        return None
    return row


def read_table(path: Path, max_bytes: int | None = None) -> pd.DataFrame:
    """The whole file as one table (see `iter_table`); for callers that need every row at once."""
    chunks = list(iter_table(path, max_bytes=max_bytes))
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)


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


@dataclass
class _Suspicion:
    """Per column, over the whole file: the counts the unit check (`UNIT_SUSPICION`) is decided on."""

    measured: int = 0
    above: int = 0
    below: int = 0


def _positions(positions: list[int], shown: int = 20) -> str:
    """1-based header positions as `position 5` / `positions 5, 6, 9` (the first `shown`, then a count)."""
    head = ", ".join(map(str, positions[:shown]))
    more = f" and {len(positions) - shown} more" if len(positions) > shown else ""
    return f"position{'s' if len(positions) > 1 else ''} {head}{more}"


class _Checker:
    """The rules of `validate_table`, applied block by block: counts add up over the blocks, and every
    verdict that needs the whole file (a column recorded in another unit, no consented row, one class only)
    is decided in `finish`, so a file gives the same report whether it is read whole or in blocks.

    Rejection reasons are kept in the order the rules run, whichever block first met them, so ties in the
    report's reason table come out in the same order too."""

    def __init__(self, schema: StudySchema, source: str, keep_values: bool = True) -> None:
        self.schema, self.keep_values = schema, keep_values
        self.report = ValidationReport(source=source)
        self.kind = schema.study.outcome
        self.report.outcome = self.kind
        if schema.time is not None:
            self.report.positive_word = "with the event"
        self.class_names = [c.name for c in schema.label.classes or []]
        if self.kind == "multiclass":
            self.report.class_counts = dict.fromkeys(self.class_names, 0)
            # every value of every class, flat, and the class each belongs to (`_match` indexes the flat list)
            self.class_values = [v for c in schema.label.classes or [] for v in c.values]
            self.class_owner = np.array([k for k, c in enumerate(schema.label.classes or []) for _ in c.values],
                                        dtype=np.int64)
        self.markers = [m.strip() for m in schema.study.missing_values]
        self.needed = [*schema.feature_names, schema.label.column]
        self.needed += [s.column for s in (schema.time, schema.consent, schema.split) if s is not None]
        self.header_seen = False
        self.unusable = False  # a header-level error: the rows are only counted
        self.granted_any = False
        self.consented = 0
        self.label_unexpected = 0
        self.order: dict[str, None] = {}
        self.counts: Counter = Counter()
        self.stats = [ColumnStats(spec.name) for spec in schema.columns]
        self.suspicion = [_Suspicion() for _ in schema.columns]
        self.outcome_suspicion = _Suspicion()  # a continuous outcome's values, for the unit check
        self.outcome_not_number = 0
        self.values: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.tests: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.rejected = 0

    def _header(self, columns: Iterable[Any]) -> None:
        """Check the header against the schema. Only the schema's own column names are ever written into
        the report: a cell of the first line that is not one may be a record (a file saved without its
        header row makes pandas take the first patient's row as the header), so it is named by its
        1-based position only."""
        self.header_seen = True
        names = [str(c).strip() for c in columns]
        report = self.report
        known = [*self.needed, *(c.name for c in self.schema.columns if c.name not in self.needed)]
        if names and not any(c in known for c in names):
            report.errors.append(f"the first line holds none of the schema's columns ({', '.join(self.needed)}): "
                                 "is the header row missing? The first line of the file must name the columns")
            self.unusable = True
            return
        repeated = sorted({c for c in names if names.count(c) > 1})
        if repeated:  # `age` and ` age`: which of the two holds the ages cannot be guessed
            named = [repr(c) for c in repeated if c in known]
            unnamed = [i + 1 for i, c in enumerate(names) if c in repeated and c not in known]
            parts = ([f"column(s) {', '.join(named)}"] if named else []) + (
                [f"the cells at {_positions(unnamed)}"] if unnamed else [])
            report.errors.append(" and ".join(parts) + " appear more than once in the header (spaces around a name "
                                 "are ignored); keep one column of each name")
            self.unusable = True
            return
        absent = [c for c in self.needed if c not in names]
        if absent:
            report.errors.append(f"missing column(s) {', '.join(absent)}: the schema {self.schema.study.name!r} "
                                 f"needs {', '.join(self.needed)}")
        extra = [i + 1 for i, c in enumerate(names) if c not in self.needed and c not in self.schema.not_inputs]
        if extra:
            many = "1 column" if len(extra) == 1 else f"{len(extra)} columns"
            report.warnings.append(f"{many} not in the schema, ignored: {_positions(extra)}")
        self.unusable = bool(report.errors)

    def _reject(self, bad_rows: np.ndarray, mask: np.ndarray, reason: str) -> None:
        self.order.setdefault(reason, None)
        n = int(mask.sum())
        if n:
            self.counts[reason] += n
            bad_rows |= mask

    def add(self, frame: pd.DataFrame) -> None:
        """Check one block of rows (every block after the first has the same header)."""
        if not self.header_seen:
            self._header(frame.columns)
        self.report.rows += len(frame)
        if self.unusable or len(frame) == 0:
            return
        schema, markers = self.schema, self.markers
        frame = frame.rename(columns=lambda c: str(c).strip())
        if schema.consent is not None:
            c = frame[schema.consent.column]
            granted = ~np.isnan(_match(c, list(schema.consent.granted), _missing(c, markers)))
            self.report.no_consent += int((~granted).sum())
            self.granted_any |= bool(granted.any())
            frame = frame.loc[granted].reset_index(drop=True)
        self.consented += len(frame)
        bad = np.zeros(len(frame), dtype=bool)

        try:
            label = self._check_label(frame[schema.label.column], bad)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as err:
            # pandas and numpy quote the cell they could not convert: only the type may be shown
            raise DataFileError(f"{self.report.source}: label column {schema.label.column!r} cannot be checked "
                                f"({type(err).__name__}); check that it holds one kind of value") from None
        time = self._check_time(frame, bad) if schema.time is not None else None
        is_test = None
        if schema.split is not None:
            s = frame[schema.split.column]
            side = _match(s, [*schema.split.train, *schema.split.test], _missing(s, markers))
            self._reject(bad, np.isnan(side), f"{schema.split.column} (split): neither a train value "
                                              f"{schema.split.train} nor a test value {schema.split.test}")
            is_test = side >= len(schema.split.train)

        values = np.empty((len(frame), len(schema.columns))) if self.keep_values else None
        for j, spec in enumerate(schema.columns):
            try:
                column = self._check_column(spec, frame[spec.name], self.stats[j], self.suspicion[j], bad)
            except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as err:
                # pandas and numpy quote the cell they could not convert: only the type may be shown
                raise DataFileError(f"{self.report.source}: column {spec.name!r} cannot be checked "
                                    f"({type(err).__name__}); check that it holds one kind of value (numbers, or "
                                    "the schema's categories)") from None
            if values is not None:
                values[:, j] = column
        good = ~bad
        self.rejected += int(bad.sum())
        if values is not None:
            self.values.append(values[good])
        # without values (`fedhealth validate`) one byte per label (four per value): they are then only counted
        self.labels.append(label[good].astype(self._label_dtype()))
        if is_test is not None:
            self.tests.append(is_test[good])
        if time is not None:
            self.times.append(time[good])

    def _label_dtype(self) -> type:
        if self.kind == "continuous":
            return np.float64 if self.keep_values else np.float32
        if self.keep_values or len(self.class_names) > np.iinfo(np.int8).max:
            return np.int64
        return np.int8

    def _check_label(self, series: pd.Series, bad_rows: np.ndarray) -> np.ndarray:
        """The outcome per row (see `ValidRecords.label`; -1 or NaN where the row is rejected). A missing or
        unnamed class, a non-number or a value outside the valid range rejects its row: counted under its
        reason, which names the column and the rule, never the value."""
        label_spec, missing = self.schema.label, _missing(series, self.markers)
        column = label_spec.column
        if self.kind == "continuous":
            spec = self.schema.value
            assert spec is not None  # the schema requires [value] of a continuous study
            values, not_number = _numbers(series, missing)
            self._reject(bad_rows, missing, f"{column} (outcome): missing")
            self._reject(bad_rows, not_number, f"{column} (outcome): not a number")
            with np.errstate(invalid="ignore"):
                below, above = values < spec.min, values > spec.max
            self._reject(bad_rows, below | above, f"{column} (outcome): outside the valid range "
                                                  f"[{spec.min:g}, {spec.max:g}] {spec.unit}")
            sus = self.outcome_suspicion
            sus.measured += int((~np.isnan(values)).sum() + not_number.sum())
            sus.above += int(above.sum())
            sus.below += int(below.sum())
            self.outcome_not_number += int(not_number.sum())
            return values
        if self.kind == "multiclass":
            flat = _match(series, self.class_values, missing)
            known = ~np.isnan(flat)
            label = np.full(len(series), -1, dtype=np.int64)
            label[known] = self.class_owner[flat[known].astype(np.int64)]
            unnamed = f"value names none of the classes {self.class_names}"
        else:
            label_idx = _match(series, [*label_spec.positive, *label_spec.negative], missing)
            known = ~np.isnan(label_idx)
            label = np.where(known, (label_idx < len(label_spec.positive)).astype(np.int64), -1)
            unnamed = f"value is neither a positive {label_spec.positive} nor a negative {label_spec.negative}"
        self._reject(bad_rows, missing, f"{column} (label): missing")
        unexpected = ~known & ~missing
        self.label_unexpected += int(unexpected.sum())
        self._reject(bad_rows, unexpected, f"{column} (label): {unnamed}")
        return label

    def _check_time(self, frame: pd.DataFrame, bad_rows: np.ndarray) -> np.ndarray:
        """A time_to_event study's follow-up: a number above 0 and at most the schema's `time.max`; a row
        without one cannot say how long it was followed, so it is rejected (counted, never shown)."""
        spec = self.schema.time
        assert spec is not None
        series = frame[spec.column]
        missing = _missing(series, self.markers)
        values, not_number = _numbers(series, missing)
        self._reject(bad_rows, missing, f"{spec.column} (follow-up time): missing")
        self._reject(bad_rows, not_number, f"{spec.column} (follow-up time): not a number")
        with np.errstate(invalid="ignore"):
            outside = ~np.isnan(values) & ((values <= 0) | (values > spec.max))
        self._reject(bad_rows, outside, f"{spec.column} (follow-up time): not above 0 and at most {spec.max:g} "
                                        f"{spec.unit}")
        return values

    def _check_column(self, spec: ColumnSpec, series: pd.Series, stats: ColumnStats, suspicion: _Suspicion,
                      bad_rows: np.ndarray) -> np.ndarray:
        missing = _missing(series, self.markers)
        stats.rows += len(series)
        if spec.kind == "categorical":
            codes = _match(series, list(spec.categories or []), missing)
            unknown = np.isnan(codes) & ~missing
            stats.unknown_category += int(unknown.sum())
            self._reject(bad_rows, unknown, f"{spec.name}: value not among its {len(spec.categories or [])} "
                                            "categories")
            values = codes
        else:
            values, not_number = _numbers(series, missing)
            stats.not_a_number += int(not_number.sum())
            if spec.zero_is_missing:
                missing = missing | (values == 0)
                values[values == 0] = np.nan
            self._reject(bad_rows, not_number, f"{spec.name}: not a number")
            lo, hi = spec.bounds
            below, above = values < lo, values > hi
            stats.out_of_range += int(below.sum() + above.sum())
            unit = "" if spec.unit == "1" else f" {spec.unit}"
            if spec.kind == "binary":
                self._reject(bad_rows, below | above | ((values != 0) & (values != 1) & ~np.isnan(values)),
                             f"{spec.name}: not 0 or 1")
            else:
                self._reject(bad_rows, below, f"{spec.name}: below its valid minimum {lo:g}{unit}")
                self._reject(bad_rows, above, f"{spec.name}: above its valid maximum {hi:g}{unit}")
            suspicion.measured += int((~np.isnan(values)).sum() + not_number.sum())
            suspicion.above += int(above.sum())
            suspicion.below += int(below.sum())
        stats.missing += int(missing.sum())
        if spec.required:
            self._reject(bad_rows, missing, f"{spec.name}: missing (required)")
        return values

    def _empty(self) -> ValidRecords:
        return ValidRecords(np.empty((0, len(self.schema.columns))), np.empty(0, dtype=self._label_dtype()), None,
                            self.report)

    def _outcome_errors(self) -> list[str]:
        """The whole file's verdicts on its outcome column: most rows naming no class of the schema (its
        values are coded otherwise), or most of a continuous outcome's values outside its range (another
        unit) or not numbers. Shares and counts only."""
        schema, column = self.schema, self.schema.label.column
        if self.kind == "continuous":
            spec, sus = schema.value, self.outcome_suspicion
            assert spec is not None
            if sus.measured < MIN_SUSPECT_VALUES:
                return []
            out = [f"label column {column!r} (outcome): {share:.0%} of its values are {side} {bound:g} {spec.unit}: "
                   f"is it recorded in another unit? The schema declares {spec.unit!r} ([value]); convert the "
                   "column or fix [value] in the schema"
                   for share, side, bound in ((sus.above / sus.measured, "above the valid maximum", spec.max),
                                              (sus.below / sus.measured, "below the valid minimum", spec.min))
                   if share >= UNIT_SUSPICION]
            if self.outcome_not_number / sus.measured >= UNIT_SUSPICION:
                out.append(f"label column {column!r} (outcome): {self.outcome_not_number} of {sus.measured} cells "
                           "are not numbers (text where numbers are expected); check the column and its "
                           "missing-value markers")
            return out
        if not self.consented or self.label_unexpected / self.consented < UNIT_SUSPICION:
            return []
        share = f"{self.label_unexpected / self.consented:.0%}"
        if self.kind == "multiclass":
            return [f"label column {column!r}: {share} of rows hold a value that names none of the classes "
                    f"{self.class_names}; fix label.classes in the schema"]
        return [f"label column {column!r}: {share} of rows hold a value the schema does not name (positive "
                f"{schema.label.positive}, negative {schema.label.negative}); fix label.positive/label.negative "
                "in the schema"]

    def finish(self) -> ValidRecords:
        """The verdicts that need the whole file, then the usable rows."""
        report, schema = self.report, self.schema
        if report.rows == 0:
            report.errors.append("the file has a header but no rows")
        if report.errors:
            return self._empty()
        if schema.consent is not None and not self.granted_any:
            report.errors.append(f"no row allows research use (column {schema.consent.column!r} is never one of "
                                 f"{schema.consent.granted}); nothing can be trained on")
            return self._empty()
        report.reasons = Counter({r: self.counts[r] for r in self.order if self.counts[r]})
        report.errors += self._outcome_errors()
        for spec, stats, sus in zip(schema.columns, self.stats, self.suspicion, strict=True):
            report.columns.append(stats)
            if spec.kind in ("binary", "categorical") or sus.measured < MIN_SUSPECT_VALUES:
                pass
            else:
                lo, hi = spec.bounds
                unit = "" if spec.unit == "1" else f" {spec.unit}"
                for share, side, bound in ((sus.above / sus.measured, "above the valid maximum", hi),
                                           (sus.below / sus.measured, "below the valid minimum", lo)):
                    if share >= UNIT_SUSPICION:
                        report.errors.append(f"column {spec.name!r}: {share:.0%} of its values are {side} "
                                             f"{bound:g}{unit}: is it recorded in another unit? The schema declares "
                                             f"{spec.unit!r}; convert the column or fix the schema")
                if stats.not_a_number / sus.measured >= UNIT_SUSPICION:
                    report.errors.append(f"column {spec.name!r}: {stats.not_a_number} of {sus.measured} cells are "
                                         "not numbers (text where numbers are expected); check the column and its "
                                         "missing-value markers")
            if stats.missing_rate > 0.5 and not spec.required:
                report.warnings.append(f"column {spec.name!r} is missing in {stats.missing_rate:.0%} of rows")
        label = np.concatenate(self.labels) if self.labels else np.empty(0, dtype=self._label_dtype())
        self.labels = []
        is_test = np.concatenate(self.tests) if schema.split is not None and self.tests else None
        time = (np.concatenate(self.times) if self.times else np.empty(0)) if schema.time is not None else None
        self.times = []
        if self.keep_values:
            values = np.concatenate(self.values) if self.values else np.empty((0, len(schema.columns)))
            self.values = []
        else:
            values = np.empty((0, len(schema.columns)))
        report.rejected = self.rejected
        report.accepted = len(label)
        if self.kind == "multiclass":
            counts = np.bincount(label.astype(np.int64), minlength=len(self.class_names))
            report.class_counts = {name: int(n) for name, n in zip(self.class_names, counts, strict=True)}
        elif self.kind != "continuous":
            report.positives = int(label.sum())
        if not report.errors and report.accepted == 0:
            report.errors.append("every row was rejected; see the reasons above")
        if not report.errors and report.accepted <= MIN_TRAIN_RECORDS:
            report.errors.append(f"{report.accepted} usable rows; a site needs more than {MIN_TRAIN_RECORDS} (at "
                                 f"least {MIN_TRAIN_RECORDS} to train on, and a test side); merge this site with "
                                 "another or leave it out")
        if not report.errors and is_test is not None and (is_test.all() or not is_test.any()):
            side = "train" if is_test.all() else "test"
            report.errors.append(f"the official {side} split holds no usable rows; a site needs both sides: fix the "
                                 f"split column {schema.split.column!r} or leave the site out")
        if not report.errors and self.kind == "multiclass":
            report.warnings += absent_class_notes(label, is_test, self.class_names)
        elif not report.errors and self.kind != "continuous":  # a continuous outcome has no classes
            note = class_note(label, is_test)
            if note:
                report.warnings.append(note)
        return ValidRecords(values, label, is_test, report, time)


def class_note(label: np.ndarray, is_test: np.ndarray | None) -> str | None:
    """Why a side of this file's train/test split will hold one class only, and what that leaves undefined;
    None when both sides hold both classes.

    Not a refusal: such a site (a referral centre where nearly everyone has the disease) still trains with
    the federation; what cannot be computed for it (its local-only model from one class, an AUROC on a
    one-class test side) is reported as undefined. A class with fewer than 2 rows cannot be on both sides of
    a seeded split: it trains only."""
    def counts(mask: np.ndarray) -> tuple[int, int]:
        return int(label[mask].sum()), int((1 - label[mask]).sum())

    if is_test is None:
        pos, neg = counts(np.ones(len(label), dtype=bool))
        if min(pos, neg) >= 2:
            return None
        train_one, where = min(pos, neg) == 0, (f"{pos} positive and {neg} negative usable rows, so the seeded "
                                               "split's test side holds one class")
        if train_one:
            where += " and so does its training side"
    else:
        (tp, tn), (sp, sn) = counts(~is_test), counts(is_test)
        train_one, test_one = min(tp, tn) == 0, min(sp, sn) == 0
        if tp + tn == 0 or sp + sn == 0:
            return None  # an empty side: refused by `empty_side` (nothing to train on, or nothing to test)
        if not (train_one or test_one):
            return None
        where = "; ".join(f"the official {side} split holds {p} positive and {n} negative rows"
                          for side, p, n, one in (("train", tp, tn, train_one), ("test", sp, sn, test_one)) if one)
    return f"{where}: {one_class_consequence(train_one, True if is_test is None else test_one)}"


ONE_CLASS_NOTE = "this site trains with the federation; "  # how every one-class warning's consequence begins


def absent_class_notes(label: np.ndarray, is_test: np.ndarray | None, names: list[str]) -> list[str]:
    """A multi-class site's classes that a side of its train/test split will lack, one warning per side, each
    naming the classes (schema names; counts, never values); empty when both sides hold every class.

    Not a refusal (as `class_note`): a site may lack a class and still train. The seeded split keeps a class
    of one row on the training side only (`stratified_test_mask`), so its test side lacks it. Each warning's
    consequence begins with ONE_CLASS_NOTE, as a one-class warning's does: said again where the split is made."""
    def absent(mask: np.ndarray, fewer_than: int = 1) -> list[str]:
        counts = np.bincount(label[mask].astype(np.int64), minlength=len(names))
        return [repr(name) for name, n in zip(names, counts, strict=False) if n < fewer_than]

    def named(classes: list[str]) -> str:
        return f"class{'es' if len(classes) > 1 else ''} {', '.join(classes)}"

    out = []
    if is_test is None:
        everywhere = np.ones(len(label), dtype=bool)
        none, one = absent(everywhere), [c for c in absent(everywhere, 2) if c not in absent(everywhere)]
        if none:
            out.append(f"no usable row of {named(none)}, so neither side of the seeded split holds it: "
                       f"{ONE_CLASS_NOTE}its local-only reference (simulation) never predicts it and its own "
                       "figures of it are undefined")
        if one:
            out.append(f"1 usable row of {named(one)}, so the seeded split keeps it on the training side and its "
                       f"test side holds none: {ONE_CLASS_NOTE}its own figures of it are undefined")
        return out
    if not is_test.any() or is_test.all():
        return []  # an empty side: refused in `finish` (nothing to train on, or nothing to test)
    for side, mask, consequence in (
            ("train", ~is_test, "its local-only reference (simulation) never predicts it"),
            ("test", is_test, "its own figures of it are undefined")):
        missing = absent(mask)
        if missing:
            out.append(f"the official {side} split holds no row of {named(missing)}: {ONE_CLASS_NOTE}{consequence}")
    return out


def one_class_consequence(train_one: bool, test_one: bool) -> str:
    """What a one-class side leaves undefined, in the words the warnings share (data loading, validate), and
    what a coordinator learns from it (the hospital decides whether to share its evaluation)."""
    undefined = [what for what, one in (("its local-only reference (simulation)", train_one),
                                        ("its own AUROC and AUPRC", test_one)) if one]
    text = f"{ONE_CLASS_NOTE}{' and '.join(undefined)} are undefined"
    if test_one:
        text += (" (its evaluation figures then tell the coordinator that its test side holds one class;"
                 " share_evaluation = false in its policy keeps them at the hospital)")
    return text


def validate_table(frame: pd.DataFrame | Iterable[pd.DataFrame], schema: StudySchema, source: str,
                   keep_values: bool = True) -> ValidRecords:
    """Check a hospital's rows (one table, or its blocks in order) against `schema`; returns the usable rows
    and the report. Never raises for bad data: `report.ok` is the verdict (`require_valid` callers raise).

    The verdict includes what training needs of the whole file (a warning when a side of its split will hold one
    class), so `fedhealth validate` and a study's loading of the same file agree. `keep_values=False` keeps
    only the labels (as int8: what `fedhealth validate` needs), not the typed values.

    A table pandas cannot check (a Parquet column of lists, say) raises DataFileError naming the file and the
    error's type only: pandas quotes the cell."""
    checker = _Checker(schema, source, keep_values)
    try:
        for block in [frame] if isinstance(frame, pd.DataFrame) else frame:
            checker.add(block)
        if not checker.header_seen:
            raise DataFileError(f"{source}: the file is empty (no header, no rows)")
        return checker.finish()
    except DataFileError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as err:
        raise DataFileError(f"{source}: cannot be checked against schema {schema.study.name!r} "
                            f"({type(err).__name__}); check that each column holds one kind of value") from None


def check_hospital_file(path: Path, schema: StudySchema, *, keep_values: bool = True, max_bytes: int | None = None,
                        chunk_rows: int = CHUNK_ROWS) -> ValidRecords:
    """The one check of a hospital's file: `fedhealth validate`, a study's loading (`fedhealth simulate`)
    and a deployed hospital's training all call it, so they give the same verdict in the same words.

    Reads the file in blocks (`iter_table`). DataFileError only when it cannot be read at all (missing, a
    special file, over the size limit, not CSV or Parquet); otherwise `report.ok` says whether it is usable."""
    return validate_table(iter_table(path, chunk_rows, max_bytes), schema, str(path), keep_values)


def read_hospital_file(path: Path, schema: StudySchema, hospital: str | None = None,
                       max_bytes: int | None = None) -> ValidRecords:
    """Read and validate a hospital's file; DataFileError (naming hospital, file and every problem) if
    nothing usable is left."""
    who = f"hospital {hospital!r}: " if hospital else ""
    try:
        records = check_hospital_file(path, schema, max_bytes=max_bytes)
    except DataFileError as err:
        raise DataFileError(f"{who}{err}") from None
    if not records.report.ok:
        raise DataFileError("\n".join([f"{who}{path}: not usable with schema {schema.study.name!r}",
                                       *records.report.lines()]))
    return records
