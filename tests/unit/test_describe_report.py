"""A cohort description in the study report (`fedhealth describe --report-into RUN_DIR`; issue 19).

The description's outputs are written as `fedhealth describe` writes them (`write_outputs`, here from the
smoke hospitals' own exact vectors, summed as the secure sum gives them), copied into a finished run of the
same study, and the report shows a "Cohort (Table 1)" section: each figure of every group, what it cost,
and the Kaplan-Meier figure for a time-to-event study. A run of another study, or one already holding a
description, is refused before anything runs.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from fedhealth import api
from fedhealth.data.cohort_records import cohort_records
from fedhealth.experiments.describe import Description, Group, write_outputs
from fedhealth.reporting.report import build_report
from fedhealth.runs import rundir
from fedhealth.statistics import cohort_table, kaplan_meier, local_statistics
from fedhealth.statistics.study import description_terms
from tests.support import SMOKE
from tests.unit.test_report_options import make_run


def _described(cfg, run_dir, survival: bool) -> Description:
    terms = description_terms(cfg)
    vector = sum(local_statistics(terms.layout, cohort_records(cfg, i).records) for i in range(len(cfg.hospitals)))
    curve = kaplan_meier(terms.layout, vector) if survival else None
    result = Description(vector, (Group("all", "", cohort_table(terms.layout, vector, suppress_below=5), curve),),
                         [h.name for h in cfg.hospitals], [], None, 0.0)
    run_dir.mkdir()
    write_outputs(cfg, run_dir, result)
    return result


def test_the_report_of_a_run_shows_its_cohort_table(tmp_path):
    run = make_run(tmp_path, frozenset({"local_only"}), "none", True)
    html = build_report(run).read_text()
    assert 'id="cohort"' in html and "Not described in this run" in html and "--report-into" in html

    cfg = api.description_study(run / rundir.CONFIG_FILE)
    result = _described(cfg, tmp_path / "described", survival=False)
    api.check_report_into(cfg, run, force=False)  # the same study: accepted
    shutil.copyfile(tmp_path / "described" / rundir.DESCRIPTION_FILE, run / rundir.DESCRIPTION_FILE)
    html = build_report(run).read_text()
    section = html[html.index('<h2 id="cohort">'):]
    assert "Not described in this run" not in section
    assert f"{result.table.n:,} records from 3 hospitals" in section and "exact (no noise" in section
    assert "all hospitals (n = 2,500)" in section
    age_mean = result.table.figure("age", "mean")
    assert f"<td>age</td><td>mean</td><td>{age_mean.value:.4g} years</td>" in section
    assert len(re.findall(r"<tr><td>", section)) == len(result.table.figures)
    assert "cohort_kaplan_meier" not in html  # a binary study: no curve

    with pytest.raises(rundir.RunDirError, match="holds a description.json already"):
        api.check_report_into(cfg, run, force=False)
    api.check_report_into(cfg, run, force=True)
    other = api.description_study(SMOKE, overrides={"name": "another-study"})
    with pytest.raises(rundir.RunDirError, match="another study"):
        api.check_report_into(other, run, force=True)


def test_a_time_to_event_description_brings_its_kaplan_meier_figure_into_the_report(tmp_path):
    run = make_run(tmp_path, frozenset({"local_only"}), "none", True)
    cfg = api.description_study(SMOKE, overrides={"outcome": "time_to_event"})
    _described(cfg, tmp_path / "described", survival=True)
    assert (tmp_path / "described" / "kaplan_meier.png").is_file()
    shutil.copyfile(tmp_path / "described" / rundir.DESCRIPTION_FILE, run / rundir.DESCRIPTION_FILE)
    html = build_report(run).read_text()
    assert 'alt="Kaplan-Meier curves of the cohort" src="data:image/png;base64,' in html
    assert (run / "figures" / rundir.FIGURES["cohort_kaplan_meier"]).is_file()
    assert "<td>outcome</td><td>median follow-up</td>" in html
    assert np.isfinite(cohort_table(description_terms(cfg).layout, np.zeros(len(description_terms(cfg).layout.cells)),
                                    suppress_below=0).n)
