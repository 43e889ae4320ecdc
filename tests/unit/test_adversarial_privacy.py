"""A curious or deviating server against one hospital's record-level privacy.

Each test plays the server: it knows the study config (seed included), chooses what to send, and in
simulation even has the synthetic records. Each guarantee must still hold, because it is enforced in the
hospital's code: the noise comes from the hospital's own secret, every release is charged, the ledger is
exclusive and durable, and what leaves in an error is a reason, not data. The attacks that need a real
ServerApp (a federation) are in tests/integration/test_adversarial_privacy_federation.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedhealth.data.study_file import load_config
from fedhealth.hospital.app import HospitalClient
from fedhealth.model.initial import initial_weights
from fedhealth.privacy.ledger import BudgetExceeded, PrivacyLedger, StaleRound
from fedhealth.study.policy import SitePolicy
from fedhealth.wire import DECLINED_KEY, SECURE_KEY, study_payload
from tests.support import RECORD_DP, SMOKE, TOY_SCHEMA, toy_frame

# ---- 1. the noise is the hospital's alone ---------------------------------------------------------------

def test_each_hospital_keeps_its_secret_to_itself(tmp_path):
    """The secret is made at the hospital (0600), never sent, and a copy others can read is refused."""
    from fedhealth.privacy.secret import HospitalSecret, SecretError, secret_path

    cfg = load_config(SMOKE, RECORD_DP)
    client = HospitalClient(2, SitePolicy(max_epsilon=50, require_secure_aggregation=False), str(tmp_path))
    _, n, metrics = client.fit(initial_weights(cfg), study_payload(cfg, 1, ""))
    path = secret_path(tmp_path, "village-clinic")
    assert n > 0 and path.stat().st_mode & 0o777 == 0o600 and len(path.read_bytes()) == 32
    assert path.read_bytes().hex() not in json.dumps(metrics)
    path.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        HospitalSecret.load_or_create(path)


# ---- 2. every release is paid for ---------------------------------------------------------------------

def _village(tmp_path: Path, cap: float = 9.0) -> HospitalClient:
    # village-clinic: epsilon 6.25 after one release, 8.26 after two, 9.86 after three (delta 1e-5)
    return HospitalClient(2, SitePolicy(max_epsilon=cap, require_secure_aggregation=False), str(tmp_path))


def test_replaying_a_round_with_other_weights_pays_for_every_release_until_the_cap(tmp_path):
    cfg = load_config(SMOKE, RECORD_DP)
    client = _village(tmp_path)
    w0 = initial_weights(cfg)
    sent, n, first = client.fit(w0, study_payload(cfg, 1, ""))
    assert n > 0
    # A retry of the same release (same study, round, model, settings) re-sends the same bytes, free.
    again, _, retry = client.fit([w.copy() for w in w0], study_payload(cfg, 1, ""))
    assert all(np.array_equal(a, b) for a, b in zip(sent, again, strict=True))
    assert retry["local.epsilon_charged"] == 0 and retry["local.epsilon_total"] == first["local.epsilon_total"]
    # Round 1 again with other weights: a new release, charged.
    other = [w + 0.01 for w in w0]
    _, n2, second = client.fit(other, study_payload(cfg, 1, ""))
    assert n2 > 0 and second["local.epsilon_charged"] > 0
    assert second["local.epsilon_total"] > first["local.epsilon_total"]
    # A third variant would pass the cap of 9: refused, nothing sent, nothing charged.
    _, n3, third = client.fit([w - 0.01 for w in w0], study_payload(cfg, 1, ""))
    assert n3 == 0 and "budget" in third[DECLINED_KEY]
    ledger = PrivacyLedger(tmp_path / "village-clinic.json", "village-clinic", 9.0, cfg.privacy_delta())
    assert len(ledger.entries) == 2 and ledger.spent <= 9.0
    assert len({e.release for e in ledger.entries}) == 2


def test_a_stale_round_is_refused_for_that_request_without_locking_the_hospital_out(tmp_path):
    cfg = load_config(SMOKE, RECORD_DP)
    client = _village(tmp_path, cap=50.0)
    w = initial_weights(cfg)
    assert client.fit(w, study_payload(cfg, 3, ""))[1] > 0
    _, n, stale = client.fit([x + 1 for x in w], study_payload(cfg, 2, ""))
    assert n == 0 and "older" in stale[DECLINED_KEY]
    assert client.fit([x + 2 for x in w], study_payload(cfg, 4, ""))[1] > 0  # not locked out
    ledger = PrivacyLedger(tmp_path / "village-clinic.json", "village-clinic", 50.0, cfg.privacy_delta())
    assert [e.round for e in ledger.entries] == [3, 4]


# ---- 5. the ledger is durable and exclusive -------------------------------------------------------------

def _charge_many(path: str, start: int, count: int, barrier) -> None:
    ledger = PrivacyLedger(Path(path), "h", cap=3.0, delta=1e-5)
    barrier.wait()
    for k in range(count):
        try:
            ledger.charge(1, 1.0, 0.02, 100, 1.0, study="s", release=f"{start + k:064x}")
        except BudgetExceeded:
            return


def test_two_processes_charging_one_ledger_at_once_never_pass_its_cap(tmp_path):
    path = tmp_path / "h.json"
    ctx = mp.get_context("fork")  # the children share nothing with the parent but the ledger file
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_charge_many, args=(str(path), 1000 * p, 40, barrier)) for p in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ledger = PrivacyLedger(path, "h", cap=3.0, delta=1e-5)  # verifies the chain and the epsilon
    assert ledger.spent <= 3.0
    # exactly as many releases as one process alone could afford: none lost, none past the cap
    alone = PrivacyLedger(tmp_path / "alone.json", "h", cap=3.0, delta=1e-5)
    with pytest.raises(BudgetExceeded):
        for k in range(100):
            alone.charge(1, 1.0, 0.02, 100, 1.0, study="s", release=f"{k:064x}")
    assert len(ledger.entries) == len(alone.entries) > 1


def _charge_then_hang(path: str, ready) -> None:
    with PrivacyLedger.locked(Path(path), "h", cap=10.0, delta=1e-5) as ledger:
        ledger.charge(1, 1.0, 0.02, 100, 1.0, study="s", release="f" * 64)
        ready.set()
        time.sleep(60)  # "training" while holding the lock, until killed


def test_a_killed_process_loses_no_charge_and_leaves_no_lock(tmp_path):
    path = tmp_path / "h.json"
    ctx = mp.get_context("fork")  # the children share nothing with the parent but the ledger file
    ready = ctx.Event()
    proc = ctx.Process(target=_charge_then_hang, args=(str(path), ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    ledger = PrivacyLedger(path, "h", cap=10.0, delta=1e-5)
    assert [e.release for e in ledger.entries] == ["f" * 64]  # the charge survived the kill
    ledger.charge(2, 1.0, 0.02, 100, 1.0, study="s", release="e" * 64)  # and the lock died with the process
    assert len(PrivacyLedger(path, "h", cap=10.0, delta=1e-5).entries) == 2
    assert not list(tmp_path.glob(".h.json.*"))  # no half-written temporary file left


def test_stale_charges_raise_without_touching_the_file(tmp_path):
    path = tmp_path / "h.json"
    ledger = PrivacyLedger(path, "h", cap=10.0, delta=1e-5)
    ledger.charge(5, 1.0, 0.02, 10, 1.0, study="s", release="1" * 64)
    before = path.read_bytes()
    with pytest.raises(StaleRound):
        ledger.charge(4, 1.0, 0.02, 10, 1.0, study="s", release="2" * 64)
    assert path.read_bytes() == before


# ---- 8. DP-SGD trains every hospital size ---------------------------------------------------------------

def test_the_schedule_charges_whole_steps_for_every_size_and_batch():
    """For every (records, batch) from 50 to 20,000 records and batch 1 to 512, the steps charged are the
    steps Opacus's Poisson sampler yields (Opacus's own loader computed int(1/q), one fewer for ~7.8 % of
    sizes, e.g. 5,952 at 64)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    from fedhealth.privacy.dp import dp_schedule

    for n in range(50, 20_001, 7):
        for b in (1, 2, 3, 7, 16, 32, 50, 64, 100, 128, 256, 333, 512):
            s = dp_schedule(n, b)
            assert s.steps_per_epoch == -(-n // b) and s.sample_rate == 1 / s.steps_per_epoch
            assert len(UniformWithReplacementSampler(num_samples=n, sample_rate=s.sample_rate,
                                                     steps=s.steps_per_epoch)) == s.steps_per_epoch
    assert dp_schedule(5952, 64).steps_per_epoch == 93 and int(1 / (1 / 93)) == 92  # the old off-by-one


@pytest.mark.parametrize("n, batch", [(50, 1), (50, 512), (60, 7), (5952, 64), (20_000, 512), (1999, 333)])
def test_dp_sgd_takes_exactly_the_charged_steps_and_survives_empty_batches(n, batch):
    from fedhealth.model import build_model
    from fedhealth.privacy.dp import dp_schedule, train_private

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    s = dp_schedule(n, batch)
    result, taken = train_private(build_model("logreg", 5, [], seed=0), x, y, epochs=1, schedule=s,
                                  learning_rate=0.1, momentum=0.0, noise_multiplier=1.0, max_grad_norm=1.0,
                                  noise_seed=1, sampling_seed=2)
    assert taken == result.steps == s.steps_per_epoch


def test_a_hospital_smaller_than_declared_trains_on_the_public_schedule(tmp_path):
    """The schedule (and so epsilon, steps and the noise scale) comes from the declared records: what leaves
    is the same whatever the hospital's true count is, so none of it reveals that count."""
    from fedhealth.privacy.round import schedule_for

    cfg = load_config(SMOKE, RECORD_DP)
    assert schedule_for(cfg, 2).public_records == round(300 * (1 - cfg.training.test_fraction))
    _, _, metrics = _village(tmp_path).fit(initial_weights(cfg), study_payload(cfg, 1, ""))
    assert {k for k in metrics if not k.startswith("local.")} == {"hospital_index", "epsilon", "delta",
                                                                   "noise_multiplier"}


# ---- 4, 6. what leaves, and the deployed defaults ------------------------------------------------------

def test_under_record_dp_only_what_dp_covers_leaves(tmp_path):
    cfg = load_config(SMOKE, RECORD_DP)
    client = _village(tmp_path, cap=50.0)
    _, weight, metrics = client.fit(initial_weights(cfg), study_payload(cfg, 1, ""))
    shared = {k: v for k, v in metrics.items() if not k.startswith("local.")}
    assert not {"train_loss", "train_steps", "train_seconds", "n_train"} & set(shared)
    from fedhealth.privacy.round import public_train_records

    assert weight == public_train_records(cfg, 2)  # FedAvg's weight is the declared size, not the true count
    _, n_eval, _ = client.evaluate(initial_weights(cfg), study_payload(cfg, 1, ""))
    assert n_eval == 300 - public_train_records(cfg, 2)


def _deployed(tmp_path: Path, name: str = "city-tertiary") -> HospitalClient:
    """A deployed hospital with no policy file: a node config naming it, its own ledger, no partition-id."""
    return HospitalClient(SimpleNamespace(node_config={"hospital-name": name}), None, str(tmp_path / "ledger"))


def test_a_deployed_hospital_without_a_policy_file_refuses_plain_aggregation(tmp_path):
    cfg = load_config(SMOKE, RECORD_DP)
    _, n, metrics = _deployed(tmp_path).fit(initial_weights(cfg), study_payload(cfg, 1, ""))
    assert n == 0 and "requires secure aggregation" in metrics[DECLINED_KEY]
    assert not (tmp_path / "ledger").exists()  # nothing charged
    secure = {**study_payload(cfg, 1, ""), SECURE_KEY: True}
    assert _deployed(tmp_path).fit(initial_weights(cfg), secure)[1] > 0


def test_a_deployed_hospital_without_a_policy_file_refuses_a_small_aggregate_or_a_large_delta(tmp_path):
    # a server announcing 2 of 3 hospitals per round (its own validator would refuse SecAgg+ with 2: it deviates)
    cfg = load_config(SMOKE, [*RECORD_DP, "federation.strategy.fraction_fit=0.5",
                              "federation.secure_aggregation.enabled=false"])
    secure = {**study_payload(cfg, 1, ""), SECURE_KEY: True}
    _, n, metrics = _deployed(tmp_path).fit(initial_weights(cfg), secure)
    assert n == 0 and "fewer hospitals" in metrics[DECLINED_KEY]
    loose = load_config(SMOKE, [*RECORD_DP, "privacy.delta=0.001"])  # far above 1 / (10 x 1125 records)
    _, n, metrics = _deployed(tmp_path).fit(initial_weights(loose), {**study_payload(loose, 1, ""), SECURE_KEY: True})
    assert n == 0 and "delta" in metrics[DECLINED_KEY]


# ---- 12. what leaves in an error is a reason --------------------------------------------------------------

def test_more_rows_than_declared_is_no_oracle_on_the_true_count(tmp_path):
    """A server that varies a hospital's declared `records` gets the same kind of reply whatever the value:
    the hospital uses at most that many rows and never errors on it (before, "has N usable rows, more than the
    M the study declares" told the server, request by request, where the true count lies)."""
    data = tmp_path / "d"
    data.mkdir()
    (data / "schema.toml").write_text(TOY_SCHEMA)
    toy_frame(77, seed=1).to_csv(data / "b.csv", index=False)
    for declared in (40, 76, 77, 500):
        study = tmp_path / f"s{declared}.toml"
        study.write_text(f'schema = "{data / "schema.toml"}"\n[model]\nname = "logreg"\n'
                         '[federation.secure_aggregation]\nenabled = false\n'
                         + "".join(f'[[hospitals]]\nname = "{n}"\nrecords = {declared}\n' for n in "abc"))
        cfg = load_config(study, RECORD_DP)
        node = SimpleNamespace(node_config={"hospital-name": "b"})
        client = HospitalClient(node, SitePolicy(min_hospitals=1, require_secure_aggregation=False,
                                                 max_delta=0.5), str(tmp_path / f"l{declared}"),
                                data_file=str(data / "b.csv"), schema_file=str(data / "schema.toml"))
        _, n, metrics = client.fit(initial_weights(cfg), study_payload(cfg, 1, ""))
        assert n > 0 and DECLINED_KEY not in metrics, declared
        assert client.evaluate(initial_weights(cfg), study_payload(cfg, 1, ""))[1] >= 1


def test_crafted_weights_that_overflow_one_records_gradient_tell_the_server_nothing(tmp_path):
    """The attack: weights so large that a record with a high feature overflows its gradient (NaN after
    Opacus's clipping), so the hospital errors exactly when that record is sampled. Such a model is refused
    before anything is charged; and inside DP-SGD a non-finite per-record gradient is zeroed, not propagated."""
    import torch

    from fedhealth.model import build_model
    from fedhealth.privacy.dp import dp_schedule, train_private

    cfg = load_config(SMOKE, RECORD_DP)
    crafted = [w.copy() for w in initial_weights(cfg)]
    crafted[0][0, 0] = 3e37
    _, n, metrics = _village(tmp_path, cap=50.0).fit(crafted, study_payload(cfg, 1, ""))
    assert n == 0 and "implausibly large" in metrics[DECLINED_KEY]
    assert not (tmp_path / "village-clinic.json").exists()  # refused before the charge

    x = np.zeros((64, 3), np.float32)
    x[0, 0] = 20.0  # the one record the crafted model overflows on: its hidden unit is inf, its gradient NaN
    y = np.zeros(64, np.float32)
    model = build_model("mlp", 3, [4], seed=0)
    w1, b1, w2, _ = model.parameters()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        w1[0, 0], b1[0], w2[0, 0] = 3e37, -3e37 * 0.5, 1e4
    train_private(model, x, y, epochs=1, schedule=dp_schedule(64, 64), learning_rate=0.0, momentum=0.0,
                  noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=1, sampling_seed=2)
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


# ---- 7. hospital-level releases compose in the hospital's ledger ------------------------------------------

def test_hospital_level_releases_compose_across_studies_in_the_hospitals_ledger(tmp_path):
    from fedhealth.privacy.ledger import epsilon_of

    studies = [load_config(SMOKE, ["privacy.mode=hospital", "privacy.noise_multiplier=2.0", f"name=study-{k}"])
               for k in range(3)]
    one = epsilon_of([(2.0, 1.0, 1)], studies[0].privacy_delta())
    two = epsilon_of([(2.0, 1.0, 2)], studies[0].privacy_delta())
    policy = SitePolicy(max_hospital_epsilon=(two + epsilon_of([(2.0, 1.0, 3)], studies[0].privacy_delta())) / 2,
                        require_secure_aggregation=False)
    client = HospitalClient(0, policy, str(tmp_path))
    for k in range(2):
        assert client.fit(initial_weights(studies[k]), study_payload(studies[k], 1, ""))[1] > 0
    _, n, refused = client.fit(initial_weights(studies[2]), study_payload(studies[2], 1, ""))
    assert n == 0 and "budget" in refused[DECLINED_KEY]  # a third study would pass its participation cap
    ledger = PrivacyLedger(tmp_path / "city-tertiary.json", "city-tertiary", 10.0, studies[0].privacy_delta())
    assert [e.unit for e in ledger.entries] == ["hospital", "hospital"]
    assert ledger.spent_in("hospital") == pytest.approx(two) and two > one and ledger.spent == 0.0
