"""docs/deployment.md, followed as a hospital's IT would: the fenced bash blocks of its numbered sections, in
order, in a fresh folder laid out like a checkout, on the ports and folders the page names.

Only what the page itself says to change is changed: the reviewed hash where it says "replace HASH_REVIEWED",
and the other hospitals' SuperNodes where it says "the same for hungary (--port 9095) and va-long-beach (--port
9096), replacing cleveland throughout". A command the page says to run in a terminal of its own (the registry,
the SuperLink, the gateway, each SuperNode) is started in the background and waited for; every other block runs
in one bash (`set -euo pipefail`) whose exported variables carry over to the next block, as in one terminal.
Not run: section 1 (the checkout's .venv is used), the continue-after-a-stop block of section 6 (this study does
not stop), and section 9's image build and `docker compose` lines, which tests/integration/test_containers.py
runs (with podman-compose where no Docker engine runs). Section 8, the demo, is its own test. Every process
started is stopped at the end, in the order of section 10.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedhealth.deployment.processes import (
    Service,
    port_open,
    runtime_mark,
    wait_until,
)
from tests.support import ROOT

DOC = ROOT / "docs" / "deployment.md"
PORTS = range(9092, 9098)  # the page's ports: SuperLink, gateway, three SuperNodes, registry
OTHER_HOSPITALS = {"hungary": "9095", "va-long-beach": "9096"}  # "the same for hungary (--port 9095) and ..."


def sections(text: str) -> dict[str, list[str]]:
    """`## N. Title` -> the fenced bash blocks under it (its ### subsections included), in order."""
    found: dict[str, list[str]] = {}
    current = None
    for part in re.split(r"(?m)^(## .*)$", text):
        if part.startswith("## "):
            current = part[3:].strip()
            found[current] = []
        elif current is not None:
            found[current] = re.findall(r"(?ms)^```bash\n(.*?)^```", part)
    return found


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def runs_until_stopped(command: str) -> bool:
    """The page's long-running commands: each "in a terminal (or service) of its own"."""
    return bool(re.search(r"server/deploy\.sh (registry|start|gateway)\b|clients/deploy\.sh", command))


class Reader:
    """One operator's (and three hospitals') terminals in `home`: blocks in one shell's environment, services in
    the background."""

    def __init__(self, home: Path) -> None:
        self.home = home
        # the checkout's own code, as its .venv would load it from an editable install of this clone
        self.env = {**os.environ, "PYTHONPATH": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
        self.env.pop("FLWR_HOME", None)
        self.services: list[Service] = []
        self.transcript: list[str] = []

    def block(self, script: str, timeout: float = 600) -> str:
        """Run `script` as the next commands typed in the same terminal; its exports carry over."""
        env_file = self.home / ".reader-env"
        wrapped = f"set -euo pipefail\n{script}\nenv -0 > {env_file}\n"
        done = subprocess.run(["bash", "-c", wrapped], cwd=self.home, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        self.transcript.append(f"$ {script}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        assert done.returncode == 0, f"this block of docs/deployment.md failed (exit {done.returncode}):\n" \
                                     f"{script}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}\n{self.logs()}"
        self.env = dict(item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
        return done.stdout

    def service(self, name: str, command: str, ready: str | int, port: int | None = None) -> Service:
        """Start `command` as in its own terminal; wait until its log shows `ready` (or port `ready` is open)."""
        service = Service(name, ["bash", "-c", command], self.home / "terminals" / f"{name}.log", env=self.env,
                          cwd=self.home, marks=[runtime_mark(port)] if port else [])
        self.services.append(service.start())
        if isinstance(ready, int):
            wait_until(lambda: port_open("127.0.0.1", ready) or not service.running(), 120, 0.2, f"{name} up")
        else:
            wait_until(lambda: ready in service.output() or not service.running(), 180, 0.5, f"{name} up")
        assert service.running(), f"{name} stopped:\n{command}\n{service.output()[-4000:]}"
        return service

    def logs(self) -> str:
        return "\n".join(f"----- {s.name} -----\n{s.output()[-2500:]}" for s in self.services)

    def stop(self, *names: str) -> None:
        for service in [s for s in self.services if s.name in names]:
            service.stop()


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    busy = [p for p in PORTS if port_open("127.0.0.1", p)]
    if busy:
        pytest.skip(f"docs/deployment.md names ports {PORTS.start}-{PORTS.stop - 1}; in use here: {busy}")
    home = tmp_path / "checkout"  # a clone of the repository, as the page assumes: its files, and the .venv
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (home / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, home / name)
    (home / ".venv").symlink_to(ROOT / ".venv")  # scripts/setup.sh made it (section 1)
    reader = Reader(home)
    try:
        yield reader
    finally:
        for service in reversed(reader.services):
            service.stop()
        left = {p for s in reader.services for p in s.processes()}
        assert not left, f"processes left running: {sorted(left)}"


def test_the_deployment_walkthrough_runs_in_order_as_written(reader: Reader) -> None:
    page = sections(DOC.read_text(encoding="utf-8"))
    by_number = {title.split(".")[0]: blocks for title, blocks in page.items() if title[0].isdigit()}
    assert set(by_number) >= {"2", "3", "4", "5", "6", "7", "8", "9", "10"}, sorted(page)
    started = time.perf_counter()

    for block in by_number["2"]:  # the study CA; each hospital's own keys; the operator files the .pub files
        reader.block(block)
    for command in commands("\n".join(by_number["3"])):  # registry, SuperLink, gateway: each its own terminal
        assert runs_until_stopped(command), command
        if "deploy.sh registry" in command:
            reader.service("registry", command, 9097)
        elif "deploy.sh start" in command:
            reader.service("superlink", command, "Uvicorn running on https://127.0.0.1:9092", port=9092)
        else:
            reader.service("gateway", command, 9093)
    assert "--host 127.0.0.1" in reader.services[1].cmd[-1] and "--host 127.0.0.1" in reader.services[2].cmd[-1]
    registered = reader.block("\n".join(by_number["4"]))
    assert registered.count("registered successfully as ") == 3, registered

    section5 = by_number["5"]
    for block in section5:
        if runs_until_stopped(block):
            cleveland = " ".join(commands(block))
            reader.service("cleveland", cleveland, "SuperNode ID:", port=9094)
            for name, port in OTHER_HOSPITALS.items():  # "... replacing cleveland throughout"
                reader.service(name, cleveland.replace("cleveland", name).replace("9094", port), "SuperNode ID:",
                               port=int(port))
            continue
        if "HASH_REVIEWED" in block:  # "replace HASH_REVIEWED with the full sha256 that `app review` printed"
            fab = re.search(r"app build --out (\S+)", block)
            assert fab, block
            first, rest = block.split("for h in cleveland", 1)
            reviewed = reader.block(first)
            sha = hashlib.sha256((reader.home / fab.group(1)).read_bytes()).hexdigest()
            assert sha[:8] in reviewed, reviewed  # the hash the reviewer read
            block = "for h in cleveland" + rest.replace("HASH_REVIEWED", sha)
        reader.block(block)
    for name in ("cleveland", "hungary", "va-long-beach"):
        assert f"FLWR_HOME: {reader.home}/sites/{name}/flwr-home" in \
            [s for s in reader.services if s.name == name][0].output()

    run_blocks = [b for b in by_number["6"] if "resume=true" not in b]  # the study does not stop: no resume
    for block in run_blocks:
        reader.block(block, timeout=900)
    run_dir = reader.home / "deploy" / "runs" / "study-1"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "completed", state

    for block in by_number["7"]:  # status, report, the audit log verified
        reader.block(block)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [h["name"] for h in summary["hospitals"]] == ["cleveland", "hungary", "va-long-beach"]
    assert all(h["auroc"]["federated"] is not None for h in summary["hospitals"]), summary
    assert "A deployment: the server held no patient record" in (run_dir / "report.html").read_text()

    for block in by_number["9"]:  # the compose layout only: test_containers.py builds the images and runs compose
        reader.block("\n".join(c for c in commands(block)
                                if not c.startswith(("docker ", "bash scripts/build_images.sh"))))
    assert (reader.home / "deploy-compose" / "pki" / "ca" / "ca.crt").is_file()

    for block in by_number["10"]:  # revoke va-long-beach's key while the SuperLink runs
        reader.block(block)
    assert not (reader.home / "deploy" / "pki" / "hospitals" / "va-long-beach").exists()
    assert list((reader.home / "deploy" / "pki" / "revoked").glob("va-long-beach-*/supernode_auth.pub"))
    # the stop order of section 10: SuperNodes, then the gateway, the SuperLink, the registry
    reader.stop("cleveland", "hungary", "va-long-beach")
    reader.stop("gateway")
    reader.stop("superlink")
    reader.stop("registry")
    print(f"\n[docs] docs/deployment.md sections 2-7, 9 and 10 followed in {time.perf_counter() - started:.0f} s")


def test_the_one_host_demo_runs_as_written(reader: Reader) -> None:
    """Section 8: the one command, in a fresh checkout; it ends with one JSON line and exit 0."""
    (block,) = sections(DOC.read_text(encoding="utf-8"))["8. The whole thing on one host"]
    started = time.perf_counter()
    out = reader.block(block, timeout=900)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["scenario"] == "demo" and result["state"] == "completed", result
    assert all(a["ok"] and a["entries"] == 1 for a in result["audit"].values()), result["audit"]
    for name in ("cleveland", "hungary", "va-long-beach"):
        assert (reader.home / "deploy-demo" / "hospitals" / name / "flwr-home").is_dir()
    print(f"\n[docs] the demo of section 8 took {time.perf_counter() - started:.0f} s")
