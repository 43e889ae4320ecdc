"""Where a run stands when its server process is gone, and continuing it.

A SuperLink restart kills the ServerApp process with it. The run directory must then say so (a signal is
recorded as the reason; a SIGKILL leaves a `running` state whose process is gone, read as "interrupted"),
and the same study must be able to continue from its last checkpoint, never another study, never a
completed one, never one a live process still runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.runs import rundir
from tests.support import ROOT, SMOKE, invoke_cli


def _gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _written_by(run_dir: Path, pid: int) -> None:
    """As if process `pid` had written the state: its pid, host, boot and start time."""
    state = rundir.read_state(run_dir)
    state["server"] = rundir.process_identity(pid)
    rundir.write_json(run_dir / rundir.STATE_FILE, state)


@pytest.fixture()
def cfg():
    return load_config(SMOKE)


def test_a_new_run_names_the_process_that_drives_it(tmp_path, cfg):
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    state = rundir.read_state(run)
    assert state["status"] == "running" and state["server"]["pid"] == os.getpid()
    assert not rundir.interrupted(state)
    assert rundir.describe_state(run).startswith(f"running by process {os.getpid()} on ")


def test_a_running_state_whose_process_is_gone_reads_as_interrupted(tmp_path, cfg):
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    pid = _gone_pid()
    _written_by(run, pid)
    assert rundir.interrupted(rundir.read_state(run))
    line = rundir.describe_state(run)
    assert line.startswith(f"interrupted: the state says running but its server process {pid} is gone")
    assert "round 0 of 2 completed" in line
    proc = invoke_cli("status", str(run))
    assert proc.exit_code == 1 and "interrupted" in proc.stdout, proc.stdout + proc.stderr


def test_status_exit_codes(tmp_path, cfg):
    run = rundir.create_run_dir(cfg, tmp_path / "run")  # "running" by this (live) test process
    assert invoke_cli("status", str(run)).exit_code == 3
    rundir.mark_status(run, "failed", error="RuntimeError: boom")
    failed = invoke_cli("status", str(run))
    assert failed.exit_code == 1 and "failed: RuntimeError: boom" in failed.stdout
    rundir.mark_completed(run)
    assert invoke_cli("status", str(run)).exit_code == 0
    missing = invoke_cli("status", str(tmp_path))
    assert missing.exit_code == 2 and "not a fedhealth run directory" in missing.stderr


def test_an_interrupted_run_is_reopened_for_the_same_study_only(tmp_path, cfg):
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    gone = _gone_pid()
    _written_by(run, gone)
    edited = tmp_path / "other.toml"
    edited.write_text(SMOKE.read_text().replace(f"seed = {cfg.seed}", f"seed = {cfg.seed + 1}", 1))
    other = load_config(edited)
    with pytest.raises(rundir.RunDirError, match="is not the one this directory ran"):
        rundir.reopen_run_dir(run, other)
    assert rundir.reopen_run_dir(run, cfg) == run
    state = rundir.read_state(run)
    assert state["status"] == "running" and state["server"]["pid"] == os.getpid()
    assert "error" not in state and "stopped_by" not in state
    (resumed,) = state["resumes"]
    assert resumed["after_round"] == 0 and f"process {gone} is gone" in resumed["previous"]


def test_a_run_a_live_process_still_drives_is_not_reopened(tmp_path, cfg):
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _written_by(run, live.pid)
        with pytest.raises(rundir.RunDirError, match=f"running by process {live.pid} .*stop that process"):
            rundir.reopen_run_dir(run, cfg)
    finally:
        live.kill()
        live.wait()


def test_a_completed_or_edited_run_is_not_reopened(tmp_path, cfg):
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    rundir.mark_completed(run)
    with pytest.raises(rundir.RunDirError, match="already completed"):
        rundir.reopen_run_dir(run, cfg)
    rundir.mark_status(run, "failed", error="x")
    text = (run / rundir.CONFIG_FILE).read_text()
    (run / rundir.CONFIG_FILE).write_text(text.replace(f"seed = {cfg.seed}", f"seed = {cfg.seed + 7}", 1))
    with pytest.raises(rundir.RunDirError, match="no longer matches the run that wrote it"):
        rundir.reopen_run_dir(run)


def test_an_existing_run_directory_is_refused_with_its_state_and_the_way_to_continue(tmp_path, cfg):
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    rundir.mark_status(run, "failed", error="RuntimeError: SuperLink gone")
    with pytest.raises(rundir.RunDirError) as refused:
        rundir.create_run_dir(cfg, run, resume_hint="submit again with resume=true")
    message = str(refused.value)
    assert "run directory exists and is not empty (failed: RuntimeError: SuperLink gone; round 0 of 2" in message
    assert message.endswith("submit again with resume=true")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_that_stops_the_server_is_recorded_before_flower_exits(tmp_path, signum):
    """What flwr-serverapp does on SIGTERM/SIGINT (its SuperLink stopping, `flwr stop`, or Flower giving up on
    a SuperLink that is gone): its own handler exits the process. The study's state must say why first."""
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from fedhealth.runs import rundir
        from fedhealth.data.study_file import load_config

        run = rundir.create_run_dir(load_config(Path({str(SMOKE)!r})), Path({str(run)!r}))
        signal.signal({int(signum)}, lambda *_: sys.exit(3))  # Flower's graceful exit handler, in short
        try:
            with rundir.failed_on_signal(run):
                os.kill(os.getpid(), {int(signum)})
        finally:
            print("handler restored:", signal.getsignal({int(signum)}).__name__)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # Flower's handler still ran and decided the exit
    assert "handler restored: <lambda>" in proc.stdout
    state = json.loads((run / rundir.STATE_FILE).read_text())
    name = signal.Signals(signum).name
    assert state["status"] == "failed" and state["stopped_by"] == name
    assert state["error"].startswith(f"the server process received {name} during round 1")
    assert "resume it with resume=true" in state["error"]


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_a_stopped_run_whose_process_is_still_alive_is_not_reopened(tmp_path, cfg, status):
    """`failed` or `interrupted` says nothing about the process: one that wrote it and has not let go of the run
    (still stopping, or hung after its federation failed) may still train, so `--resume` waits for it to exit."""
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    live = _sleeper()
    try:
        _written_by(run, live.pid)
        rundir.mark_status(run, status, stopped_by="SIGINT", error="RuntimeError: boom")
        assert rundir.still_driven(rundir.read_state(run))
        assert f"its process {live.pid} is still alive" in rundir.describe_state(run)
        with pytest.raises(rundir.RunDirError, match=f"still alive .*has not let go of the run; .*kill {live.pid}"):
            rundir.reopen_run_dir(run, cfg)
        proc = invoke_cli("simulate", "--resume", str(run))
        assert proc.exit_code == 2 and f"kill {live.pid}" in proc.stderr, proc.stdout + proc.stderr
        assert rundir.read_state(run)["status"] == status  # refused: the state is as the live process left it
    finally:
        live.kill()
        live.wait()
    assert rundir.reopen_run_dir(run, cfg) == run  # its process is gone: the run continues here
    assert rundir.read_state(run)["server"]["pid"] == os.getpid()


