"""A resumed study whose config was edited and re-fingerprinted, in a real Flower federation: the coordinator's
own `--resume` check passes (the fingerprints agree), and every hospital declines the edited round itself.
The resume then re-sends nothing as a second audit entry: each hospital's trail verifies, and the declined
round is in it with the hospital's reason."""

from __future__ import annotations

import json
import re

from fedhealth.data.study_file import load_config
from fedhealth.privacy.audit import verify_audit_log
from fedhealth.privacy.terms import TERMS_REASON
from fedhealth.runs import rundir
from tests.support import RECORD_DP, smoke


def test_a_resume_that_switches_dp_off_is_declined_by_every_hospital(tmp_path, interrupted_run) -> None:
    from fedhealth import api

    cfg = smoke(*RECORD_DP, "federation.rounds=2", "references.non_private_federation=false")
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    interrupted_run(cfg, run)  # stopped after round 1: round 1 charged, checkpointed and audited
    assert rundir.last_completed_round(run) == 1
    ledgers = {h.name: (run / rundir.PRIVACY_DIR / f"{h.name}.json").read_bytes() for h in cfg.hospitals}

    # The operator's edit: DP off in the saved config, and state.json re-fingerprinted so --resume agrees.
    saved = run / rundir.CONFIG_FILE
    text = re.sub(r'(?m)^mode = "record"$', 'mode = "none"', saved.read_text())
    saved.write_text(text)
    state = json.loads((run / rundir.STATE_FILE).read_text())
    state["fingerprint"] = load_config(saved).fingerprint()
    (run / rundir.STATE_FILE).write_text(json.dumps(state))

    result = api.resume(run, report=False)  # the coordinator accepts it; no hospital does
    second = [r for r in rundir.read_jsonl(run / rundir.ROUNDS_FILE) if r["round"] == 2]
    assert len(second) == 1 and second[0]["hospitals_aggregated"] == [], second
    # Under SecAgg+ a decline tells the server only that the hospital's own checks refused: the reason is in
    # each hospital's audit trail.
    assert {d["hospital_index"] for d in second[0]["declined"]} == {0, 1, 2}, second[0]
    for h in cfg.hospitals:  # nothing charged, and each hospital's own trail says why
        assert (run / rundir.PRIVACY_DIR / f"{h.name}.json").read_bytes() == ledgers[h.name]
        log = run / rundir.AUDIT_DIR / f"{h.name}.jsonl"
        report = verify_audit_log(log, expected_entries=2)
        assert report.ok and report.retries == 0, report.problem
        last = json.loads(log.read_text().splitlines()[-1])
        assert last["round"] == 2 and last["decision"].startswith("declined: ")
        assert "cannot change its privacy terms" in last["decision"], last["decision"]
        assert TERMS_REASON not in last["decision"]  # the full detail: the terms fixed and the terms asked
    assert result.state == "completed"
