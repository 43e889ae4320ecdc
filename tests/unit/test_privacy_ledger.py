"""The privacy ledger: Opacus's RDP epsilon, persisted, composed across restarts, never past the cap."""

import json

import numpy as np
import pytest

from fedhealth.model import build_model, get_weights
from fedhealth.model.training import evaluate
from fedhealth.privacy.dp import calibrate_noise, dp_schedule, sample_rate, steps_per_epoch, train_private
from fedhealth.privacy.ledger import BudgetExceeded, LedgerError, PrivacyLedger, epsilon_of
from tests.support import ROOT


def test_epsilon_matches_reference_value_from_dp_accounting():
    # FLOWER-NOTES reference (computed with Google's dp-accounting, RDP): sigma 1.0, q 64/5000, 780 steps.
    assert epsilon_of([(1.0, 64 / 5000, 780)], 1e-5) == pytest.approx(2.4191, abs=2e-3)
    assert epsilon_of([(0.8, 0.01, 1000)], 1e-5) == pytest.approx(3.6956, abs=2e-3)


def test_ledger_composes_across_restarts_and_refuses_at_cap(tmp_path):
    path = tmp_path / "h.json"
    ledger = PrivacyLedger(path, "h", cap=3.0, delta=1e-5)
    first = ledger.charge(1, 1.0, 0.02, 100, 1.0)
    assert path.exists() and first.epsilon == pytest.approx(epsilon_of([(1.0, 0.02, 100)], 1e-5))
    # A new process (or a resumed run) reads the same history: epsilon composes, it does not reset.
    again = PrivacyLedger(path, "h", cap=3.0, delta=1e-5)
    second = again.charge(2, 1.0, 0.02, 100, 1.0)
    assert second.epsilon == pytest.approx(epsilon_of([(1.0, 0.02, 200)], 1e-5))
    assert second.epsilon > first.epsilon
    # Re-running a release that was already charged (crash, then resume: same key) does not charge it twice...
    keyed = again.charge(3, 1.0, 0.02, 100, 1.0, release="a" * 64)
    assert again.charge(3, 1.0, 0.02, 100, 1.0, release="a" * 64) == keyed
    # ...but another release of the same round (other weights: another key) is new spending.
    other = again.charge(3, 1.0, 0.02, 100, 1.0, release="b" * 64)
    assert other.epsilon > keyed.epsilon
    spent = again.spent
    with pytest.raises(BudgetExceeded, match="above its cap of 3"):
        for r in range(3, 100):
            again.charge(r + 1, 1.0, 0.02, 100, 1.0)
    final = PrivacyLedger(path, "h", cap=3.0, delta=1e-5)
    assert final.spent <= 3.0 and final.spent >= spent
    entry = json.loads(path.read_text())["entries"][0]
    assert set(entry) >= {"round", "noise_multiplier", "sample_rate", "steps", "delta", "max_grad_norm",
                          "epsilon", "accountant"}


def test_ledger_refuses_another_hospital_or_delta(tmp_path):
    path = tmp_path / "h.json"
    PrivacyLedger(path, "h", 3.0, 1e-5).charge(1, 1.0, 0.02, 10, 1.0)
    with pytest.raises(ValueError, match="belongs to 'h'"):
        PrivacyLedger(path, "other", 3.0, 1e-5)
    with pytest.raises(ValueError, match="do not compose"):
        PrivacyLedger(path, "h", 3.0, 1e-6)


def test_calibrated_noise_spends_at_most_the_target():
    q, steps = sample_rate(2000, 64), 5 * steps_per_epoch(2000, 64)
    sigma = calibrate_noise(2.0, 1e-5, q, steps)
    assert 1.9 < epsilon_of([(sigma, q, steps)], 1e-5) <= 2.0


def test_dp_sgd_returns_clean_weights_and_takes_the_charged_steps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    model = build_model("mlp", 6, [4], seed=0)
    names = list(model.state_dict())
    initial = get_weights(model)
    result, steps = train_private(model, x, y, epochs=2, schedule=dp_schedule(500, 50), learning_rate=0.1,
                                  momentum=0.0, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=3,
                                  sampling_seed=4)
    assert steps == 2 * steps_per_epoch(500, 50) == result.steps
    assert list(model.state_dict()) == names  # no "_module." prefix on the caller's model
    assert not any(np.array_equal(a, b) for a, b in zip(initial, get_weights(model), strict=True))  # trained in place
    assert evaluate(model, x, y).auroc > 0.8
    again = build_model("mlp", 6, [4], seed=0)
    train_private(again, x, y, epochs=2, schedule=dp_schedule(500, 50), learning_rate=0.1, momentum=0.0,
                  noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=3, sampling_seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(model), get_weights(again), strict=True))