def test_a_process_that_let_go_of_its_run_does_not_block_resume(tmp_path, cfg):
    """A notebook whose `fh.simulate` failed lives on, but its federation is over: the state says so."""
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    live = _sleeper()
    try:
        _written_by(run, live.pid)
        rundir.mark_status(run, "failed", released=True, error="RuntimeError: boom")
        assert not rundir.still_driven(rundir.read_state(run))
        assert rundir.reopen_run_dir(run, cfg) == run
    finally:
        live.kill()
        live.wait()


def test_a_reused_pid_is_not_the_process_that_wrote_the_state(tmp_path, cfg):
    """The same pid with another start time (a restart, a reboot) is another process: the run's is gone."""
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    state = rundir.read_state(run)
    assert rundir.server_alive(state) is True
    if "process_start" not in state["server"]:
        pytest.skip("no /proc here: a process's start time is not recorded")
    state["server"]["process_start"] = int(state["server"]["process_start"]) - 1
    assert rundir.server_alive(state) is False and rundir.interrupted(state)


def test_an_interrupted_state_reads_as_interrupted_with_its_signal(tmp_path, cfg):
    run = rundir.create_run_dir(cfg, tmp_path / "run")
    gone = _gone_pid()
    _written_by(run, gone)
    rundir.mark_status(run, "interrupted", stopped_by="SIGTERM")
    assert rundir.describe_state(run) == "interrupted by SIGTERM during round 1; round 0 of 2 completed"
    proc = invoke_cli("status", str(run))
    assert proc.exit_code == 1 and "interrupted by SIGTERM" in proc.stdout, proc.stdout + proc.stderr
