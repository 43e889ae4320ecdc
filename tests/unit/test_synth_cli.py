"""`fedhealth synth` writes one readable CSV per hospital and the data dictionary."""

import subprocess
import sys

import pandas as pd
import pytest

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


@pytest.mark.parametrize("kind", ["time_to_event", "multiclass", "continuous"])
def test_synth_writes_each_kinds_outcome_and_its_files_give_the_generated_splits(tmp_path, kind):
    """A study of another kind written to files (its schema, its outcome columns) reads back as exactly the
    generated study: the same encoded records, outcomes and seeded splits at every hospital, so simulating the
    written config trains what simulating the generated one does."""
    import numpy as np

    from fedhealth.data.export import OUTCOME_COLUMNS, write_synthetic_study
    from fedhealth.data.hospitals import load_hospital
    from fedhealth.study.config import variant

    cfg = load_config(ROOT / "configs" / "smoke.toml", [f'outcome="{kind}"'])
    cfg = variant(cfg, f"smoke-{kind}")
    write_synthetic_study(cfg, tmp_path)
    files = load_config(tmp_path / f"smoke-{kind}-files.toml")
    assert files.outcome_kind == kind and files.from_files
    for i, h in enumerate(cfg.hospitals):
        assert set(OUTCOME_COLUMNS[kind]) <= set(pd.read_csv(tmp_path / f"{h.name}.csv").columns)
        generated, read = load_hospital(cfg, i), load_hospital(files, i)
        np.testing.assert_array_equal(generated.x_train, read.x_train)
        np.testing.assert_array_equal(generated.x_test, read.x_test)
        np.testing.assert_array_equal(generated.y_train, read.y_train)
        np.testing.assert_array_equal(generated.y_test, read.y_test)
        for name in ("outcome_test", "time_test", "event_test"):
            if getattr(generated, name) is not None:
                np.testing.assert_array_equal(getattr(generated, name), getattr(read, name))
