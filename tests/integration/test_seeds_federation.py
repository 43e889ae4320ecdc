"""`fh.simulate_seeds` (`fedhealth simulate --seeds`) on the smoke study: one real federation per seed, each its
own complete run directory under a different seed, and seeds.json built from exactly their summaries."""

import json

import numpy as np
import pytest

import fedhealth as fh
from fedhealth.runs import rundir
from tests.support import SMOKE


@pytest.mark.slow
def test_one_run_per_seed_and_the_spread_of_their_figures(tmp_path):
    out = tmp_path / "seeds"
    result = fh.simulate_seeds(SMOKE, "5,6", out, overrides={"federation.rounds": 1}, report=False)
    assert result["seeds"] == [5, 6] and sorted(p.name for p in out.iterdir()) == ["seed-5", "seed-6", "seeds.json"]
    assert json.loads((out / "seeds.json").read_text()) == json.loads(json.dumps(result))
    summaries = []
    for seed in (5, 6):
        run = fh.Run.open(out / f"seed-{seed}")
        assert run.state == "completed" and rundir.read_json(run.path / rundir.SUMMARY_FILE)["seed"] == seed
        summaries.append(run.summary)
    # different seeds: different records and models, so the figures differ ...
    assert summaries[0]["overall"]["auroc"]["federated"] != summaries[1]["overall"]["auroc"]["federated"]
    # ... and seeds.json holds exactly theirs
    fed = result["overall"]["auroc"]["federated"]
    values = [s["overall"]["auroc"]["federated"] for s in summaries]
    assert fed["values"] == values and fed["sd"] == pytest.approx(np.std(values, ddof=1))
    for i, h in enumerate(result["hospitals"]):
        assert h["gain"]["values"] == [s["hospitals"][i]["gain"]["estimate"] for s in summaries]
