"""The architecture is a contract, not a picture: `lint-imports` checks the layers in pyproject.toml
(the data flow, top imports bottom only), that the hospital and coordinator sides never import each other,
and that the layers below the Flower-facing ones stay Flower-free. docs/architecture.md draws them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_the_import_contracts_hold():
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert linter, "lint-imports is missing: install the test extra (scripts/setup.sh --test)"
    proc = subprocess.run([linter, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.stdout.count("KEPT") == 4, proc.stdout


def test_nothing_installs_top_level_server_or_clients_packages():
    """server/ and clients/ are the deployable apps (entry point, Dockerfile, entrypoint, deploy script),
    shipped in the FAB; the wheel carries only `fedhealth`."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["fedhealth"]
    for unit in ("server", "clients"):
        present = {p.name for p in (ROOT / unit).iterdir()}
        assert {"app.py", "Dockerfile", "entrypoint.sh", "deploy.sh"} <= present, (unit, present)
        assert "__init__.py" not in present, f"{unit}/ must not be an importable package of its own"
