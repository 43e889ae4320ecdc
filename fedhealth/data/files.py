"""Hospitals given as files: resolve their paths, check every file against the study schema, count rows.

Why at config load: a missing file, a file whose columns do not match, a site with a single class,
a label the schema does not name (the verdict `fedhealth validate` gives, from the same function,
`fedhealth.data.validation.check_hospital_file`): each must stop the study before round 1, naming the hospital, the
file and what to change, rather than crash one Ray actor mid-run. It also fixes each hospital's
record count (the usable rows), which secure aggregation needs before the first round, and the
file's SHA-256, so a file edited during a run is caught instead of silently mixed in.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from fedhealth.data.validation import (
    ONE_CLASS_NOTE,
    DataFileError,
    ValidRecords,
    check_data_file,
    read_hospital_file,
)
from fedhealth.study.schema import SchemaError, StudySchema, load_schema, schema_from_dict

log = logging.getLogger(__name__)
SMALL_SITE_ROWS = 100  # below this many usable rows a site's own AUROC is too noisy to read much into
# the headline figure a small site's warning names, by outcome kind (`fedhealth.metrics.headline.LABELS`)
SMALL_SITE_FIGURE = {"binary": "AUROC", "time_to_event": "C-index", "multiclass": "macro AUROC", "continuous": "R²"}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_study_files(data: dict[str, Any], base: Path) -> list[str]:
    """Turn `schema = "path"` and each `hospitals[].data = "path"` (relative to `base`, the config's folder)
    into a checked, self-contained config mapping, in place. Returns one line per problem (empty: fine)."""
    problems: list[str] = []
    raw_schema = data.pop("schema", None)
    if raw_schema is not None:
        if not isinstance(raw_schema, str):
            return [f"schema: expected the path of a schema TOML file, got {type(raw_schema).__name__}"]
        try:
            schema = load_schema(_resolve(raw_schema, base))
        except SchemaError as err:
            return [f"schema: {line}" for line in str(err).splitlines()]
        data["study_schema"] = schema.model_dump(mode="json")
    elif "study_schema" in data:
        try:
            schema = schema_from_dict(data["study_schema"], "study_schema")
        except SchemaError as err:
            return str(err).splitlines()
    else:
        schema = None
    hospitals = data.get("hospitals") or []
    with_files = [h for h in hospitals if isinstance(h, dict) and "data" in h]
    if with_files and schema is None:
        return ["hospitals: a hospital given as a data file needs the study's schema: add `schema = "
                "\"path/to/schema.toml\"` at the top of the config"]
    for h in with_files:
        if "records" in h and "data_sha256" in h:
            continue  # already resolved (a run directory's config.resolved.toml)
        name = h.get("name", "?")
        path = _resolve(str(h["data"]), base)
        try:
            records = read_hospital_file(path, schema, name)
        except DataFileError as err:
            problems.append(str(err))
            continue
        for w in records.report.warnings:
            # a one-class side, or a multiclass site's absent class (`absent_class_notes`, which begins its
            # consequence the same way): said once, with the split's own counts, where the split is made
            if ONE_CLASS_NOTE not in w:
                log.warning("hospital %s: %s: %s", name, path, w)
        if records.report.rejected:
            log.warning("hospital %s: %s: %d of %d rows rejected (run `fedhealth validate` for the reasons)",
                        name, path, records.report.rejected, records.report.rows)
        if len(records.label) < SMALL_SITE_ROWS:
            figure = SMALL_SITE_FIGURE.get(schema.study.outcome, "AUROC")
            log.warning("hospital %s has only %d usable rows: its own test %s will vary a lot from split to "
                        "split; read it with care (its interval in the summary says how much)", name,
                        len(records.label), figure)
        h["data"] = str(path)
        h["records"] = len(records.label)
        h["data_sha256"] = file_sha256(path)
    return problems


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def load_file_records(path: Path, schema: StudySchema, hospital: str, sha256: str | None) -> ValidRecords:
    """A file hospital's usable rows, checked to be the file the study was configured with."""
    path = Path(path)
    if sha256 is not None and path.exists():
        check_data_file(path)  # a FIFO or a device would hang or exhaust the hash below
    if sha256 is not None and path.exists() and file_sha256(path) != sha256:
        raise DataFileError(f"hospital {hospital!r}: {path} changed since the study was configured (SHA-256 "
                            "differs); start a new run on the new file")
    return read_hospital_file(path, schema, hospital)
