"""Damaged run directories, audit logs and ledgers, through `status`, `report`, `simulate --resume` and `audit
verify`, as a user meets them after a crash, a full disk or an edit (issue 16, items 7 and 9).

Every case goes through the harness (tests/hostile.py): exit code, a message naming the file (and line), no
traceback, no planted patient value, nothing changed outside what the command may write. A refusal may
write nothing at all (`allowed=()`). Where a line of a file is damaged, the damage holds a planted value, so
a message that quoted the file would show it.

The run directory is built once for the module by the writers a real run uses (`create_run_dir`, the
checkpoint writer, the JSONL appender, each hospital's `PrivacyLedger` and `AuditLog`, and `finish`, which
trains the references and writes the summary from the verified ledgers), with the rows a one-round
record-DP smoke run writes; the federation itself is left out, because tests/unit starts no Flower process.
Each case copies it and damages the copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedhealth.runs import rundir
from tests.hostile import SENTINELS, Hostile, check
from tests.support import RECORD_DP, SMOKE

RUN = "run"  # the run directory's name inside each case's workspace
BASE: dict[str, Path] = {}  # filled by the module fixture: "run", "keys"


def _rows(cfg) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl and rounds.jsonl as round 1 of a record-DP smoke run writes them."""
    metrics = [{"round": 1, "hospital_index": i, "hospital": h.name, "tier": h.tier, "region": h.region,
                "auroc": 0.7 + 0.05 * i, "auprc": 0.4, "accuracy": 0.8, "brier": 0.15, "loss": 0.45, "n": 100,
                "trained": True, "aggregated": True, "n_train": None, "train_loss": None, "train_seconds": None,
                "epsilon": 3.0 + i, "declined": None, "secagg_clipped": 0} for i, h in enumerate(cfg.hospitals)]
    rounds = [{"round": 1, "status": "aggregated", "aggregated": True, "failure": None, "secure_aggregation": True,
               "hospitals_aggregated": [0, 1, 2], "hospitals_trained": [0, 1, 2], "rejected": [], "declined": [],
               "fit_failures": [], "hospitals_evaluated": [0, 1, 2], "evaluate_failures": [], "auroc_mean": 0.75,
               "auroc_weighted": 0.74, "seconds": 1.0,
               "secagg_stage_seconds": {"setup": 0.5, "share_keys": 0.1, "collect_masked_vectors": 0.3,
                                        "unmask": 0.1}}]
    return metrics, rounds


def _audit_fields(r: int, hospital: str) -> dict:
    return {"round": r, "run_id": "1", "hospital": hospital, "global_model_sha256": "a" * 64,
            "update_sha256": "b" * 64, "records_used": 300, "epsilon_charged": 0.5, "epsilon_total": 0.5 * r,
            "delta": 1e-5, "policy_checks": {"secure_aggregation": True}, "decision": "sent"}


@pytest.fixture(scope="module", autouse=True)
def base_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    from fedhealth.data.study_file import load_config
    from fedhealth.experiments.simulate import finish
    from fedhealth.model.initial import initial_weights
    from fedhealth.privacy.audit import AuditLog
    from fedhealth.privacy.ledger import PrivacyLedger
    from fedhealth.security.certs import init_hospital_keys

    root = tmp_path_factory.mktemp("base")
    cfg = load_config(SMOKE, [*RECORD_DP, "federation.rounds=1", "references.non_private_federation=false"])
    run = rundir.create_run_dir(cfg, root / RUN)
    rundir.save_weights(rundir.checkpoint_path(run, 1), initial_weights(cfg))
    metrics, rounds = _rows(cfg)
    rundir.append_jsonl(run / rundir.METRICS_FILE, metrics)
    rundir.append_jsonl(run / rundir.ROUNDS_FILE, rounds)
    for i, h in enumerate(cfg.hospitals):
        PrivacyLedger(run / rundir.PRIVACY_DIR / f"{h.name}.json", h.name, cfg.epsilon_cap(i),
                      cfg.privacy_delta()).charge(1, 1.0, 0.05, 40 + 10 * i, 1.0,
                                                  study=f"{cfg.name}:{cfg.fingerprint()}", release=f"r{i}")
        AuditLog(run / rundir.AUDIT_DIR / f"{h.name}.jsonl").append(**_audit_fields(1, h.name),
                                                                    study=f"{cfg.name}:{cfg.fingerprint()}")
    finish(cfg, run, {"federation": 0.0})
    keys = init_hospital_keys(root / "keys", "city-tertiary")
    signed = AuditLog(root / "signed.jsonl", keys.audit_private_key)
    for r in (1, 2, 2, 3):  # round 2 re-sent after a resume: recorded as a retry of its entry
        signed.append(**_audit_fields(r, "city-tertiary"), study="smoke:0123456789abcdef")
    BASE.update(run=run, signed=root / "signed.jsonl", pub=keys.audit_public_key)


