"""Record-level DP in a real Flower federation: charged before sending, composed across a crash and
resume, refused at each hospital's own cap, reported per hospital. Never above a cap."""

import json
import tomllib

import pytest

from fedhealth.experiments.simulate import simulate
from fedhealth.privacy.ledger import epsilon_of
from fedhealth.runs import rundir
from fedhealth.study.config import parse_config
from tests.support import ROOT

pytestmark = pytest.mark.slow


def _study():
    data = tomllib.loads((ROOT / "configs" / "smoke.toml").read_text())
    data["federation"]["rounds"] = 3
    data["privacy"] = {"mode": "record", "noise_multiplier": 1.0, "max_epsilon": 10.0}
    # county-secondary: epsilon 4.4 after one round, 5.7 after two (delta 1e-5), so it stops at round 2
    data["hospitals"][1]["policy"] = {"max_epsilon": 5.0}
    data["hospitals"][2]["policy"] = {"max_epsilon": 1.0}  # village-clinic: cannot afford a single round
    # Two more hospitals with the study's cap, so every round still has the 3 contributors SecAgg+ needs.
    data["hospitals"] += [{"name": "east-secondary", "tier": "secondary", "region": "east", "records": 600},
                          {"name": "west-community", "tier": "community", "region": "west", "records": 400}]
    return parse_config(data, "test study")


def test_budget_is_charged_composed_across_resume_and_capped(tmp_path, interrupted_run):
    cfg = _study()
    run_dir = rundir.create_run_dir(cfg, tmp_path / "run")

    interrupted_run(cfg, run_dir)
    summary = simulate(cfg, run_dir)  # resume in fresh Ray actors: ledgers come from disk

    ledgers = {h.name: rundir.read_json(run_dir / rundir.PRIVACY_DIR / f"{h.name}.json")
               for h in cfg.hospitals if (run_dir / rundir.PRIVACY_DIR / f"{h.name}.json").exists()}
    big = ledgers["city-tertiary"]["entries"]
    assert [e["round"] for e in big] == [1, 2, 3]  # each round charged once, none reset by the restart
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in big]
    assert big[-1]["epsilon"] == pytest.approx(epsilon_of(history, cfg.privacy_delta()))
    assert big[0]["epsilon"] < big[1]["epsilon"] < big[2]["epsilon"]
    assert [e["round"] for e in ledgers["county-secondary"]["entries"]] == [1]
    assert "village-clinic" not in ledgers  # nothing charged, nothing sent

    privacy = {h["name"]: h for h in summary["privacy"]["hospitals"]}
    for i, h in enumerate(cfg.hospitals):
        assert privacy[h.name]["epsilon"] <= cfg.epsilon_cap(i)
    assert privacy["county-secondary"]["stopped_at_round"] == 2
    # the server learns that the budget stopped it, not the hospital's cap or spending (those stay in its audit log)
    assert privacy["county-secondary"]["stop_reason"] == "its privacy budget"
    assert privacy["village-clinic"]["stopped_at_round"] == 1 and privacy["village-clinic"]["epsilon"] == 0.0
    assert privacy["city-tertiary"]["stopped_at_round"] is None

    # It still learns: the DP model (city-tertiary's updates only, after round 1) ranks patients well.
    assert summary["overall"]["auroc"]["federated"] > 0.65

    rows = rundir.read_jsonl(run_dir / rundir.METRICS_FILE)
    for r in rows:  # epsilon per hospital per round; declined rounds say so
        if r["hospital"] == "city-tertiary":
            assert r["trained"] and r["epsilon"] == pytest.approx(big[r["round"] - 1]["epsilon"])
        if r["hospital"] == "village-clinic":
            assert not r["trained"] and r["declined"] == "its privacy budget"
    rounds = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    assert [r["hospitals_aggregated"] for r in rounds] == [[0, 1, 3, 4], [0, 3, 4], [0, 3, 4]]

    # The utility cost of privacy: the same federation without DP ran beside it, every hospital in.
    sibling = run_dir / "sibling-no-dp"
    assert rundir.read_state(sibling)["status"] == "completed"
    assert not (sibling / rundir.PRIVACY_DIR).exists()
    assert all(r["hospitals_aggregated"] == [0, 1, 2, 3, 4] for r in rundir.read_jsonl(sibling / rundir.ROUNDS_FILE))
    assert summary["overall"]["auroc"]["federated_no_dp"] > 0.7

    # Each hospital's audit trail: one entry per training request, chained across the crash and resume,
    # privacy figures equal to its ledger's, declined rounds logged as declined with nothing sent.
    from fedhealth.privacy.audit import verify_audit_log

    audit = {}
    for h in cfg.hospitals:
        path = run_dir / "audit" / f"{h.name}.jsonl"
        assert verify_audit_log(path, expected_entries=3).ok, h.name
        audit[h.name] = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["round"] for e in audit["city-tertiary"]] == [1, 2, 3]
    assert [e["decision"] for e in audit["city-tertiary"]] == ["sent"] * 3
    assert [e["epsilon_total"] for e in audit["city-tertiary"]] == pytest.approx([e["epsilon"] for e in big])
    assert sum(e["epsilon_charged"] for e in audit["city-tertiary"]) == pytest.approx(big[-1]["epsilon"])
    assert [e["decision"][:8] for e in audit["county-secondary"]] == ["sent", "declined", "declined"]
    assert "above its cap of 5" in audit["county-secondary"][1]["decision"]
    assert all(e["decision"].startswith("declined") and e["update_sha256"] is None and e["records_used"] == 0
               for e in audit["village-clinic"])
    # the model each hospital received in round r is the model every other hospital received
    assert len({e["global_model_sha256"] for e in (audit[n][1] for n in audit)}) == 1
