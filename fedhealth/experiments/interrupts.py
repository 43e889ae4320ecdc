"""SIGINT and SIGTERM while simulations run: the federation is asked to stop, never killed mid-write.

Why not Python's default: Flower's simulation engine blocks the main thread in a join on its worker threads,
and a signal that the kernel delivers to one of Ray's threads then never runs Python's handler (the driver
was seen to hang for 11 minutes, its state saying `failed` while the hospitals trained on). So while a
federation runs, the main thread only waits (in short, timed waits, so a handler runs within a tenth of a
second), the federation runs in a thread of its own, and the handler just records the stop: the driver then
winds the federation down (`fedhealth.experiments.simulate`), writes the run directory's state and raises
`RunInterrupted`. Outside a federation the handler raises `RunInterrupted` at once, as Ctrl-C would.

What stays behind is this module's other job: the processes Ray started for this driver (found under
/proc, Linux) are killed once Ray is shut down, and a small reaper process kills them if the driver itself
is killed (SIGKILL cannot be caught; see `_ray_reaper.py`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedhealth.errors import RunInterrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # raylet's helpers; every other `ray::` is a worker


class StopRequest:
    """A running federation's stop: set by the first signal; a second one asks to skip the grace period."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.forced = threading.Event()
        self.signal_name = ""

    def request(self, name: str) -> None:
        if self.event.is_set():
            self.forced.set()
            return
        self.signal_name = name
        self.event.set()


_running: list[StopRequest] = []  # federations running now; a signal goes to the innermost


def _handler(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if _running:
        _running[-1].request(name)
        return
    raise RunInterrupted(f"stopped by {name}", name)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM become a stop request to the running federation, or `RunInterrupted` at once.

    Only the main thread can install handlers; elsewhere (a notebook's worker thread) this does nothing and
    the process's own handling stands. The handlers found are put back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:  # ignored (nohup, a shell's background job): it stays ignored
            signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def federation_stop() -> Iterator[StopRequest]:
    """While inside, a stop signal sets the yielded request instead of raising (see `stop_signals`)."""
    request = StopRequest()
    _running.append(request)
    try:
        with stop_signals():
            yield request
    finally:
        _running.remove(request)


# ---- Ray's processes ----------------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in ticks) of a process, None when it is gone (or no /proc)."""
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


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return {}
    for child in entries:
        stat = _stat(child)
        if stat is not None and stat[0] != "Z":
            children.setdefault(stat[1], []).append(child)
    return children


def descendants(pid: int, roots: Iterable[int] | None = None) -> list[int]:
    """Every living descendant of `pid` (children, their children, ...), from /proc; [] without /proc.
    With `roots`: only the children of `pid` among them, and their descendants."""
    children = _children()
    first = [c for c in children.get(pid, []) if roots is None or c in set(roots)]
    found, todo = list(first), list(first)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_ray(pid: int) -> bool:
    """A process Ray started: its name is `ray::...` (workers, agents) or it runs a program from Ray's package
    (gcs_server, raylet, the dashboard, log monitor and autoscaler monitor)."""
    argv = _argv(pid)
    return bool(argv) and (argv[0].startswith("ray::") or any(f"{os.sep}ray{os.sep}" in a for a in argv[:3]))


def ray_processes(pid: int | None = None) -> dict[int, int]:
    """This driver's Ray processes: pid -> start time (so a pid reused later is never mistaken for one). Only
    the Ray services the driver started itself and what runs under them: another program's Ray (a CLI run
    started by this process, with its own driver) is not this driver's."""
    pid = os.getpid() if pid is None else pid
    own = [c for c in _children().get(pid, []) if is_ray(c)]
    found = {}
    for child in descendants(pid, roots=own):
        stat = _stat(child)
        if stat is not None and is_ray(child):
            found[child] = stat[2]
    return found


def ray_workers() -> dict[int, int]:
    """The Ray worker processes of this driver (the hospitals' actors among them), not Ray's own services."""
    return {p: t for p, t in ray_processes().items()
            if (argv := _argv(p)) and argv[0].startswith("ray::") and argv[0] not in RAY_AGENTS}


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == started


def kill(processes: dict[int, int], grace: float = 1.0) -> list[int]:
    """SIGTERM, then after `grace` seconds SIGKILL, each process still alive (same pid and start time).
    Returns the pids that were still alive."""
    def living() -> list[int]:
        return [p for p, started in processes.items() if _alive(p, started)]

    def send(pids: Iterable[int], sig: int) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)

    targets = living()
    if grace > 0:
        send(targets, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while living() and time.monotonic() < deadline:
            time.sleep(0.05)
    send(living(), signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while living() and time.monotonic() < deadline:
        time.sleep(0.05)
    return targets


class Reaper:
    """A small process beside the driver that kills this driver's Ray processes once the driver is gone, however
    it went (SIGKILL, a crash). It learns them by watching /proc; closing its stdin (the driver exiting, or
    `stop`) is its cue."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        if self._proc is not None or not Path("/proc/self/stat").exists():
            return
        script = Path(__file__).with_name("_ray_reaper.py")
        self._proc = subprocess.Popen([sys.executable, "-I", "-S", str(script), str(os.getpid())],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """Tell the reaper the driver is done (it then kills whatever Ray process is left, and exits)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def stopped_as(what: str, out: Path) -> Iterator[None]:
    """Stop signals for an experiment of many federations (`sweep`, `contribution`): `RunInterrupted` names
    the experiment and its directory instead of the one sibling run it stopped (which is left `interrupted`),
    and says that the experiment itself is not continued."""
    with stop_signals():
        try:
            yield
        except RunInterrupted as err:
            raise RunInterrupted(f"{what} in {out} stopped by {err.signal_name}, Ray shut down; the federation it "
                                 "stopped is left interrupted, but the experiment cannot be continued: run it "
                                 "again with a new --out", err.signal_name) from None
