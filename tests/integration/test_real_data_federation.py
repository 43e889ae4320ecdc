"""The real multi-centre example (UCI Heart Disease, four centres) runs end to end like the synthetic study."""

import json
import subprocess
import sys

import pytest

from fedhealth.runs import rundir
from tests.support import ROOT

pytestmark = pytest.mark.slow


def test_heart_disease_federation_from_four_real_files(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fedhealth.cli", "simulate", "--config", "configs/heart-disease.toml",
                           "--out", str(out), "--set", "federation.rounds=4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [h["name"] for h in summary["hospitals"]] == ["cleveland", "hungary", "switzerland", "va-long-beach"]
    assert [h["records"] for h in summary["hospitals"]] == [303, 294, 123, 200]  # every row of the files is valid
    assert "best_possible" not in summary["overall"]["auroc"]  # no known true risk in real data
    rounds = rundir.read_jsonl(out / rundir.ROUNDS_FILE)
    assert [r["status"] for r in rounds] == ["aggregated"] * 4 and all(r["secure_aggregation"] for r in rounds)
    # a logistic model on these 13 attributes separates disease well; an unlearned one sits at 0.5
    assert summary["overall"]["auroc"]["federated"] > 0.8
    assert summary["overall"]["mean_hospital_auroc"]["federated"] > 0.7
    resolved = (out / rundir.CONFIG_FILE).read_text()
    assert "data_sha256" in resolved and "[study_schema" in resolved
    assert (out / "report.html").exists()
    for h in summary["hospitals"]:
        assert (out / "audit" / f"{h['name']}.jsonl").exists()