def _ledger_with_rounds(path, rounds=3):
    ledger = PrivacyLedger(path, "h", cap=100.0, delta=1e-5)
    for r in range(1, rounds + 1):
        ledger.charge(r, 1.0, 0.02, 50, 1.0)
    return json.loads(path.read_text())


@pytest.mark.parametrize("tamper", ["edit_steps", "remove_entry", "reorder", "edit_epsilon_and_steps", "garbage"])
def test_tampered_or_unreadable_ledger_is_refused_naming_the_hospital(tmp_path, tamper):
    path = tmp_path / "h.json"
    data = _ledger_with_rounds(path)
    entries = data["entries"]
    if tamper == "edit_steps":
        entries[1]["steps"] = 1
    elif tamper == "remove_entry":
        del entries[1]
    elif tamper == "reorder":
        entries[0], entries[1] = entries[1], entries[0]
    elif tamper == "edit_epsilon_and_steps":  # lower the last epsilon to match fewer steps: the chain shows it
        entries[-1]["steps"] = 1
        entries[-1]["epsilon"] = epsilon_of([(1.0, 0.02, 101)], 1e-5)
    path.write_text("{not json" if tamper == "garbage" else json.dumps(data))
    with pytest.raises(LedgerError, match="hospital 'h'"):
        PrivacyLedger(path, "h", cap=100.0, delta=1e-5)


def test_client_trains_nothing_on_an_unreadable_ledger(tmp_path):
    from fedhealth.data.study_file import load_config
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.model.initial import initial_weights
    from fedhealth.wire import DECLINED_KEY, study_payload

    smoke = ROOT / "configs" / "smoke.toml"
    cfg = load_config(smoke, ["privacy.mode=record", "privacy.noise_multiplier=1.0"])
    (tmp_path / "city-tertiary.json").write_text("{corrupt")
    client = HospitalClient(0, None, str(tmp_path))
    weights = initial_weights(cfg)
    sent, n, metrics = client.fit(weights, study_payload(cfg, 1, str(tmp_path)))
    # the server learns that the ledger is unusable, not where it is; the detail stays at the hospital
    assert n == 0 and "ledger" in metrics[DECLINED_KEY] and str(tmp_path) not in metrics[DECLINED_KEY]
    assert "cannot be read" in metrics["local.detail"] and "city-tertiary" in metrics["local.detail"]
    assert all(np.array_equal(a, b) for a, b in zip(sent, weights, strict=True))  # nothing trained


def test_a_second_study_on_the_same_ledger_is_charged_and_capped(tmp_path):
    """A hospital's ledger outlives studies (deployment): round 1 of a new study is new spending, and the
    hospital's cap covers everything it released across studies."""
    from fedhealth.data.study_file import load_config
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.model.initial import initial_weights
    from fedhealth.study.policy import SitePolicy
    from fedhealth.wire import DECLINED_KEY, study_payload

    smoke = ROOT / "configs" / "smoke.toml"
    studies = [load_config(smoke, ["privacy.mode=record", "privacy.noise_multiplier=1.0", f"name=study-{k}"])
               for k in range(3)]
    ledgers = tmp_path / "hospital-own-ledger"
    # village-clinic: epsilon 6.25 after one round, 8.26 after two, 9.86 after three (delta 1e-5); its own cap is 9
    client = HospitalClient(2, SitePolicy(max_epsilon=9.0, require_secure_aggregation=False), str(ledgers))
    _, n1, m1 = client.fit(initial_weights(studies[0]), study_payload(studies[0], 1, ""))
    assert n1 > 0 and m1["local.epsilon_charged"] == m1["epsilon"] > 0
    _, _, retry = client.fit(initial_weights(studies[0]), study_payload(studies[0], 1, ""))
    assert retry["epsilon"] == m1["epsilon"] and retry["local.epsilon_charged"] == 0  # the same release: once
    _, n2, m2 = client.fit(initial_weights(studies[1]), study_payload(studies[1], 1, ""))
    # a new study spends anew: the server sees this study's epsilon, the hospital keeps its total
    assert n2 > 0 and m2["epsilon"] == pytest.approx(m1["epsilon"]) and m2["local.epsilon_charged"] > 0
    assert m2["local.epsilon_total"] > m1["local.epsilon_total"]
    _, n3, m3 = client.fit(initial_weights(studies[2]), study_payload(studies[2], 1, ""))
    assert n3 == 0 and "above its cap of 9" in m3["local.detail"]  # and the cap spans studies
    assert "budget" in m3[DECLINED_KEY] and not any(c.isdigit() for c in m3[DECLINED_KEY])
    entries = json.loads((ledgers / "village-clinic.json").read_text())["entries"]
    assert [e["study"].split(":")[0] for e in entries] == ["study-0", "study-1"]
    assert PrivacyLedger(ledgers / "village-clinic.json", "village-clinic", 9.0,
                         studies[0].privacy_delta()).spent == pytest.approx(m2["local.epsilon_total"])
