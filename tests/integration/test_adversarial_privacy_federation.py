"""A curious or deviating server against one hospital's record-level privacy, in real Flower federations.

The federation half of tests/unit/test_adversarial_privacy.py (which has the guarantees that one hospital's
code enforces alone, and the numbering of the sections): here the server is a real ServerApp, run by Flower's
simulation engine or by `fedhealth simulate`.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fedhealth.data.study_file import load_config
from fedhealth.model.initial import initial_weights
from fedhealth.runs import rundir
from tests.support import RECORD_DP, ROOT, SMOKE, TOY_SCHEMA, toy_frame

QUICK = ["federation.rounds=1", "references.local_only=false", "references.pooled=false",
         "references.non_private_federation=false"]


def _flat(weights: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(w) for w in weights]).astype(np.float64)


# ---- 1. the noise is the hospital's alone ---------------------------------------------------------------

@pytest.mark.slow
def test_a_server_that_knows_the_config_and_seed_cannot_reproduce_the_noise(tmp_path):
    """Two runs of one config (same seed) release different models: the noise is not a function of the config.
    A server that knows everything but the hospitals' secrets, records included (simulation), re-runs every
    hospital's DP-SGD with each seed the config gives it and aggregates: it misses the released model by as
    much as two honest runs differ, i.e. by the noise, not by rounding (1.2e-7 before)."""
    from fedhealth.data.hospitals import load_hospital
    from fedhealth.experiments.simulate import simulate
    from fedhealth.model import build_model, get_weights
    from fedhealth.privacy.dp import train_private
    from fedhealth.privacy.round import noise_for, public_train_records, schedule_for
    from fedhealth.seeding import derive_seed

    cfg = load_config(SMOKE, [*RECORD_DP, *QUICK, "federation.secure_aggregation.enabled=false"])
    released = []
    for name in ("a", "b"):
        run_dir = rundir.create_run_dir(cfg, tmp_path / name)
        simulate(cfg, run_dir)
        released.append(_flat(rundir.load_weights(rundir.checkpoint_path(run_dir, 1))[0]))
    honest_gap = np.linalg.norm(released[0] - released[1])
    assert honest_gap > 1e-3  # same config, same seed: different noise

    from fedhealth.model import set_weights

    start = initial_weights(cfg)
    known_seeds = [lambda i: derive_seed(cfg.seed, "fit", i, 1), lambda i: cfg.seed, lambda i: 0]
    guesses = []
    for seed_of in known_seeds:
        total, weight = np.zeros_like(released[0]), 0
        for i in range(len(cfg.hospitals)):
            split = load_hospital(cfg, i)
            model = build_model(cfg.model.name, split.x_train.shape[1], cfg.model.hidden, seed=cfg.seed)
            set_weights(model, start)
            train_private(model, split.x_train, split.y_train, epochs=cfg.training.local_epochs,
                          schedule=schedule_for(cfg, i), learning_rate=cfg.training.learning_rate,
                          momentum=cfg.training.momentum, noise_multiplier=noise_for(cfg, i),
                          max_grad_norm=cfg.privacy.max_grad_norm, noise_seed=seed_of(i), sampling_seed=seed_of(i))
            n = public_train_records(cfg, i)
            total += n * _flat(get_weights(model))
            weight += n
        guesses.append(total / weight)
    for guess in guesses:
        miss = np.linalg.norm(guess - released[0])
        assert miss > 0.5 * honest_gap / np.sqrt(2), (miss, honest_gap)  # off by the noise, not by rounding


# ---- 2. every release is paid for ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_server_replaying_round_one_with_new_weights_is_charged_each_time(tmp_path, monkeypatch):
    """A real ServerApp that labels every round "round 1" (each with the new global model) hoping the hospital
    treats them as one retry: every release is charged, and the hospital stops at its cap."""
    import fedhealth.coordinator.app as server
    from fedhealth.experiments.simulate import simulate

    real = server.study_payload
    monkeypatch.setattr(server, "study_payload", lambda cfg, _r, ledger_dir="": real(cfg, 1, ledger_dir))
    cfg = load_config(SMOKE, [*RECORD_DP, "federation.rounds=3", "references.local_only=false",
                              "references.pooled=false", "references.non_private_federation=false",
                              "privacy.max_epsilon=9.0"])
    run_dir = rundir.create_run_dir(cfg, tmp_path / "run")
    simulate(cfg, run_dir)
    village = rundir.read_json(run_dir / rundir.PRIVACY_DIR / "village-clinic.json")["entries"]
    assert [e["round"] for e in village] == [1, 1]  # two releases charged; the third would pass 9
    assert len({e["release"] for e in village}) == 2 and village[-1]["epsilon"] <= 9.0
    city = rundir.read_json(run_dir / rundir.PRIVACY_DIR / "city-tertiary.json")["entries"]
    assert len(city) == 3 and len({e["release"] for e in city}) == 3  # three models, three charges


# ---- 11. nothing aggregated is a failure ---------------------------------------------------------------

@pytest.mark.slow
def test_a_study_where_no_hospital_trained_fails_and_labels_nothing_federated(tmp_path):
    from fedhealth.experiments.simulate import simulate

    cfg = load_config(SMOKE, [*RECORD_DP, *QUICK, "privacy.max_epsilon=0.01"])  # no hospital can afford a round
    run_dir = rundir.create_run_dir(cfg, tmp_path / "run")
    with pytest.raises(Exception, match="no round of 1 aggregated any hospital"):
        simulate(cfg, run_dir)
    assert rundir.read_state(run_dir)["status"] == "failed"
    assert not (run_dir / rundir.MODEL_FILE).exists() and not (run_dir / rundir.SUMMARY_FILE).exists()


@pytest.mark.slow
def test_the_cli_exits_non_zero_when_nothing_was_aggregated(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fedhealth.cli", "simulate", "--config", str(SMOKE), "--out", str(out),
                           "--set", "privacy.mode=record", "--set", "privacy.noise_multiplier=1.0",
                           "--set", "privacy.max_epsilon=0.01", *[a for o in QUICK for a in ("--set", o)]],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "no round of 1 aggregated" in proc.stdout + proc.stderr
    assert rundir.read_state(out)["status"] == "failed"


# ---- 12. what leaves in an error is a reason --------------------------------------------------------------

@pytest.mark.slow
def test_no_error_that_reaches_the_server_names_a_path_or_a_count(tmp_path):
    """Hospital b's file changes after the study was configured, so b fails every request. Before, its error
    text (absolute data path, the file's name) reached rounds.jsonl and the operator's terminal; now the server
    holds a category only, and the detail stays in b's own log."""
    from fedhealth.experiments.simulate import run_federation

    data = tmp_path / "site-data"
    data.mkdir()
    (data / "schema.toml").write_text(TOY_SCHEMA)
    hospitals = ""
    for i, name in enumerate(("a", "b", "c")):
        toy_frame(60 + 17 * i, seed=i).to_csv(data / f"{name}-private-records.csv", index=False)
        hospitals += f'[[hospitals]]\nname = "{name}"\ndata = "{data / f"{name}-private-records.csv"}"\n'
    study = tmp_path / "study.toml"
    study.write_text(f'schema = "{data / "schema.toml"}"\n[model]\nname = "logreg"\n[federation]\nrounds = 1\n'
                     '[federation.secure_aggregation]\nenabled = false\n[references]\nlocal_only = false\n'
                     'pooled = false\n' + hospitals)
    cfg = load_config(study)
    toy_frame(90, seed=9).to_csv(data / "b-private-records.csv", index=False)  # b's file changes under the study
    run_dir = rundir.create_run_dir(cfg, tmp_path / "run")
    run_federation(cfg, run_dir)  # the federation alone: a simulation's own summary reads every file itself
    held = "\n".join(p.read_text(errors="replace") for p in run_dir.rglob("*")
                     if p.is_file() and p.suffix in (".json", ".jsonl", ".toml", ".html") and p.name != "config.toml"
                     and "resolved" not in p.name)
    rounds = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    assert rounds[0]["hospitals_aggregated"] == [0, 2]  # b took no part
    assert "do not match the study's declaration" in json.dumps(rounds)
    for secret in (str(data), "private-records", "SHA-256", "changed since"):
        assert secret not in held, secret
