"""`fedhealth audit-privacy`: what it refuses, and membership inference on real Flower federations:
clearly above chance on the overfitting study without DP, near chance on the same study at epsilon 3."""

import json
from pathlib import Path

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.experiments.privacy_audit import AUDIT_FILE
from fedhealth.runs import rundir

ROOT = Path(__file__).resolve().parents[2]
NO_REFERENCES = ["references.pooled=false", "references.local_only=false"]  # the audit needs neither


def _cli(*args: str):
    from typer.testing import CliRunner

    from fedhealth.cli import app

    return CliRunner().invoke(app, list(args))


def test_a_run_that_did_not_complete_is_refused(tmp_path):
    run_dir = rundir.create_run_dir(load_config(ROOT / "configs" / "smoke.toml"), tmp_path / "run")
    rundir.mark_status(run_dir, "failed", error="RuntimeError: injected")
    result = _cli("audit-privacy", str(run_dir))
    assert result.exit_code == 2
    assert "failed: RuntimeError: injected" in result.output and "must be completed" in result.output
    assert not (run_dir / AUDIT_FILE).exists()
    assert _cli("audit-privacy", str(tmp_path / "nowhere")).exit_code == 2


def test_a_study_on_hospitals_own_files_is_refused_with_the_reason(tmp_path):
    run_dir = rundir.create_run_dir(load_config(ROOT / "configs" / "heart-disease.toml"), tmp_path / "run")
    rundir.mark_completed(run_dir)
    result = _cli("audit-privacy", str(run_dir))
    assert result.exit_code == 2
    assert "reads its hospitals from their own files" in result.output
    assert "only a simulation on generated hospitals" in result.output


def test_an_existing_audit_is_kept_unless_forced(tmp_path):
    run_dir = rundir.create_run_dir(load_config(ROOT / "configs" / "smoke.toml"), tmp_path / "run")
    rundir.mark_completed(run_dir)
    (run_dir / AUDIT_FILE).write_text('{"kept": true}\n')
    result = _cli("audit-privacy", str(run_dir), "--references", "1")
    assert result.exit_code == 2 and "--force" in result.output
    assert json.loads((run_dir / AUDIT_FILE).read_text()) == {"kept": True}
    assert _cli("audit-privacy", str(run_dir), "--references", "0", "--force").exit_code == 2


def _audited_run(config: str, tmp_path: Path) -> tuple[dict, dict]:
    from fedhealth.experiments.privacy_audit import audit_run
    from fedhealth.experiments.simulate import simulate

    cfg = load_config(ROOT / "configs" / config)
    run_dir = rundir.create_run_dir(cfg, tmp_path / cfg.name)
    if cfg.privacy.mode == "record":
        # The test plays the hospitals and provisions their secrets itself, so the DP noise (each hospital's
        # own, from OS entropy in a real run) is one reproducible draw rather than a new one every run.
        import hashlib

        from fedhealth.privacy.secret import secret_path

        for h in cfg.hospitals:
            path = secret_path(run_dir / rundir.PRIVACY_DIR, h.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(hashlib.sha256(f"test secret of {h.name}".encode()).digest())
            path.chmod(0o600)
    summary = simulate(cfg, run_dir)
    return audit_run(run_dir), summary


@pytest.mark.slow
def test_the_overfitting_study_leaks_membership_without_dp(tmp_path):
    audit, _ = _audited_run("overfit.toml", tmp_path)
    overall = audit["overall"]
    calibrated = overall["attacks"]["calibrated"]
    assert calibrated["ci_low"] > 0.5 and overall["leak_detected"]  # clearly above chance
    assert overall["attacks"]["loss"]["auc"] > 0.5
    assert calibrated["members"] == calibrated["non_members"] == 300  # 3 hospitals, half of 200 held out each
    assert [h["name"] for h in audit["hospitals"]] == ["north-cardiology-unit", "south-cardiology-unit",
                                                       "east-cardiology-unit"]
    assert all(h["attacks"]["calibrated"]["members"] == 100 for h in audit["hospitals"])
    assert json.loads((tmp_path / "overfit" / AUDIT_FILE).read_text())["overall"] == json.loads(
        rundir.dumps(overall))

    from fedhealth.reporting.report import build_report

    html = build_report(tmp_path / "overfit").read_text()
    assert "Membership inference audit" in html and f"{calibrated['auc']:.3f}" in html
    assert "Membership leaks measurably" in html


@pytest.mark.slow
def test_the_same_study_at_epsilon_3_is_near_chance(tmp_path):
    audit, summary = _audited_run("overfit-dp.toml", tmp_path)
    assert max(h["epsilon"] for h in summary["privacy"]["hospitals"]) <= 3.0
    assert all(h["epsilon"] is not None and h["epsilon"] <= 3.0 for h in audit["hospitals"])
    for attack in audit["overall"]["attacks"].values():
        assert attack["auc"] <= 0.55, attack
    assert audit["references"]["training"].startswith("DP-SGD")