# ---- damage, applied to a copy in the case's workspace ------------------------------------------------

def _copy(ws: Path) -> Path:
    return Path(shutil.copytree(BASE["run"], ws / RUN))


def _state(ws: Path, **fields) -> None:
    path = ws / RUN / rundir.STATE_FILE
    state = json.loads(path.read_text())
    state.update(fields)
    path.write_text(json.dumps(state))


def _failed(ws: Path) -> Path:
    """A copy whose run stopped (failed) after round 1: `--resume` would continue it."""
    run = _copy(ws)
    server = json.loads((ws / RUN / rundir.STATE_FILE).read_text()).get("server") or {}
    # the process that failed let go of the run (as `fedhealth simulate` does when it records a failure)
    _state(ws, status="failed", error="RuntimeError: the server host went down", last_round=1,
           server={**server, "released_at": "2026-12-01T00:00:00Z"})
    return run


def damage(*steps):
    def setup(ws: Path) -> None:
        for step in steps:
            step(ws)
    return setup


def write(name: str, text: str):
    return lambda ws: (ws / RUN / name).write_text(text)


def cut(name: str, keep: int):
    def step(ws: Path) -> None:
        path = ws / RUN / name
        path.write_bytes(path.read_bytes()[:keep])
    return step


def append(name: str, text: str):
    def step(ws: Path) -> None:
        with (ws / RUN / name).open("a") as f:
            f.write(text)
    return step


def replace_line(name: str, line: int, text: str):
    def step(ws: Path) -> None:
        path = ws / RUN / name
        lines = path.read_text().splitlines(keepends=True)
        lines[line - 1] = text + "\n"
        path.write_text("".join(lines))
    return step


def forge_epsilon(hospital: str, epsilon: float):
    def step(ws: Path) -> None:
        path = ws / RUN / rundir.PRIVACY_DIR / f"{hospital}.json"
        data = json.loads(path.read_text())
        data["entries"][-1]["epsilon"] = epsilon
        path.write_text(json.dumps(data))
    return step


def signed_log(edit=None):
    def setup(ws: Path) -> None:
        log = Path(shutil.copy(BASE["signed"], ws / "audit.jsonl"))
        shutil.copy(BASE["pub"], ws / "audit_signing.pub")
        if edit is not None:
            edit(log)
    return setup


def _run(ws: Path) -> str:
    return str(ws / RUN)


def no_resume_hint(ws: Path, output: str) -> None:
    """The refusal must not suggest the command that just failed (`--resume` meeting the same file again)."""
    assert "can be resumed with" not in output and "then `fedhealth simulate --resume`" not in output, output


def report_shows_refused(ws: Path, output: str) -> None:
    html = (ws / RUN / rundir.REPORT_FILE).read_text()
    assert "refused ledger: no ε reported" in html
    assert "0.0123" not in html and "0.01<" not in html


def _resume(ws: Path) -> list[str]:
    return ["simulate", "--resume", _run(ws)]


GARBAGE = f'{{"round": 1, "hospital": "{SENTINELS[2]}", "age": {SENTINELS[0]}, '  # a damaged line, a value in it

