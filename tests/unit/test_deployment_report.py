"""`fedhealth report` on a deployment's run directory: the server held no records, so there is no summary.json
from references; the report builds one from what the hospitals reported and renders the same page, minus what
needs the records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedhealth.cli import app
from fedhealth.data.study_file import load_config
from fedhealth.runs import rundir
from tests.support import ROOT

STUDY = ROOT / "configs" / "deployment" / "heart-disease.toml"
REPORTED = {  # what each hospital reported about the final model on its own test records
    "cleveland": {"auroc": 0.93, "auprc": 0.93, "accuracy": 0.76, "brier": 0.15, "n": 103, "epsilon": 2.9985},
    "hungary": {"auroc": 0.92, "auprc": 0.90, "accuracy": 0.81, "brier": 0.13, "n": 100, "epsilon": 2.9985},
    "va-long-beach": {"auroc": 0.76, "auprc": 0.90, "accuracy": 0.76, "brier": 0.17, "n": 68, "epsilon": 2.9981},
}


def _deployment_run(tmp_path: Path, status: str = "completed", reported: dict | None = None) -> Path:
    """A run directory as a deployed ServerApp leaves it (references=false): config, rounds, metrics, state."""
    cfg = load_config(STUDY)
    run_dir = rundir.create_run_dir(cfg, tmp_path / "run")
    rundir.append_jsonl(run_dir / rundir.METRICS_FILE, [
        {"round": 1, "hospital_index": i, "hospital": h.name, "tier": h.tier, "region": h.region, "trained": True,
         "aggregated": True, "n_train": None, **(reported or REPORTED)[h.name]} for i, h in enumerate(cfg.hospitals)])
    rundir.append_jsonl(run_dir / rundir.ROUNDS_FILE, [
        {"round": 1, "status": "aggregated", "aggregated": True, "failure": None, "secure_aggregation": True,
         "hospitals_aggregated": [0, 1, 2], "declined": [], "seconds": 70.0}])
    rundir.write_json(run_dir / rundir.SECAGG_FILE, {"num_shares": 3, "reconstruction_threshold": 2,
                                                     "tolerated_dropouts": 1, "quantization_range": 2**30,
                                                     "clipping_range": 8.0})
    if status == "completed":
        rundir.mark_completed(run_dir)
    else:
        rundir.mark_status(run_dir, status)
    return run_dir


def test_a_deployment_run_gets_the_report_with_what_the_hospitals_reported(tmp_path):
    run_dir = _deployment_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / rundir.SUMMARY_FILE).read_text())
    by_name = {h["name"]: h for h in summary["hospitals"]}
    assert {n: h["auroc"]["federated"] for n, h in by_name.items()} == {n: r["auroc"] for n, r in REPORTED.items()}
    assert by_name["hungary"]["n_test"] == 100 and by_name["hungary"]["n_train"] is None
    assert summary["overall"]["auroc"]["federated"] is None  # needs every record's prediction: not computable
    assert summary["overall"]["mean_hospital_auroc"]["federated"] == pytest.approx((0.93 + 0.92 + 0.76) / 3)
    # Brier score is a mean over records: the test-size-weighted mean of the hospitals' is the pooled one
    assert summary["overall"]["brier"]["federated"] == pytest.approx((0.15 * 103 + 0.13 * 100 + 0.17 * 68) / 271)
    assert "local_only" in summary["deployment"]["not_computed"] and not summary["calibration"]
    assert [round(h["epsilon"], 4) for h in summary["privacy"]["hospitals"]] == [2.9985, 2.9985, 2.9981]
    html = (run_dir / "report.html").read_text()
    assert "A deployment: the server held no patient record" in html
    assert "own test sets: <b>0.870</b>" in html
    assert "va-long-beach" in html and "Every round aggregated." in html


def test_a_hospital_that_reported_no_auroc_is_shown_undefined_with_the_reason(tmp_path):
    """A hospital whose test side holds one class evaluates the model but has no AUROC (null in metrics.jsonl):
    the deployment report says undefined and why, and the mean of hospitals is over the two others."""
    one_class = {**REPORTED, "hungary": {**REPORTED["hungary"], "auroc": None, "auprc": None}}
    run_dir = _deployment_run(tmp_path, reported=one_class)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / rundir.SUMMARY_FILE).read_text())
    hungary = {h["name"]: h for h in summary["hospitals"]}["hungary"]
    assert hungary["undefined"] == {"auroc": "the hospital reported no AUROC: its test side holds one class "
                                             "(AUROC and AUPRC need both)"}
    assert summary["overall"]["mean_hospital_auroc"]["federated"] == pytest.approx((0.93 + 0.76) / 2)
    html = (run_dir / "report.html").read_text()
    assert "undefined&dagger;" in html and "&dagger; hungary: the hospital reported no AUROC" in html


def test_a_deployment_run_that_did_not_complete_is_still_refused(tmp_path):
    run_dir = _deployment_run(tmp_path, status="failed")
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert "missing summary.json" in result.output and "see `fedhealth status`" in result.output
    assert not (run_dir / rundir.SUMMARY_FILE).exists()
