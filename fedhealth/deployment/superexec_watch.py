"""A hospital's SuperExec, kept running for as long as its SuperNode runs.

Why: the SuperExec is the process that starts a ClientApp for each message the SuperNode receives. Flower
1.41's SuperNode starts it once (`subprocess.Popen` in `start_client_internal`, subprocess isolation) and
never looks at it again: if it ends (a signal from an administrator's `pkill`, the OOM killer, a crash), the
SuperNode stays connected and keeps accepting messages that no ClientApp will ever answer. The study then
stalls on that hospital until each SecAgg+ stage times out, and the hospital's IT sees nothing wrong in
`systemctl status`. This was seen in this project's CI: every hospital's SuperExec printed "SuperExec
terminated gracefully." after its first ClientApp, and the study waited out its timeouts.

`SuperExecWatch` checks its SuperExecs every `interval` seconds. One that ended while the node is not
stopping is logged as an error (pid, exit status) and started again with the same command line, which
names this process as its `--parent-pid`, so it still ends with the node. Starting again is safe: a SuperExec
holds no state of its own (it asks the node's Runtime API for tasks; a task it had taken and not launched is
left to Flower's expiry, as after any SuperExec restart). After `max_restarts` within `window` seconds the
watch gives up and stops the node with SIGTERM (Flower's clean exit, which deregisters it); the launcher
then exits with status 1, so that a service manager that restarts a failed node (compose's `restart:
unless-stopped`, systemd's `Restart=on-failure`) sees it and a human can read why.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("flwr")  # the SuperNode's own log, where its IT reads Flower's lines

SUPEREXEC = "flower-superexec"


class SuperExecWatch:
    """Restart this node's SuperExecs when they end while the node runs (see the module docstring).

    Parameters
    ----------
    hospital : str
        Named in every line logged.
    interval : float
        Seconds between checks.
    max_restarts, window : int, float
        More than `max_restarts` restarts within `window` seconds stop the node instead.
    grace : float
        Seconds to wait, after a SuperExec ended, for the node's own stop to begin: Ctrl-C reaches the
        whole process group at once, and a SuperExec that ended with its node must not be started again.
    give_up : callable
        Called once when the restarts are spent; default: SIGTERM to this process.
    """

    def __init__(self, hospital: str, interval: float = 0.5, max_restarts: int = 5, window: float = 600.0,
                 grace: float = 1.0, give_up: Callable[[], None] | None = None) -> None:
        self.hospital = hospital
        self.interval = interval
        self.max_restarts = max_restarts
        self.window = window
        self.grace = grace
        self._give_up = give_up or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self._procs: list[subprocess.Popen] = []
        self._restarts: list[float] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.gave_up = False  # the restarts were spent: the node must exit with an error status (`launch`)

    @property
    def restarts(self) -> int:
        return len(self._restarts)

    def track(self, proc: subprocess.Popen) -> None:
        """Watch `proc` from now on; the first call starts the watching thread."""
        with self._lock:
            self._procs.append(proc)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="fedhealth-superexec-watch", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """The node is stopping: never start a SuperExec again."""
        with self._lock:
            self._stopping.set()

    def terminate(self, timeout: float = 10.0) -> None:
        """Stop watching and end the SuperExecs still running (the node's own exit)."""
        self.stop()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval):
            with self._lock:
                ended = [p for p in self._procs if p.poll() is not None]
            for proc in ended:
                try:
                    self._replace(proc)
                except Exception:  # the watch must outlive any one failure (an OSError starting a SuperExec)
                    log.exception("fedhealth: hospital %s: could not start its SuperExec again", self.hospital)

    def _replace(self, proc: subprocess.Popen) -> None:
        if self._stopping.wait(self.grace):
            return
        status = proc.returncode
        how = f"signal {_signal_name(-status)}" if status < 0 else f"exit status {status}"
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < self.window]
        with self._lock:
            self._procs.remove(proc)
        if len(self._restarts) >= self.max_restarts:
            log.error("fedhealth: hospital %s: its SuperExec (pid %d) ended (%s), the %d%s time within %.0f s: "
                      "stopping this SuperNode, which can run no ClientApp without it; see the lines above",
                      self.hospital, proc.pid, how, len(self._restarts) + 1, _suffix(len(self._restarts) + 1),
                      self.window)
            self.gave_up = True
            self._stopping.set()
            self._give_up()
            return
        with self._lock:  # under the lock with stop(): nothing is started once the node is stopping
            if self._stopping.is_set():
                return
            replacement = subprocess.Popen(list(_argv(proc)))
            self._procs.append(replacement)
            self._restarts.append(now)
        log.error("fedhealth: hospital %s: its SuperExec (pid %d) ended (%s) while the SuperNode runs; without "
                  "it no ClientApp can start. Started it again (pid %d, restart %d of at most %d within %.0f s)",
                  self.hospital, proc.pid, how, replacement.pid, len(self._restarts), self.max_restarts,
                  self.window)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name in the enum
        return f"{number} ({signal.strsignal(number) or 'unknown'})"


def _argv(proc: subprocess.Popen) -> Sequence[str]:
    args = proc.args
    return [args] if isinstance(args, str | bytes) else [str(a) for a in args]  # type: ignore[list-item]


def _suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


class _RecordingSubprocess:
    """Stands in for the `subprocess` module inside flwr's `start_client_internal` only: its `Popen` is the
    real one, and the SuperExec it starts is handed to `watch`."""

    def __init__(self, watch: SuperExecWatch) -> None:
        self._watch = watch

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    def Popen(self, args, *rest, **kwargs):  # noqa: N802 - the name flwr calls
        proc = subprocess.Popen(args, *rest, **kwargs)
        if not isinstance(args, str | bytes) and args and str(args[0]) == SUPEREXEC:
            self._watch.track(proc)
        return proc


def watch_flowers_superexec(watch: SuperExecWatch) -> None:
    """Make flwr's SuperNode hand the SuperExec it starts (subprocess isolation) to `watch`, and stop the
    watch when Flower's SuperNode begins its exit (SIGINT, SIGTERM, an error)."""
    from flwr.supercore.exit.exit_handler import add_exit_handler
    from flwr.supernode import start_client_internal as sci

    sci.subprocess = _RecordingSubprocess(watch)  # type: ignore[assignment]
    add_exit_handler(watch.stop, run_before_force_exit=True)
