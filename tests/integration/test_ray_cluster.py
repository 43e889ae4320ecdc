"""A simulation on a two-node Ray cluster started on 127.0.0.1, with the commands docs/architecture.md gives.

Two `ray start` processes (a head and a second node, one CPU each) make a real two-node cluster on this
machine; `fedhealth simulate` joins it through `federation.ray_address` (Ray's own init argument, which
Flower's Ray backend passes on). The hospitals' actors must have run on both nodes (read back from the
cluster's own actor table, independently of fedhealth), the run must complete, and its model must be the
one the in-process backend gives for the same study: where a hospital runs changes nothing it computes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from fedhealth.runs import rundir
from tests.support import SMOKE, federate, run_cli, smoke

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session_members(sid: int) -> list[int]:
    """Every living process of session `sid` (what one `ray start` left running: it exits, its services stay)."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            text = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(p))
    return found


def _stop_sessions(sids: list[int]) -> None:
    """SIGTERM then SIGKILL the cluster's processes by session; never `ray stop`, which would stop every Ray
    on the machine (another test's among them)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for sid in sids:
            for pid in _session_members(sid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(_session_members(s) for s in sids) and time.monotonic() < deadline:
            time.sleep(0.2)


def _ray_start(*args: str) -> int:
    """`ray start ARGS` in a session of its own; returns the session id its services keep."""
    proc = subprocess.Popen([RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--disable-usage-stats", *args], env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return proc.pid


ACTORS = """
import collections, json, sys
import ray
from ray._private import state  # the GCS actor table; Ray's state API needs the dashboard, off here
ray.init(address=sys.argv[1], logging_level="ERROR")
alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
nodes = collections.Counter(a["Address"]["NodeID"] for a in state.actors().values()
                            if a["ActorClassName"] == "ClientAppActor")
print(json.dumps({"alive": alive, "actors_per_node": nodes}))
"""


def test_a_simulation_runs_on_a_two_node_ray_cluster_and_gives_the_in_process_model(tmp_path):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="fh-ray-", dir="/tmp")  # Ray's socket paths must stay short
    sessions: list[int] = []
    try:
        sessions.append(_ray_start("--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp))
        sessions.append(_ray_start("--address", address))
        out = tmp_path / "run"
        proc = run_cli("simulate", "--config", str(SMOKE), "--out", str(out), "--set", "federation.backend=ray",
                       "--set", f"federation.ray_address={address}", timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        seen = subprocess.run([sys.executable, "-c", ACTORS, address], env=ENV, capture_output=True, text=True,
                              timeout=300)
        assert seen.returncode == 0, seen.stderr
        facts = json.loads(seen.stdout.strip().splitlines()[-1])
        assert len(facts["alive"]) == 2, facts  # the run did not stop the cluster it joined
        assert set(facts["actors_per_node"]) == set(facts["alive"]), facts  # hospitals ran on both nodes
    finally:
        _stop_sessions(sessions)
        shutil.rmtree(temp, ignore_errors=True)
    assert rundir.read_state(out)["status"] == "completed"
    here = federate(smoke(), tmp_path / "in-process")
    a, _ = rundir.load_weights(rundir.checkpoint_path(out, 2))
    b, _ = rundir.load_weights(rundir.checkpoint_path(here, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
