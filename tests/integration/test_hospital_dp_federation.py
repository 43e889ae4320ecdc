"""Hospital-level DP in real Flower federations: updates really are clipped on the client, averaged with
equal weights, noised on the server, and the study's epsilon is reported per round; a hospital that
declines is passed on. The calibration and Flower's clipping mod alone: tests/unit/test_hospital_dp.py."""

import numpy as np
import pytest

from fedhealth.data.study_file import load_config
from fedhealth.model.initial import initial_weights
from fedhealth.privacy.ledger import epsilon_of
from fedhealth.runs import rundir
from tests.support import SMOKE


@pytest.mark.slow
def test_updates_are_clipped_on_the_client_and_epsilon_reported(tmp_path):
    from fedhealth.experiments.simulate import simulate

    # A tiny clipping norm and almost no noise: the global model can move by at most about C per round.
    cfg = load_config(SMOKE, ["privacy.mode=hospital", "privacy.noise_multiplier=0.0001",
                              "privacy.clipping_norm=0.001", "federation.rounds=1",
                              "references.non_private_federation=false", "references.pooled=false"])
    run_dir = rundir.create_run_dir(cfg, tmp_path / "run")
    summary = simulate(cfg, run_dir)
    before = initial_weights(cfg)
    after, _ = rundir.load_weights(run_dir / rundir.MODEL_FILE)
    moved = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(after, before, strict=True)))
    assert 0 < moved <= 0.001 * 1.01
    (row,) = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    assert row["hospitals_aggregated"] == [0, 1, 2]
    assert row["hospital_epsilon"] == pytest.approx(epsilon_of([(0.0001, 1.0, 1)], 1e-5))
    assert summary["privacy"]["mode"] == "hospital" and summary["privacy"]["rounds"] == 1
    metrics = rundir.read_jsonl(run_dir / rundir.METRICS_FILE)
    # Weights were equal (1 each), inside SecAgg+'s masked sum; record counts never went out in the clear.
    assert [r["n_train"] for r in metrics] == [None, None, None]
    assert all(r["aggregated"] for r in metrics)


@pytest.mark.slow
def test_hospital_level_dp_with_a_declining_hospital_completes_its_round(tmp_path):
    """Four hospitals, h3 not a participant: it declines (a dropout, its audit trail says why), the other
    three are aggregated (m = 3), and no hospital crashed."""
    from fedhealth.experiments.simulate import run_federation

    text = ('name = "four-dp"\nseed = 5\n[model]\nname = "logreg"\n[federation]\nrounds = 1\n'
            'participants = ["h0", "h1", "h2"]\n[privacy]\nmode = "hospital"\nnoise_multiplier = 0.0001\n'
            '[references]\nlocal_only = false\npooled = false\nnon_private_federation = false\n' + "".join(
                f'[[hospitals]]\nname = "h{i}"\ntier = "secondary"\nregion = "north"\nrecords = {300 + 100 * i}\n'
                for i in range(4)))
    path = tmp_path / "four.toml"
    path.write_text(text)
    cfg = load_config(path)
    run_dir = rundir.create_run_dir(cfg, tmp_path / "run")
    run_federation(cfg, run_dir)
    (row,) = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    assert row["status"] == "aggregated" and row["hospitals_aggregated"] == [0, 1, 2], row
    assert row["fit_failures"] == [], row["fit_failures"]
    assert row["declined"] == [{"hospital_index": 3, "reason": "not a participant in this study", "epsilon": None}]
    import json

    (entry,) = [json.loads(line) for line in (run_dir / "audit" / "h3.jsonl").read_text().splitlines()]
    assert entry["decision"] == "declined: this hospital is not in federation.participants"
