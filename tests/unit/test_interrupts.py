"""Stop signals and what Ray leaves behind, without a federation (fedhealth.experiments.interrupts).

A signal outside a federation is `RunInterrupted` at once; inside one it only asks the federation to stop
(the driver winds it down, tests/integration/test_interrupt_federation.py); a signal the process was started
with ignored stays ignored. The reaper kills a killed driver's Ray processes, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedhealth.errors import RunInterrupted
from fedhealth.experiments import interrupts
from tests.support import ROOT, eventually


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_outside_a_federation_a_stop_signal_raises_run_interrupted(signum):
    before = signal.getsignal(signum)
    with pytest.raises(RunInterrupted) as stopped, interrupts.stop_signals():
        os.kill(os.getpid(), signum)
        time.sleep(2)  # the handler runs at the next bytecode; never reached
    assert stopped.value.signal_name == signal.Signals(signum).name
    assert isinstance(stopped.value, KeyboardInterrupt) and not isinstance(stopped.value, Exception)
    assert signal.getsignal(signum) is before


def test_inside_a_federation_a_signal_only_asks_it_to_stop_and_a_second_one_skips_the_grace():
    with interrupts.federation_stop() as request:
        os.kill(os.getpid(), signal.SIGTERM)
        assert eventually(request.event.is_set, 5.0, 0.02) and request.signal_name == "SIGTERM"
        assert not request.forced.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        assert eventually(request.forced.is_set, 5.0, 0.02) and request.signal_name == "SIGTERM"  # the first one stays


def test_a_signal_the_process_ignores_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.stop_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is interrupts._handler
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_kill_spares_a_reused_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert eventually(lambda: interrupts._stat(proc.pid) is not None, 5.0, 0.02)
        started = interrupts._stat(proc.pid)[2]
        assert interrupts.kill({proc.pid: started - 1}, grace=0) == []  # another start time: not the one recorded
        assert proc.poll() is None
        assert interrupts.kill({proc.pid: started}, grace=0.5) == [proc.pid]
        assert proc.wait(timeout=5) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the reaper reads /proc (Linux)")
def test_the_reaper_kills_a_killed_drivers_ray_processes_and_nothing_else(tmp_path):
    """SIGKILL of a driver: its Ray processes (here one named as Ray names its workers) go, its other
    children stay."""
    script = textwrap.dedent("""
        import subprocess, time
        from fedhealth.experiments import interrupts
        ray = subprocess.Popen(["bash", "-c", "exec -a ray::FakeWorker sleep 120"])
        other = subprocess.Popen(["bash", "-c", "exec -a not-ray sleep 120"])
        reaper = interrupts.Reaper()
        reaper.start()
        time.sleep(0.5)
        print(ray.pid, other.pid, flush=True)
        time.sleep(120)
    """)
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    ray_pid, other_pid = (int(p) for p in driver.stdout.readline().split())
    try:
        ray_started, other_started = interrupts._stat(ray_pid)[2], interrupts._stat(other_pid)[2]
        assert interrupts.ray_processes(driver.pid) == {ray_pid: ray_started}
        time.sleep(1.5)  # the reaper looks once a second
        driver.kill()
        driver.wait()
        assert eventually(lambda: not interrupts._alive(ray_pid, ray_started), 5.0, 0.02)
        assert interrupts._alive(other_pid, other_started)
    finally:
        for pid in (ray_pid, other_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
