"""Signals to `fedhealth simulate` run as a real process, during round 1 of the smoke study, on both of Flower's
simulation backends that fedhealth uses: Ray's (`federation.backend = "ray"`) and the in-process one.

SIGINT and SIGTERM: the process exits within 10 s with code 130, the run directory says `interrupted`, every
process it had started (Ray's services, agents and the hospitals' workers) is gone, and nothing of its Ray
session is left. After SIGINT, `--resume` finishes with exactly the model of an uninterrupted run. SIGKILL
cannot be handled: what the driver started must still be gone within 10 s (Ray's own PR_SET_PDEATHSIG and
fedhealth's reaper), and the run reads as interrupted.

The processes are read from /proc here, independently of the code under test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedhealth.runs import rundir
from tests.support import ROOT, SMOKE, federate, run_cli, smoke

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")

STOP_WITHIN = 10.0  # seconds from the signal to the exit, and to the last process of the run gone
STARTUP = 240.0  # Ray's start and the first round's imports, on a loaded 2-core machine


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) from /proc/PID/stat; None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(root: int) -> dict[int, int]:
    """Every living descendant of `root`: pid -> start time (a reused pid is then not mistaken for it)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[0] != "Z":
            children.setdefault(st[1], []).append(pid)
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            st = _stat(child)
            if st is not None:
                found[child] = st[2]
            todo.append(child)
    return found


def _alive(processes: dict[int, int]) -> dict[int, str]:
    out = {}
    for pid, started in processes.items():
        st = _stat(pid)
        if st is not None and st[0] != "Z" and st[2] == started:
            out[pid] = " ".join(_argv(pid))[:100]
    return out


def _ray_session_processes(driver: int) -> dict[int, str]:
    """Processes anywhere whose command line names the Ray session of `driver` (`.../session_<time>_<pid>/`):
    gcs_server, raylet and Ray's Python services."""
    marker = re.compile(rf"session_[0-9_-]+_{driver}(/|$)")
    return {pid: " ".join(argv)[:100] for pid in _pids()
            if (argv := _argv(pid)) and any(marker.search(a) for a in argv)}


ON_RAY = ("federation.backend=ray",)
# In-process, a round of the smoke study is over in well under a second: longer local training leaves round 1
# running long enough to be caught in it (each hospital's task still ends within STOP_WITHIN).
IN_PROCESS = ("federation.backend=in-process", "training.local_epochs=40")


def _start(out: Path, overrides: tuple[str, ...] = ON_RAY) -> tuple[subprocess.Popen, Path]:
    """`fedhealth simulate` on the smoke study as a user runs it, in a session of its own (a signal meant for
    it never reaches pytest); output to a file, so a full pipe never stalls it."""
    log = out.parent / f"{out.name}.log"
    sets = [a for o in overrides for a in ("--set", o)]
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "fedhealth.cli", "simulate", "--config", str(SMOKE), "--out",
                                 str(out), *sets], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def _during_round_one_in_process(proc: subprocess.Popen, out: Path, log: Path) -> dict[int, int]:
    """Wait until the first hospital of round 1 has sent its update (its audit trail has a line) while the round
    is not recorded; return every process the driver has started by then (none is expected)."""
    deadline = time.monotonic() + STARTUP
    audit = out / rundir.AUDIT_DIR
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        if audit.is_dir() and any(f.stat().st_size for f in audit.glob("*.jsonl")):
            assert rundir.last_completed_round(out) == 0, "round 1 ended before the test could stop it"
            return _descendants(proc.pid)
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no hospital finished a task of round 1 within {STARTUP:.0f} s:\n{log.read_text()}")


def _during_round_one(proc: subprocess.Popen, out: Path, log: Path) -> dict[int, int]:
    """Wait until a simulated hospital is running a task of round 1 (its Ray worker is named
    `ray::ClientAppActor.run` then); return every process the driver has started by then."""
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        running = _descendants(proc.pid)
        if any((_argv(p) or [""])[0] == "ray::ClientAppActor.run" for p in running):
            assert rundir.last_completed_round(out) == 0
            return running
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no hospital started round 1 within {STARTUP:.0f} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen, signum: int, log: Path) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{signal.Signals(signum).name}: still running 60 s later:\n{log.read_text()}")
    return code, time.monotonic() - started


