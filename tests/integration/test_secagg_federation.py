"""Secure aggregation (Flower's SecAgg+) in real federations.

The tests run Flower's simulation engine with the real protocol and compare against the same study
aggregated in the clear: same seeds, same local training, so the only difference allowed is SecAgg+'s
quantisation (bounded by `quantization_std`) and float32 rounding. The derived parameters and the refusals:
tests/unit/test_secagg.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedhealth.data.study_file import load_config
from fedhealth.privacy.hospital_level import calibrated_secagg_params
from fedhealth.runs import rundir
from fedhealth.study.secagg import MODULUS
from tests.support import ROOT, federate, smoke

FLOAT32_SLACK = 2e-6  # float32 rounding of weights of order 1, in plain FedAvg and in adding the mean back


def _round_weights(run_dir: Path, r: int) -> list[np.ndarray]:
    return rundir.load_weights(rundir.checkpoint_path(run_dir, r))[0]


def _rounds(run_dir: Path) -> list[dict]:
    return rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)


def _assert_same_aggregate(secure_dir: Path, plain_dir: Path, cfg) -> float:
    params = json.loads((secure_dir / rundir.SECAGG_FILE).read_text())
    # quantisation error of the weighted sum, divided by the total weight (at least the largest
    # hospital's training share of max_weight), six standard deviations
    total_weight = sum(int(h.records * (1 - cfg.training.test_fraction)) for h in cfg.hospitals) / params["max_weight"]
    bound = 6 * params["quantization_std"] / min(1.0, total_weight) + FLOAT32_SLACK
    worst = max(float(np.abs(a - b).max()) for a, b in zip(_round_weights(secure_dir, 1),
                                                           _round_weights(plain_dir, 1), strict=True))
    assert worst <= bound, f"secure and plain aggregates differ by {worst:.3g} > {bound:.3g}"
    # and the round really changed the model (so the comparison is not between two untrained models)
    from fedhealth.model.initial import initial_weights

    moved = max(float(np.abs(a - b).max()) for a, b in zip(_round_weights(secure_dir, 1), initial_weights(cfg),
                                                           strict=True))
    assert moved > 100 * bound
    return worst


def _population(count: int, tmp_path: Path):
    path = tmp_path / f"pop{count}.toml"
    path.write_text(f'name = "pop{count}"\nseed = 5\n[population]\ncount = {count}\nrecords_min = 200\n'
                    'records_max = 2000\n[model]\nname = "logreg"\n[federation]\nrounds = 1\nbackend = "in-process"\n'
                    '[references]\nlocal_only = false\npooled = false\n')
    return load_config(path)


@pytest.mark.slow
@pytest.mark.parametrize("count", [20, 100])  # 3 hospitals: in test_the_server_never_holds_an_individual_update
def test_secure_aggregate_equals_plain_aggregate(tmp_path, count):
    cfg = _population(count, tmp_path)
    plain_cfg = load_config_from(cfg, ["federation.secure_aggregation.enabled=false"])
    secure = federate(cfg, tmp_path / "secure")
    plain = federate(plain_cfg, tmp_path / "plain")
    assert [r["secure_aggregation"] for r in _rounds(secure)] == [True]
    assert _rounds(secure)[0]["hospitals_aggregated"] == list(range(count))
    _assert_same_aggregate(secure, plain, cfg)
    rows = rundir.read_jsonl(secure / rundir.METRICS_FILE)
    assert all(r["n_train"] is None for r in rows)  # record counts never travel in the clear
    assert all(r["secagg_clipped"] == 0 for r in rows)


def load_config_from(cfg, overrides: list[str]):
    from fedhealth.study.config import apply_overrides, parse_config

    return parse_config(apply_overrides(cfg.model_dump(mode="json", exclude_none=True), overrides))


def _five(tmp_path: Path, *overrides: str):
    text = ('name = "five"\nseed = 3\n[model]\nname = "logreg"\n[federation]\nrounds = 2\n'
            '[references]\nlocal_only = false\npooled = false\nnon_private_federation = false\n' + "".join(
                f'[[hospitals]]\nname = "h{i}"\ntier = "secondary"\nregion = "north"\nrecords = {300 + 100 * i}\n'
                for i in range(5)))
    path = tmp_path / "five.toml"
    path.write_text(text)
    return load_config(path, list(overrides))


def _drops(*items: tuple[str, str, list[int]]) -> str:
    return "testing.dropouts=[" + ", ".join(
        f'{{hospital = "{h}", stage = "{s}", rounds = {r}}}' for h, s, r in items) + "]"


@pytest.mark.slow
def test_dropouts_up_to_the_tolerance_still_give_the_survivors_aggregate(tmp_path):
    """Five hospitals, threshold 3: two vanish in round 1, one during key sharing and one after it
    trained; the aggregate is exactly the three survivors'. Without DP: DP-SGD's noise is each hospital's
    own secret, so two runs can never be compared to the bit (the ledger side of a dropout after training
    is checked in the next test)."""
    secure_cfg = _five(tmp_path, _drops(("h1", "share_keys", [1]), ("h3", "after_training", [1])))
    assert calibrated_secagg_params(secure_cfg).tolerated_dropouts == 2
    # the plain reference: the same two hospitals simply do not take part in round 1
    plain_cfg = _five(tmp_path, "federation.secure_aggregation.enabled=false",
                      _drops(("h1", "collect_masked_vectors", [1]), ("h3", "collect_masked_vectors", [1])))
    secure = federate(secure_cfg, tmp_path / "secure")
    plain = federate(plain_cfg, tmp_path / "plain")
    first = _rounds(secure)[0]
    assert first["status"] == "aggregated" and first["hospitals_aggregated"] == [0, 2, 4]
    assert any("share_keys" in f for f in first["fit_failures"])
    assert any("trained and vanished" in f for f in first["fit_failures"])
    _assert_same_aggregate(secure, plain, secure_cfg)
    assert _rounds(secure)[1]["hospitals_aggregated"] == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_beyond_the_tolerance_the_round_fails_loudly_and_the_model_is_kept(tmp_path):
    """Round 1: three of five vanish (threshold 3, the study's minimum 3): failed before unmasking, model
    kept. Round 2: one hospital sends a malformed masked vector: screened out with its reason, the other
    four are aggregated. With record-level DP: h2, which trained and vanished in the failed round 1, was
    charged all the same (its update left no trace the hospital could vouch for, so it counts as sent)."""
    drops = _drops(("h0", "share_keys", [1]), ("h1", "collect_masked_vectors", [1]), ("h2", "after_training", [1]),
                   ("h4", "malformed_masked_vector", [2]))
    cfg = _five(tmp_path, drops, "privacy.mode=record", "privacy.noise_multiplier=1.0", "privacy.max_epsilon=100")
    run_dir = federate(cfg, tmp_path / "run")
    first, second = _rounds(run_dir)
    assert first["status"] == "failed" and not first["aggregated"] and first["hospitals_aggregated"] == []
    assert "only 2 hospital(s) contributed" in first["failure"] and "fewer than 3" in first["failure"]
    from fedhealth.model.initial import initial_weights

    for kept, start in zip(_round_weights(run_dir, 1), initial_weights(cfg), strict=True):
        np.testing.assert_array_equal(kept, start)
    assert second["status"] == "aggregated" and second["hospitals_aggregated"] == [0, 1, 2, 3]
    assert second["rejected"] == [{"hospital_index": 4,
                                   "reason": "malformed masked vector: masked vector has 2 arrays, expected 3"}]
    rows = [r for r in rundir.read_jsonl(run_dir / rundir.METRICS_FILE) if r["round"] == 1]
    assert not any(r["aggregated"] for r in rows)
    ledger = json.loads((run_dir / rundir.PRIVACY_DIR / "h2.json").read_text())
    assert [e["round"] for e in ledger["entries"]] == [1, 2]  # charged before training, though never aggregated


@pytest.mark.slow
def test_repeated_failures_stop_the_run_with_a_non_zero_exit(tmp_path):
    cfg_path = tmp_path / "five.toml"
    _five(tmp_path)  # writes five.toml
    proc = subprocess.run(
        [sys.executable, "-m", "fedhealth.cli", "simulate", "-c", str(cfg_path), "--out", str(tmp_path / "run"),
         "--set", _drops(("h0", "setup", []), ("h1", "setup", []), ("h2", "setup", [])),
         "--set", "federation.secure_aggregation.max_consecutive_failures=2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 rounds in a row failed to aggregate" in proc.stdout + proc.stderr
    state = json.loads((tmp_path / "run" / rundir.STATE_FILE).read_text())
    assert state["status"] == "failed"
    assert [r["status"] for r in _rounds(tmp_path / "run")] == ["failed", "failed"]


@pytest.mark.slow
def test_the_server_never_holds_an_individual_update(tmp_path, monkeypatch):
    """Instrument the server's Grid: record every array that reaches it. In the clear run those are the
    hospitals' updates (the instrument can see them); in the secure run no reply carries a plain array
    and no masked vector correlates with any hospital's update."""
    import fedhealth.coordinator.app as server
    from fedhealth.coordinator.grid_tap import GridTap

    captured: list[tuple[str, list[np.ndarray]]] = []

    def record(messages, replies):
        from flwr.common import bytes_to_ndarray
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        for reply in replies:
            if reply.has_error():
                continue
            for name, arrays in reply.content.array_records.items():
                values = [a.numpy() for a in arrays.values()]
                if "fitres" in name and values:
                    captured.append(("plain", values))
            cfgs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if cfgs is not None and Key.MASKED_PARAMETERS in cfgs:
                captured.append(("masked", [bytes_to_ndarray(b) for b in cfgs[Key.MASKED_PARAMETERS]][1:]))

    original = server.run_study
    monkeypatch.setattr(server, "run_study", lambda grid, *a, **k: original(GridTap(grid, record), *a, **k))
    cfg = smoke("federation.rounds=1", "model.name=mlp")
    plain = federate(load_config_from(cfg, ["federation.secure_aggregation.enabled=false"]), tmp_path / "plain")
    updates = [np.concatenate([a.ravel() for a in arrays]) for kind, arrays in captured if kind == "plain"]
    assert len(updates) == 3 and all(np.abs(u).max() > 0 for u in updates)
    captured.clear()
    secure = federate(cfg, tmp_path / "secure")
    _assert_same_aggregate(secure, plain, cfg)  # the smoke study's 3 hospitals: secure sum = plain FedAvg
    assert not [kind for kind, _ in captured if kind == "plain"]
    masked = [np.concatenate([a.ravel() for a in arrays]).astype(float) for kind, arrays in captured
              if kind == "masked"]
    assert len(masked) == 3
    for vector in masked:
        assert vector.std() > MODULUS / 10  # uniform-looking over the whole modulus, not a quantised update
        for update in updates:
            assert abs(np.corrcoef(vector, update)[0, 1]) < 0.2


@pytest.mark.slow
def test_distributed_hospital_noise_adds_up_to_the_central_noise(tmp_path):
    """Three hospitals, privacy.min_contributors 3, no colluders: each adds noise of std sigma*C/sqrt(3), so
    the sum carries sigma*C and the mean of three clipped updates sigma*C/3 per coordinate, as central noise
    calibrated to 3 would."""
    base = ["federation.rounds=1", "model.name=mlp", "privacy.mode=hospital", "privacy.hospital_noise=distributed"]
    quiet = federate(smoke(*base, "privacy.noise_multiplier=0.000001"), tmp_path / "quiet")
    noisy = federate(smoke(*base, "privacy.noise_multiplier=1.0"), tmp_path / "noisy")
    diff = np.concatenate([(a - b).ravel() for a, b in zip(_round_weights(noisy, 1), _round_weights(quiet, 1),
                                                           strict=True)])
    expected = 1 / 3
    assert diff.size > 500
    assert 0.85 * expected < diff.std() < 1.15 * expected
    assert _rounds(noisy)[0]["hospital_epsilon"] > 0


@pytest.mark.slow
def test_an_aggregate_of_one_hospital_is_not_released(tmp_path):
    """If all but one hospital decline (each drops out of the round), the 'aggregate' would be that
    hospital's update: the server refuses it before unmasking (no unmask request is sent), the round
    fails with the reason, the declines are recorded by category, and the model is kept. With no other
    round, nothing was ever aggregated: the study itself fails (NothingAggregated), naming the declines."""
    policy = 'policy = { allowed_models = ["mlp"] }\n'
    text = 'name = "lonely"\n[model]\nname = "logreg"\n[federation]\nrounds = 1\n' \
           '[references]\nlocal_only = false\npooled = false\n' + "".join(
               f'[[hospitals]]\nname = "h{i}"\ntier = "secondary"\nregion = "north"\nrecords = 400\n'
               + (policy if i else "") for i in range(3))
    path = tmp_path / "lonely.toml"
    path.write_text(text)
    cfg = load_config(path)
    from fedhealth.coordinator.app import NothingAggregated

    with pytest.raises(NothingAggregated, match="its site policy"):
        federate(cfg, tmp_path / "run")
    run_dir = tmp_path / "run"
    (only,) = _rounds(run_dir)
    assert only["status"] == "failed" and "only 1 hospital(s) contributed" in only["failure"]
    assert "no unmask request sent" in only["failure"] and only["secagg_stage_seconds"].keys() == {
        "setup", "share_keys", "collect_masked_vectors"}
    assert only["declined"] == [{"hospital_index": i, "reason": "its site policy", "epsilon": None} for i in (1, 2)]
    assert only["fit_failures"] == []
    from fedhealth.model.initial import initial_weights

    for kept, start in zip(_round_weights(run_dir, 1), initial_weights(cfg), strict=True):
        np.testing.assert_array_equal(kept, start)
