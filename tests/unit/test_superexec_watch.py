"""SuperExecWatch: a hospital's SuperExec that ends while its SuperNode runs is started again (the node can run
no ClientApp without it), never while the node is stopping, and a SuperExec that keeps ending stops the node
instead of being restarted for ever. Real child processes throughout."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedhealth.deployment import superexec_watch
from fedhealth.deployment.superexec_watch import SuperExecWatch, watch_flowers_superexec
from tests.support import eventually

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]



@pytest.fixture
def watch():
    made: list[SuperExecWatch] = []

    def make(**kwargs) -> SuperExecWatch:
        made.append(SuperExecWatch("cleveland", interval=0.05, grace=0.1, **kwargs))
        return made[-1]

    yield make
    for w in made:
        w.stop()
        for proc in w._procs:
            proc.kill()
            proc.wait()


def test_a_superexec_that_ends_while_the_node_runs_is_started_again_with_the_same_command(watch, caplog):
    w = watch()
    first = subprocess.Popen(SLEEPER)
    w.track(first)
    with caplog.at_level(logging.ERROR, logger="flwr"):
        first.send_signal(signal.SIGTERM)
        assert eventually(lambda: w.restarts == 1)
    (replacement,) = w._procs
    assert replacement.pid != first.pid and replacement.poll() is None
    assert replacement.args == SLEEPER
    assert (f"hospital cleveland: its SuperExec (pid {first.pid}) ended (signal SIGTERM) while the SuperNode "
            f"runs") in caplog.text
    assert f"Started it again (pid {replacement.pid}, restart 1 of at most 5" in caplog.text


def test_nothing_is_started_again_once_the_node_is_stopping(watch):
    w = watch()
    proc = subprocess.Popen(SLEEPER)
    w.track(proc)
    w.stop()
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    assert w.restarts == 0 and w._procs == [proc]


def test_a_superexec_ending_during_the_grace_is_not_replaced_when_the_stop_follows(watch):
    """Ctrl-C reaches the node's whole process group: the SuperExec may end a moment before the node's own
    exit handler says it is stopping."""
    w = SuperExecWatch("cleveland", interval=0.05, grace=2.0)
    proc = subprocess.Popen(SLEEPER)
    w.track(proc)
    proc.send_signal(signal.SIGINT)
    proc.wait()
    time.sleep(0.3)  # seen by the watch, inside its grace
    w.stop()
    time.sleep(2.2)
    assert w.restarts == 0


def test_a_superexec_that_keeps_ending_stops_the_node_once(watch, caplog):
    gave_up: list[float] = []
    w = watch(max_restarts=2, window=60.0, give_up=lambda: gave_up.append(time.monotonic()))
    w.track(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
    with caplog.at_level(logging.ERROR, logger="flwr"):
        assert eventually(lambda: bool(gave_up))
        time.sleep(0.5)
    assert len(gave_up) == 1 and w.restarts == 2 and w.gave_up  # the launcher then exits with status 1
    assert "ended (exit status 3), the 3rd time within 60 s: stopping this SuperNode" in caplog.text


def test_flowers_superexec_is_handed_to_the_watch_and_the_nodes_exit_stops_it(tmp_path: Path, monkeypatch, watch):
    from flwr.supercore.exit import exit_handler
    from flwr.supernode import start_client_internal as sci

    monkeypatch.setattr(sci, "subprocess", subprocess)  # restored after the test
    monkeypatch.setattr(exit_handler, "registered_exit_handlers", [])
    fake = tmp_path / "bin" / "flower-superexec"  # stands in for Flower's on PATH
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    w = watch()
    watch_flowers_superexec(w)
    other = sci.subprocess.Popen([sys.executable, "-c", "pass"])  # anything else Flower starts: not watched
    superexec = sci.subprocess.Popen(["flower-superexec", "--runtime-api-address", "127.0.0.1:9"])
    other.wait()
    assert w._procs == [superexec]
    assert subprocess.Popen is superexec_watch.subprocess.Popen  # the real module is untouched
    exit_handler.trigger_exit_handlers(run_before_force_exit=True)
    superexec.kill()
    superexec.wait()
    time.sleep(0.5)
    assert w.restarts == 0  # the node's exit stopped the watch


def test_a_superexec_ended_by_a_real_time_signal_is_named_and_replaced(watch, caplog):
    w = watch()
    proc = subprocess.Popen(SLEEPER)
    w.track(proc)
    with caplog.at_level(logging.ERROR, logger="flwr"):
        os.kill(proc.pid, signal.SIGRTMIN + 1)  # no name in signal.Signals
        assert eventually(lambda: w.restarts == 1)
    assert f"signal {int(signal.SIGRTMIN) + 1} (" in caplog.text


def test_terminate_ends_every_superexec_it_watches(watch):
    w = watch()
    first = subprocess.Popen(SLEEPER)
    w.track(first)
    first.kill()
    assert eventually(lambda: w.restarts == 1)
    (replacement,) = w._procs
    w.terminate(timeout=5)
    assert replacement.poll() is not None