CASES = [
    # -- fedhealth status ------------------------------------------------------------------------------------
    Hostile("status-state-holds-an-array", lambda ws: ["status", _run(ws)], 2, ("state.json", "array", "restore"),
            setup=damage(_copy, write(rundir.STATE_FILE, "[]")), allowed=()),
    Hostile("status-state-truncated", lambda ws: ["status", _run(ws)], 2,
            ("state.json", "not valid JSON", "line", "column"), setup=damage(_copy, cut(rundir.STATE_FILE, 40)),
            allowed=()),
    Hostile("status-state-wrong-types", lambda ws: ["status", _run(ws)], 2, ("state.json", "last_round"),
            setup=damage(_copy, lambda ws: _state(ws, last_round="one", status=["completed"])), allowed=()),
    Hostile("status-stray-checkpoint-name", lambda ws: ["status", _run(ws)], 0, ("completed", "round 1 of 1"),
            setup=damage(_copy, write("checkpoints/round_abc.npz", "not a checkpoint")), allowed=()),
    Hostile("status-state-not-utf8", lambda ws: ["status", _run(ws)], 2, ("state.json", "not UTF-8"),
            setup=damage(_copy, lambda ws: (ws / RUN / rundir.STATE_FILE).write_bytes(b'{"status": "\xe9"}')),
            allowed=()),
    # -- fedhealth report ------------------------------------------------------------------------------------
    Hostile("report-rounds-last-line-cut-short", lambda ws: ["report", _run(ws)], 0,
            ("rounds.jsonl", "line 2 skipped", "incomplete last line"), setup=damage(_copy, append(
                rundir.ROUNDS_FILE, GARBAGE)), allowed=(RUN,), subprocess=True),  # the warning: a real process
    Hostile("report-metrics-damaged-middle-line", lambda ws: ["report", _run(ws)], 2,
            ("metrics.jsonl", "line 1", "not valid JSON", "cannot use this file"),
            setup=damage(_copy, replace_line(rundir.METRICS_FILE, 1, GARBAGE)), allowed=()),
    Hostile("report-metrics-line-not-an-object", lambda ws: ["report", _run(ws)], 2,
            ("metrics.jsonl", "line 2", "array, not an object"),
            setup=damage(_copy, replace_line(rundir.METRICS_FILE, 2, f"[{SENTINELS[0]}]")), allowed=()),
    Hostile("report-summary-truncated", lambda ws: ["report", _run(ws)], 2,
            ("summary.json", "not valid JSON", "line", "restored"), setup=damage(_copy, cut(rundir.SUMMARY_FILE, 200)),
            allowed=()),
    Hostile("report-summary-holds-an-array", lambda ws: ["report", _run(ws)], 2, ("summary.json", "array"),
            setup=damage(_copy, write(rundir.SUMMARY_FILE, "[1, 2]")), allowed=()),
    Hostile("report-summary-nested-too-deeply", lambda ws: ["report", _run(ws)], 2,
            ("summary.json", "nested too deeply"), setup=damage(_copy, write(rundir.SUMMARY_FILE, "[" * 200_000)),
            allowed=()),
    Hostile("report-ledger-forged-after-the-run", lambda ws: ["report", _run(ws)], 0, ("report:",),
            setup=damage(_copy, forge_epsilon("city-tertiary", 0.0123)), allowed=(RUN,),
            extra=report_shows_refused),
    # -- fedhealth simulate --resume (refused before a federation starts) -------------------------------------
    Hostile("resume-checkpoint-damaged", _resume, 2,
            ("checkpoints/round_0001.npz", "not a readable weights file", "cannot continue", "move it out"),
            setup=damage(_failed, cut("checkpoints/round_0001.npz", 100)), allowed=(), extra=no_resume_hint),
    Hostile("resume-checkpoint-empty", _resume, 2, ("round_0001.npz", "cannot continue"),
            setup=damage(_failed, write("checkpoints/round_0001.npz", "")), allowed=(), extra=no_resume_hint),
    Hostile("resume-state-truncated", _resume, 2,
            ("state.json", "not valid JSON", "nor `fedhealth simulate --resume` can use"),
            setup=damage(_failed, cut(rundir.STATE_FILE, 30)), allowed=(), extra=no_resume_hint),
    Hostile("resume-rounds-damaged-middle-line", _resume, 2, ("rounds.jsonl", "line 1", "cannot use this file"),
            setup=damage(_failed, replace_line(rundir.ROUNDS_FILE, 1, GARBAGE),
                         append(rundir.ROUNDS_FILE, '{"round": 2}\n')), allowed=(), extra=no_resume_hint),
    Hostile("resume-rounds-row-without-a-round", _resume, 2, ("rounds.jsonl", "row 1", "integer `round`"),
            setup=damage(_failed, replace_line(rundir.ROUNDS_FILE, 1, f'{{"round": "{SENTINELS[2]}"}}')),
            allowed=(), extra=no_resume_hint),
    Hostile("resume-metrics-not-utf8", _resume, 2, ("metrics.jsonl", "not UTF-8"),
            setup=damage(_failed, lambda ws: (ws / RUN / rundir.METRICS_FILE).write_bytes(b"\xff\xfe" * 8)),
            allowed=(), extra=no_resume_hint),
    Hostile("resume-a-file-not-a-run", lambda ws: ["simulate", "--resume", str(ws / "afile")], 2,
            ("afile", "not a fedhealth run directory"), setup=lambda ws: (ws / "afile").write_text("x"), allowed=()),
    # -- fedhealth simulate --out (a file) ---------------------------------------------------------------------
    Hostile("simulate-out-names-a-file", lambda ws: ["simulate", "-c", str(SMOKE), "--out", str(ws / "afile")], 2,
            ("afile", "not a directory", "--out"), setup=lambda ws: (ws / "afile").write_text("x"), allowed=()),
    # -- fedhealth audit verify ----------------------------------------------------------------------------------
    Hostile("audit-verify-deeply-nested-line", lambda ws: ["audit", "verify", str(ws / "audit.jsonl")], 1,
            ("line 5", "nested too deeply"), setup=signed_log(lambda log: log.write_text(
                log.read_text() + "[" * 200_000 + "]" * 200_000 + "\n")), allowed=()),
    Hostile("audit-verify-emptied-signed-log-with-key",
            lambda ws: ["audit", "verify", str(ws / "audit.jsonl"), "--public-key", str(ws / "audit_signing.pub")],
            1, ("audit.jsonl", "holds no entries"), setup=signed_log(lambda log: log.write_text("")), allowed=()),
    Hostile("audit-verify-last-line-cut-short",
            lambda ws: ["audit", "verify", str(ws / "audit.jsonl"), "--public-key", str(ws / "audit_signing.pub")],
            0, ("warning", "line 4", "skipped", "incomplete last line", "2 entries (1 more line"),
            setup=signed_log(lambda log: log.write_bytes(log.read_bytes()[:-50])), allowed=()),
    Hostile("audit-verify-a-retried-round",
            lambda ws: ["audit", "verify", str(ws / "audit.jsonl"), "--public-key", str(ws / "audit_signing.pub"),
                        "--expected-entries", "3"],
            0, ("3 entries", "1 more line", "retry", "signatures by"), setup=signed_log(), allowed=()),
    Hostile("audit-verify-a-retry-turned-second-entry",
            lambda ws: ["audit", "verify", str(ws / "audit.jsonl")], 1, ("line 3", "second entry for round 2"),
            setup=signed_log(lambda log: _strip_retry(log, 3)), allowed=()),
]


