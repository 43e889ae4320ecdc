"""Write a synthetic study to disk as one CSV per hospital, its schema, a data dictionary, and a config
that simulates the same study from those files.

Why the config: it is the round trip that proves the file path and the generator path agree. The
CSVs hold every value at full precision, the rows in generator order, so the seeded split and the
encoding see exactly what the generator gave; simulating the written config reproduces the original
study's metrics, apart from the best-possible reference (a file carries no true risk).
"""

from __future__ import annotations

from pathlib import Path

from fedhealth.data.synthetic import HospitalProfile, generate_hospital
from fedhealth.durable import inside
from fedhealth.study.builtin_schema import write_data_dictionary
from fedhealth.study.config import StudyConfig
from fedhealth.study.schema import default_schema, write_schema

SCHEMA_FILE = "schema.toml"
DICTIONARY_FILE = "DATA_DICTIONARY.md"


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
    """The CSVs hold the observed (noisy, partly missing) values a hospital would export, the
    outcome, and the generator's `true_risk` column (never available for real data; the schema does
    not name it, so validation ignores it). Also writes `schema.toml` and `<name>-files.toml`."""
    if cfg.from_files:
        raise ValueError(f"study {cfg.name!r} already reads its hospitals from files; there is nothing to generate")
    files = study_files(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    write_data_dictionary(files["dictionary"])
    write_schema(default_schema(), files["schema"])
    paths = []
    for i, h in enumerate(cfg.hospitals):
        records = generate_hospital(HospitalProfile(h.name, h.tier, h.region, h.records), i, cfg.seed)
        path = files[f"hospital {h.name}"]
        records.to_frame().to_csv(path, index=False)  # full precision: the round trip must be exact
        paths.append(path)
    files["config"].write_text(file_config(cfg, {h.name: f"{h.name}.csv" for h in cfg.hospitals}), encoding="utf-8")
    return paths
