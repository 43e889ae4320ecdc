"""A hospital's cohort in the schema's typed form (`fedhealth.data.cohort_records`), for `fedhealth describe`.

A generated hospital is described from the very table `fedhealth synth` writes for it, so a generated study
and the same study read back from its files have the same cohort, value for value; a file hospital's cohort
is its usable rows, at most the count the study declares, as training reads them.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedhealth.data.cohort_records import cohort_records
from fedhealth.data.export import write_synthetic_study
from fedhealth.data.study_file import load_config
from tests.support import ROOT, THREE_SMALL_HOSPITALS

SMALL = """name = "cohort"
seed = 5
outcome = "{kind}"
""" + THREE_SMALL_HOSPITALS


@pytest.mark.parametrize("kind", ["binary", "multiclass", "continuous", "time_to_event"])
def test_a_generated_cohort_is_the_cohort_its_files_read_back_as(tmp_path, kind):
    config = tmp_path / "study.toml"
    config.write_text(SMALL.format(kind=kind))
    cfg = load_config(config, [])
    write_synthetic_study(cfg, tmp_path / "files")
    from_files = load_config(tmp_path / "files" / "cohort-files.toml", [])
    for i, h in enumerate(cfg.hospitals):
        generated, read_back = cohort_records(cfg, i), cohort_records(from_files, i)
        assert len(generated.records.label) == h.records  # every generated record is usable: none dropped
        assert [c.name for c in generated.schema.columns] == [c.name for c in read_back.schema.columns]
        np.testing.assert_array_equal(generated.records.values, read_back.records.values)
        np.testing.assert_array_equal(generated.records.label, read_back.records.label)
        assert (generated.records.time is None) == (kind != "time_to_event")
        if kind == "time_to_event":
            np.testing.assert_array_equal(generated.records.time, read_back.records.time)


def test_a_file_cohort_is_its_usable_rows_within_the_declared_count(tmp_path):
    cfg = load_config(ROOT / "configs" / "lung.toml", [])
    cohort = cohort_records(cfg, 0)
    assert cohort.schema is cfg.study_schema
    assert len(cohort.records.label) == cfg.hospitals[0].records
    assert cohort.records.time is not None and np.all(cohort.records.time > 0)
    with pytest.raises(IndexError, match="outside"):
        cohort_records(cfg, len(cfg.hospitals))


def test_a_generated_study_refuses_a_node_data_file(tmp_path):
    config = tmp_path / "study.toml"
    config.write_text(SMALL.format(kind="binary"))
    with pytest.raises(ValueError, match="needs `schema = ...`"):
        cohort_records(load_config(config, []), 0, data_file=str(tmp_path / "x.csv"))
