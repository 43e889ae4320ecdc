"""Write a synthetic study to disk as one CSV per hospital, its schema, a data dictionary, and a config
that simulates the same study from those files.

Why the config: it is the round trip that proves the file path and the generator path agree. The
CSVs hold every value at full precision, the rows in generator order, so the seeded split and the
encoding see exactly what the generator gave; simulating the written config reproduces the original
study's metrics, apart from the best-possible reference (a file carries no true risk).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhealth.data.synthetic import HospitalProfile, generate_hospital
from fedhealth.durable import inside
from fedhealth.study import builtin_schema as builtin
from fedhealth.study.builtin_schema import write_data_dictionary
from fedhealth.study.config import GENERATED_CLASSES, GENERATED_TIME, GENERATED_VALUE, StudyConfig
from fedhealth.study.schema import StudySchema, default_schema, write_schema

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_FILE = "schema.toml"
DICTIONARY_FILE = "DATA_DICTIONARY.md"
# The outcome columns a generated hospital's file holds beside the features, by outcome kind.
SEVERITY = "complication_severity"  # a class name of GENERATED_CLASSES
HBA1C = "hba1c_12m"  # GENERATED_VALUE, %
EVENT, TIME = "complication", "time"  # event indicator (1: the complication at `time`), follow-up in days
OUTCOME_COLUMNS: dict[str, tuple[str, ...]] = {"binary": (builtin.LABEL, "true_risk"), "multiclass": (SEVERITY,),
                                               "continuous": (HBA1C,), "time_to_event": (TIME, EVENT)}


def study_files(cfg: StudyConfig, out: Path) -> dict[str, Path]:
    """Every file `write_synthetic_study` writes into `out` (key: a hospital's name, or what the file is),
    each checked to stay inside `out` (`fedhealth.durable.inside`), so a caller can refuse existing ones first."""
    files = {"dictionary": inside(out, DICTIONARY_FILE), "schema": inside(out, SCHEMA_FILE)}
    files.update({f"hospital {h.name}": inside(out, f"{h.name}.csv") for h in cfg.hospitals})
    files["config"] = inside(out, f"{cfg.name}-files.toml")
    return files


def file_config(cfg: StudyConfig, files: dict[str, str], schema_file: str = SCHEMA_FILE) -> str:
    """The TOML of `cfg` with every hospital read from `files[name]` (paths relative to the config)."""
    import tomli_w

    data = cfg.model_dump(mode="json", exclude_none=True)
    data.pop("population", None)
    data.pop("study_schema", None)
    data["name"] = f"{cfg.name}-files"
    for h in data["hospitals"]:
        h["data"] = files[h["name"]]
        for key in ("records", "data_sha256"):
            h.pop(key, None)
    header = (f"# {cfg.name} read back from its files (written by `fedhealth synth`): simulating this config\n"
              "# gives the same metrics as the generated study, apart from the best-possible reference.\n")
    return header + f"schema = {schema_file!r}\n" + tomli_w.dumps(data)


def write_synthetic_study(cfg: StudyConfig, out: Path) -> list[Path]:
    """The CSVs hold the observed (noisy, partly missing) values a hospital would export and the outcome of
    the study's kind (`OUTCOME_COLUMNS`); a binary study's also the generator's `true_risk` column (never
    available for real data; the schema does not name it, so validation ignores it). Also writes
    `schema.toml` (the schema of that kind) and `<name>-files.toml`."""
    if cfg.from_files:
        raise ValueError(f"study {cfg.name!r} already reads its hospitals from files; there is nothing to generate")
    files = study_files(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    write_data_dictionary(files["dictionary"])
    write_schema(kind_schema(cfg.outcome_kind), files["schema"])
    paths = []
    for i, h in enumerate(cfg.hospitals):
        path = files[f"hospital {h.name}"]
        profile = HospitalProfile(h.name, h.tier, h.region, h.records)
        hospital_frame(cfg.outcome_kind, profile, i, cfg.seed).to_csv(path, index=False)  # full precision: the
        paths.append(path)                                                             # round trip is exact
    files["config"].write_text(file_config(cfg, {h.name: f"{h.name}.csv" for h in cfg.hospitals}), encoding="utf-8")
    return paths


def kind_schema(kind: str) -> StudySchema:
    """The built-in study's schema for an outcome kind: its feature columns, with the outcome of that kind as
    the generator writes it (`hospital_frame`)."""
    base = default_schema()
    if kind == "binary":
        return base
    data: dict[str, Any] = base.model_dump(mode="json", exclude_none=True)
    data["study"]["outcome"] = kind
    if kind == "multiclass":
        data["label"] = {"column": SEVERITY, "classes": [{"name": c, "values": [c]} for c in GENERATED_CLASSES],
                         "description": "severity of the complication within 12 months"}
    elif kind == "continuous":
        data["label"] = {"column": HBA1C, "description": GENERATED_VALUE.description}
        data["value"] = GENERATED_VALUE.model_dump(mode="json", exclude_none=True)
    else:
        data["label"] = {"column": EVENT, "positive": [1], "negative": [0],
                         "description": "1: the complication happened at `time`; 0: followed up to `time` "
                                        "without it (censored)"}
        data["time"] = GENERATED_TIME.model_dump(mode="json", exclude_none=True)
    return StudySchema.model_validate(data)


def hospital_frame(kind: str, profile: HospitalProfile, index: int, seed: int) -> pd.DataFrame:
    """One generated hospital's records as its file holds them: the measured features (the same patients for
    every kind) and the outcome columns of `kind` (`OUTCOME_COLUMNS`)."""
    import pandas as pd

    from fedhealth.data import synthetic_outcomes, synthetic_survival

    if kind == "binary":
        return generate_hospital(profile, index, seed).to_frame()
    if kind == "multiclass":
        mc = synthetic_outcomes.generate_multiclass(profile, index, seed)
        features, outcome = mc.features, {SEVERITY: [GENERATED_CLASSES[k] for k in mc.label]}
    elif kind == "continuous":
        co = synthetic_outcomes.generate_continuous(profile, index, seed)
        features, outcome = co.features, {HBA1C: co.value}
    else:
        sv = synthetic_survival.generate_survival(profile, index, seed)
        features, outcome = sv.features, {TIME: sv.time, EVENT: sv.event}
    frame = pd.DataFrame(features, columns=list(builtin.FEATURE_NAMES))
    for column, values in outcome.items():
        frame[column] = values
    return frame
