"""Write a synthetic study to disk as one CSV per hospital plus the data dictionary."""

from __future__ import annotations

from pathlib import Path

from fedhealth.config import StudyConfig
from fedhealth.data.schema import write_data_dictionary
from fedhealth.data.synthetic import HospitalProfile, generate_hospital


def write_synthetic_study(cfg: StudyConfig, out: Path) -> list[Path]:
    """The CSVs hold the observed (noisy, partly missing) values a hospital would export, the
    outcome, and the generator's `true_risk` column (never available for real data)."""
    out.mkdir(parents=True, exist_ok=True)
    write_data_dictionary(out / "DATA_DICTIONARY.md")
    paths = []
    for i, h in enumerate(cfg.hospitals):
        records = generate_hospital(HospitalProfile(h.name, h.tier, h.region, h.records), i, cfg.seed)
        path = out / f"{h.name}.csv"
        records.to_frame().to_csv(path, index=False, float_format="%.6g")
        paths.append(path)
    return paths
