"""`fedhealth budget`: a hospital's spent and remaining epsilon, per study and in all, from its verified ledger."""

import json
from pathlib import Path

import pytest

from fedhealth.privacy.budget import read_budget
from fedhealth.privacy.ledger import LedgerError, PrivacyLedger, epsilon_of
from tests.support import run_cli


def _ledger(tmp_path: Path) -> Path:
    path = tmp_path / "h.json"
    ledger = PrivacyLedger(path, "h", cap=8.0, delta=1e-5)
    for r in (1, 2):
        ledger.charge(r, 1.0, 0.02, 100, 1.0, study="alpha:" + "a" * 16, release=f"{r:064x}")
    ledger.charge(1, 1.2, 0.05, 50, 1.0, study="beta:" + "b" * 16, release=f"{9:064x}")
    return path


def test_the_budget_composes_each_study_alone_and_all_of_them_together(tmp_path):
    budget = read_budget(_ledger(tmp_path))
    alpha, beta = budget.studies
    assert (alpha.study, alpha.releases, alpha.rounds) == ("alpha (aaaaaaaa)", 2, (1, 2))
    assert alpha.epsilon == pytest.approx(epsilon_of([(1.0, 0.02, 200)], 1e-5))
    assert beta.epsilon == pytest.approx(epsilon_of([(1.2, 0.05, 50)], 1e-5))
    total = epsilon_of([(1.0, 0.02, 200), (1.2, 0.05, 50)], 1e-5)
    assert budget.total["record"] == pytest.approx(total) and total < alpha.epsilon + beta.epsilon
    assert budget.remaining == pytest.approx(8.0 - total)
    assert read_budget(_ledger(tmp_path / "x"), cap=5.0).remaining == pytest.approx(5.0 - total)


def test_an_altered_ledger_gives_no_budget(tmp_path):
    path = _ledger(tmp_path)
    data = json.loads(path.read_text())
    data["entries"][0]["steps"] = 1  # someone lowers what was spent
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="altered"):
        read_budget(path)


def _cli(*args: str):
    return run_cli("budget", *args, timeout=120)


def test_the_budget_command_prints_a_table_and_json_and_fails_on_a_bad_ledger(tmp_path):
    path = _ledger(tmp_path)
    out = _cli(str(path))
    assert out.returncode == 0, out.stderr
    assert "alpha (aaaaaaaa)" in out.stdout and "all studies" in out.stdout and "left" in out.stdout
    as_json = json.loads(_cli(str(path), "--json").stdout)
    assert as_json["hospital"] == "h" and len(as_json["studies"]) == 2
    assert _cli(str(tmp_path / "absent.json")).returncode == 2
    data = json.loads(path.read_text())
    data["entries"].pop(1)
    path.write_text(json.dumps(data))
    bad = _cli(str(path))
    assert bad.returncode == 1 and "does not verify" in bad.stderr


def test_an_update_sent_without_a_charge_fails_the_audit_cross_check(tmp_path):
    from fedhealth.privacy.audit import AuditLog

    path = _ledger(tmp_path)
    log = AuditLog(tmp_path / "audit.jsonl", None)
    common = {"run_id": "1", "hospital": "h", "global_model_sha256": "0" * 64, "records_used": 10,
              "epsilon_charged": 0.0, "epsilon_total": None, "delta": 1e-5, "policy_checks": {}}
    log.append(round=1, update_sha256="1" * 64, decision="sent", **common)
    assert "every sent update is charged" in read_budget(path, audit_log=tmp_path / "audit.jsonl").audit
    log.append(round=7, update_sha256="2" * 64, decision="sent", **common)  # round 7 was never charged
    budget = read_budget(path, audit_log=tmp_path / "audit.jsonl")
    assert budget.audit == "FAILED" and "rounds [7]" in budget.problems[0]
