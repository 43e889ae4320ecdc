"""`flwr run .` (Flower's own CLI, local SuperLink in simulation mode) drives the same apps."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _flower_pids() -> set[str]:
    out = subprocess.run(["pgrep", "-f", "flower-superlink|flower-superexec"], capture_output=True, text=True)
    return set(out.stdout.split())


def test_flwr_run_writes_a_complete_run_and_stops_what_it_started(tmp_path):
    before = _flower_pids()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FEDHEALTH_OUT": str(tmp_path / "run")}
    proc = subprocess.run(["bash", "scripts/flwr_run.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["status"] == "completed" and state["last_round"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["overall"]["auroc"]["federated"] > 0.7
    assert _flower_pids() <= before  # the background SuperLink was stopped


def test_flwr_run_fails_loudly_when_the_server_app_fails(tmp_path):
    """flwr run itself exits 0 when the ServerApp raises; our wrapper must not."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FEDHEALTH_OUT": str(tmp_path / "run")}
    proc = subprocess.run(["bash", "scripts/flwr_run.sh", "--run-config", "config='configs/missing.toml'"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0
    assert "did not complete" in proc.stderr