def _nothing_left(proc: subprocess.Popen, before: dict[int, int], within: float) -> None:
    deadline = time.monotonic() + within
    while (_alive(before) or _ray_session_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(before), f"still alive after the driver exited: {_alive(before)}"
    assert not _ray_session_processes(proc.pid), _ray_session_processes(proc.pid)


def _assert_interrupted(out: Path, name: str, log: Path) -> None:
    state = rundir.read_state(out)
    assert state["status"] == "interrupted" and state["stopped_by"] == name, state
    assert state["last_round"] == 0 and rundir.last_completed_round(out) == 0, state  # round 1 never recorded
    assert state["server"]["released_at"]  # it let go of the run before it exited
    text = log.read_text()
    assert f"interrupted: {out}: stopped by {name} during round 1; round 0 of 2 completed" in text, text
    assert f"continue with: fedhealth simulate --resume {out}" in text, text
    assert "Traceback" not in text, text
    assert rundir.read_jsonl(out / rundir.ROUNDS_FILE) == []  # a round cut short is not recorded at all


def _final_model(tmp_path_factory, overrides: tuple[str, ...]) -> list[np.ndarray]:
    run = federate(smoke(*overrides), tmp_path_factory.mktemp("uninterrupted") / "run")
    weights, _ = rundir.load_weights(rundir.checkpoint_path(run, 2))
    return weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[np.ndarray]:
    """The smoke study's final global model, run without interruption (in this process)."""
    return _final_model(tmp_path_factory, ON_RAY)


def _resume_ends_with(out: Path, want: list[np.ndarray]) -> None:
    resumed = run_cli("simulate", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    state = rundir.read_state(out)
    assert state["status"] == "completed" and state["resumes"][0]["previous"].startswith("interrupted by SIGINT")
    final, _ = rundir.load_weights(rundir.checkpoint_path(out, 2))
    model, _ = rundir.load_weights(out / rundir.MODEL_FILE)
    assert len(final) == len(want)
    for got, expected, saved in zip(final, want, model, strict=True):
        assert np.array_equal(got, expected) and np.array_equal(saved, expected)
    assert [r["round"] for r in rundir.read_jsonl(out / rundir.ROUNDS_FILE)] == [1, 2]


def test_sigint_in_round_one_stops_cleanly_and_resume_ends_with_the_uninterrupted_model(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc, log = _start(out)
    before = _during_round_one(proc, out, log)
    assert any("raylet" in " ".join(_argv(p)) for p in before) and _ray_session_processes(proc.pid)

    code, seconds = _stop(proc, signal.SIGINT, log)
    assert code == 130, log.read_text()
    assert seconds < STOP_WITHIN, f"exit {seconds:.1f} s after SIGINT:\n{log.read_text()}"
    _nothing_left(proc, before, within=0.5)
    _assert_interrupted(out, "SIGINT", log)
    status = run_cli("status", str(out))
    assert status.returncode == 1 and "interrupted by SIGINT during round 1" in status.stdout, status.stdout

    _resume_ends_with(out, uninterrupted)


def test_sigint_in_process_stops_after_the_current_task_and_resume_ends_with_the_uninterrupted_model(
        tmp_path, tmp_path_factory):
    """In-process hospitals are threads: nothing is killed; the server stops at its next exchange and the task
    running ends on its own. No process was started, none is left, and the resumed run is the uninterrupted one."""
    want = _final_model(tmp_path_factory, IN_PROCESS)
    out = tmp_path / "run"
    proc, log = _start(out, IN_PROCESS)
    before = _during_round_one_in_process(proc, out, log)
    assert not _ray_session_processes(proc.pid), "an in-process federation started Ray"
    code, seconds = _stop(proc, signal.SIGINT, log)
    assert code == 130, log.read_text()
    assert seconds < STOP_WITHIN, f"exit {seconds:.1f} s after SIGINT:\n{log.read_text()}"
    _nothing_left(proc, before, within=0.5)
    _assert_interrupted(out, "SIGINT", log)
    _resume_ends_with(out, want)


def test_sigterm_in_round_one_stops_cleanly(tmp_path):
    out = tmp_path / "run"
    proc, log = _start(out)
    before = _during_round_one(proc, out, log)
    code, seconds = _stop(proc, signal.SIGTERM, log)
    assert code == 130 and seconds < STOP_WITHIN, (code, seconds, log.read_text())
    _nothing_left(proc, before, within=0.5)
    _assert_interrupted(out, "SIGTERM", log)


def test_after_sigkill_nothing_the_driver_started_survives(tmp_path):
    """SIGKILL cannot be caught: Ray's services die with the driver (PR_SET_PDEATHSIG) and fedhealth's reaper
    kills the rest (raylet's agents, the workers); the state says running, its process gone: interrupted."""
    out = tmp_path / "run"
    proc, log = _start(out)
    before = _during_round_one(proc, out, log)
    code, _ = _stop(proc, signal.SIGKILL, log)
    assert code == -signal.SIGKILL
    _nothing_left(proc, before, within=STOP_WITHIN)
    state = rundir.read_state(out)
    assert state["status"] == "running" and rundir.interrupted(state), state
    assert rundir.describe_state(out).startswith(f"interrupted: the state says running but its server process "
                                                 f"{proc.pid} is gone")