def _strip_retry(log: Path, line: int) -> None:
    """An editor who removes the retry marks of a line (and re-hashes it): two entries for one round."""
    from fedhealth.privacy.audit import entry_hash

    lines = log.read_text().splitlines(keepends=True)
    entry = json.loads(lines[line - 1])
    entry.pop("attempt")
    entry.pop("retry_of")
    entry["hash"] = entry_hash(entry)
    lines[line - 1] = json.dumps(entry) + "\n"
    log.write_text("".join(lines))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_run_directory(case: Hostile, tmp_path: Path) -> None:
    check(case, tmp_path)


def test_the_base_run_is_sound(tmp_path: Path) -> None:
    """The undamaged copy passes every command the cases damage it for: the refusals come from the damage."""
    from tests.support import invoke_cli

    run = Path(shutil.copytree(BASE["run"], tmp_path / RUN))
    assert invoke_cli("status", str(run)).exit_code == 0
    assert invoke_cli("audit", "verify", str(BASE["signed"]), "--public-key", str(BASE["pub"])).exit_code == 0
    summary = json.loads((run / rundir.SUMMARY_FILE).read_text())
    assert [h["ledger"] for h in summary["privacy"]["hospitals"]] == ["accepted"] * 3
    assert all(h["epsilon"] > 0 for h in summary["privacy"]["hospitals"])
