"""`flwr run .` (Flower's own CLI, local SuperLink in simulation mode) drives the same apps."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow


def _flower_pids(flwr_home: Path) -> set[str]:
    """Live SuperLinks and SuperExecs running with `flwr_home` (another test's deployment has its own)."""
    out = subprocess.run(["pgrep", "-f", "flower-superlink|flower-superexec"], capture_output=True, text=True)
    found = set()
    for pid in out.stdout.split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FLWR_HOME={flwr_home}".encode() in environ:
            found.add(pid)
    return found


def test_flwr_run_writes_a_complete_run_and_stops_what_it_started(tmp_path):
    home = tmp_path / "flwr-home"
    assert not _flower_pids(home)
    env = {**os.environ, "FLWR_HOME": str(home), "FEDHEALTH_OUT": str(tmp_path / "run")}
    proc = subprocess.run(["bash", "scripts/flwr_run.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["status"] == "completed" and state["last_round"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["overall"]["auroc"]["federated"] > 0.7
    assert "Starting local SuperLink" in proc.stdout + proc.stderr  # flwr run started its local SuperLink ...
    assert not _flower_pids(home)  # ... and the wrapper stopped it and its SuperExec


def test_flwr_run_fails_loudly_when_the_server_app_fails(tmp_path):
    """flwr run itself exits 0 when the ServerApp raises; our wrapper must not."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FEDHEALTH_OUT": str(tmp_path / "run")}
    proc = subprocess.run(["bash", "scripts/flwr_run.sh", "--run-config", "config='configs/missing.toml'"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0
    assert "did not complete" in proc.stderr


def test_the_app_bundle_carries_code_and_study_configs_only(tmp_path):
    """`flwr run .` packs the project into the bundle it ships to the SuperLink. A hospital folder, a PKI or a
    run directory kept inside the project (audit logs, ledgers, policies: json, jsonl, toml, which Flower packs
    by default) must never travel with it. Built with Flower's own builder on a copy of the project."""
    import io
    import shutil
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", ".gitignore"):
        shutil.copy(ROOT / name, project / name)
    for name in ("fedhealth", "server", "clients", "configs", "scripts", "docs"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.csv"))
    planted = ["site/audit/audit.jsonl", "site/ledger/cleveland.json", "site/policy.toml", "hospital-a/schema.toml",
               "pki/pki.json", "notes.md", "compose.yaml"]
    for rel in planted:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("{}\n")

    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(project))).namelist()
    assert "fedhealth/coordinator/app.py" in names and "server/app.py" in names and "clients/app.py" in names
    assert "configs/deployment/heart-disease.toml" in names and "configs/data/heart-disease/schema.toml" in names
    outside = [n for n in names if n not in ("pyproject.toml", ".info/CONTENT")
               and not (n.endswith(".py") and n.split("/")[0] in ("fedhealth", "server", "clients"))
               and not (n.startswith("configs/") and n.endswith(".toml"))]
    assert outside == [], outside
