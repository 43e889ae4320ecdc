"""`fedhealth audit-privacy`: what it refuses. Membership inference on real Flower federations:
tests/integration/test_privacy_audit_federation.py."""

import json

from fedhealth.data.study_file import load_config
from fedhealth.experiments.privacy_audit import AUDIT_FILE
from fedhealth.runs import rundir
from tests.support import ROOT, invoke_cli


def test_a_run_that_did_not_complete_is_refused(tmp_path):
    run_dir = rundir.create_run_dir(load_config(ROOT / "configs" / "smoke.toml"), tmp_path / "run")
    rundir.mark_status(run_dir, "failed", error="RuntimeError: injected")
    result = invoke_cli("audit-privacy", str(run_dir))
    assert result.exit_code == 2
    assert "failed: RuntimeError: injected" in result.output and "must be completed" in result.output
    assert not (run_dir / AUDIT_FILE).exists()
    assert invoke_cli("audit-privacy", str(tmp_path / "nowhere")).exit_code == 2


def test_a_study_on_hospitals_own_files_is_refused_with_the_reason(tmp_path):
    run_dir = rundir.create_run_dir(load_config(ROOT / "configs" / "heart-disease.toml"), tmp_path / "run")
    rundir.mark_completed(run_dir)
    result = invoke_cli("audit-privacy", str(run_dir))
    assert result.exit_code == 2
    assert "reads its hospitals from their own files" in result.output
    assert "only a simulation on generated hospitals" in result.output


def test_an_existing_audit_is_kept_unless_forced(tmp_path):
    run_dir = rundir.create_run_dir(load_config(ROOT / "configs" / "smoke.toml"), tmp_path / "run")
    rundir.mark_completed(run_dir)
    (run_dir / AUDIT_FILE).write_text('{"kept": true}\n')
    result = invoke_cli("audit-privacy", str(run_dir), "--references", "1")
    assert result.exit_code == 2 and "--force" in result.output
    assert json.loads((run_dir / AUDIT_FILE).read_text()) == {"kept": True}
    assert invoke_cli("audit-privacy", str(run_dir), "--references", "0", "--force").exit_code == 2
