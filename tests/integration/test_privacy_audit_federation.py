"""`fedhealth audit-privacy` on real Flower federations: membership inference clearly above chance on the
overfitting study without DP, near chance on the same study at epsilon 3. What the command refuses:
tests/unit/test_privacy_audit.py."""

import json
from pathlib import Path

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.experiments.privacy_audit import AUDIT_FILE
from fedhealth.runs import rundir
from tests.support import ROOT

NO_REFERENCES = ["references.pooled=false", "references.local_only=false"]  # the audit needs neither


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
