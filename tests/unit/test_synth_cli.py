"""`fedhealth synth` writes one readable CSV per hospital and the data dictionary."""

import subprocess
import sys

import pandas as pd

from fedhealth.data.study_file import load_config
from fedhealth.study.builtin_schema import FEATURE_NAMES, LABEL
from tests.support import ROOT


def test_synth_writes_csv_per_hospital_and_dictionary(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedhealth.cli", "synth", "--config", "configs/smoke.toml",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = load_config(ROOT / "configs" / "smoke.toml")
    for h in cfg.hospitals:
        frame = pd.read_csv(tmp_path / f"{h.name}.csv")
        assert len(frame) == h.records
        assert list(frame.columns[: len(FEATURE_NAMES)]) == list(FEATURE_NAMES)
        assert set(frame[LABEL].unique()) <= {0, 1}
    dictionary = (tmp_path / "DATA_DICTIONARY.md").read_text()
    assert all(name in dictionary for name in FEATURE_NAMES)
