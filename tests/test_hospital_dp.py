"""Hospital-level DP on Flower's own pieces: updates really are clipped on the client, averaged with
equal weights, noised on the server, and the study's epsilon is reported per round."""

from pathlib import Path

import numpy as np
import pytest

from fedhealth import rundir
from fedhealth.config import ConfigError, load_config
from fedhealth.federation.server import initial_weights
from fedhealth.privacy.hospital_level import hospital_epsilon, hospital_noise
from fedhealth.privacy.ledger import epsilon_of

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.toml"


def test_hospital_mode_needs_one_noise_source_and_calibrates():
    with pytest.raises(ConfigError, match="mode 'hospital' needs exactly one of"):
        load_config(SMOKE, ["privacy.mode=hospital"])
    cfg = load_config(SMOKE, ["privacy.mode=hospital", "privacy.target_epsilon=20", "federation.rounds=5"])
    assert cfg.privacy_delta() == 1e-5
    assert 19 < hospital_epsilon(cfg, 5) <= 20
    assert hospital_epsilon(cfg, 2) < hospital_epsilon(cfg, 5)
    assert hospital_epsilon(cfg, 5) == pytest.approx(epsilon_of([(hospital_noise(cfg), 1.0, 5)], 1e-5))


@pytest.mark.slow
def test_updates_are_clipped_on_the_client_and_epsilon_reported(tmp_path):
    from fedhealth.simulate import simulate

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
