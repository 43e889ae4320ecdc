"""A hospital's whole cohort in the schema's typed form, for describing it (`fedhealth describe`).

Training reads a hospital's records encoded for the model (`fedhealth.data.hospitals.load_hospital`: fixed
references, one-hot categories, missing indicators). A cohort table needs them as the schema names them:
each column's value in its unit (NaN where missing), a categorical column as its category's index, the
outcome as the schema codes it, and a time-to-event study's follow-up. That is `ValidRecords`, which a
hospital's file gives after validation; a generated hospital gives the same by passing its generated table
(`fedhealth.data.export.hospital_frame`, exactly what `fedhealth synth` writes) through the same validation,
so a generated study and the same study read back from its files are described identically.

Every usable record is described, training and test alike: a cohort table is about the patients, not the
model's split. Each party calls this for its own hospital only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedhealth.data.validation import DataFileError, ValidRecords, validate_table
from fedhealth.study.config import StudyConfig
from fedhealth.study.schema import StudySchema


@dataclass(frozen=True)
class CohortRecords:
    """One hospital's usable records under the schema that types them."""

    schema: StudySchema
    records: ValidRecords


def cohort_records(cfg: StudyConfig, index: int, data_file: str | None = None) -> CohortRecords:
    """Hospital `index`'s usable records in the schema's typed form.

    Parameters
    ----------
    cfg : StudyConfig
        The study; its schema types a file hospital's records, a generated study's outcome kind picks the
        built-in schema of that kind (`fedhealth.data.export.kind_schema`).
    index : int
        The hospital's position in the study's hospital list (0-based).
    data_file : str, optional
        A deployed hospital's own file (from its node config), which wins over the study config's path and
        is not checked against the study's recorded SHA-256 (the file is the hospital's, not the study's).

    Returns
    -------
    CohortRecords
        At most the `records` the study declares for a file hospital (as training uses them).
    """
    from fedhealth.data.export import hospital_frame, kind_schema
    from fedhealth.data.hospitals import file_records
    from fedhealth.data.synthetic import HospitalProfile

    if not 0 <= index < len(cfg.hospitals):
        raise IndexError(f"hospital index {index} outside 0..{len(cfg.hospitals) - 1}")
    h = cfg.hospitals[index]
    if cfg.study_schema is not None:
        path = Path(data_file) if data_file else Path(h.data) if h.data else None
        return CohortRecords(cfg.study_schema, file_records(cfg, index, path, check_sha=data_file is None))
    if data_file:
        raise ValueError(f"hospital {h.name!r}: the node config names a data file, but the study has no schema "
                         "(its hospitals are generated); the study config needs `schema = ...`")
    schema = kind_schema(cfg.outcome_kind)
    profile = HospitalProfile(name=h.name, tier=h.tier, region=h.region, records=h.records)
    frame = hospital_frame(cfg.outcome_kind, profile, index, cfg.seed)
    records = validate_table(frame, schema, source=f"generated hospital {h.name!r}")
    if not records.report.ok:  # the generator draws inside the schema's ranges: this is a bug, not bad data
        raise DataFileError(f"generated hospital {h.name!r} does not validate against its built-in schema: "
                            + "; ".join(records.report.errors or ["no usable rows"]))
    return CohortRecords(schema, records)
