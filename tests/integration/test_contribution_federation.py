"""Contribution by coalition re-runs: one real coalition federation. The budget logic on a known game:
tests/unit/test_contribution.py."""

import numpy as np
import pytest

from fedhealth.data.study_file import load_config
from fedhealth.experiments.contribution import CoalitionValues
from tests.support import SMOKE


@pytest.mark.slow
def test_one_real_coalition_federation(tmp_path):
    cfg = load_config(SMOKE, ["federation.rounds=1"])
    values = CoalitionValues(cfg, tmp_path, budget=1)
    auroc = values(frozenset({"village-clinic"}))
    assert 0.5 < auroc < 1.0 and values.runs == 1
    from fedhealth.runs import rundir

    (only,) = rundir.read_jsonl(tmp_path / "coalitions" / "0001" / rundir.ROUNDS_FILE)
    assert only["hospitals_aggregated"] == [2] and [d["hospital_index"] for d in only["declined"]] == [0, 1]
    assert np.isfinite(auroc)
