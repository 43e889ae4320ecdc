"""`Service.stop` stops everything a service started, and nothing else, also when pids and ports are reused.

Real processes throughout. The hazard: deployment tests run beside each other on a machine whose pid_max
is 32768, so the pid of a service that ended, its process group and the `--parent-pid PID` /
`--runtime-api-address HOST:PORT` on its children's command lines can soon name another test's processes.
Stopping the first service must not touch them (it once did: another file's clean-up ended a running
study's SuperExecs)."""

from __future__ import annotations

import sys
from pathlib import Path

from fedhealth.deployment.processes import Service, alive, runtime_mark
from tests.support import eventually

MARK = runtime_mark(47)  # a Runtime API address no real process here serves


def _script(tmp: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.py"
    path.write_text(f"import os, subprocess, sys, time\n{body}\n")
    return path


def _marked(tmp: Path, *extra: str) -> list[str]:
    """A sleeping process whose command line names a Flower program and the mark (what Flower's SuperExec
    and ClientApp processes carry)."""
    return [sys.executable, str(_script(tmp, "marked", "time.sleep(60)")), "flwr-clientapp", *MARK.split(), *extra]



def test_stop_ends_the_whole_tree_and_the_orphans_it_left(tmp_path: Path) -> None:
    """A child in a session of its own, and an orphan re-parented to init that names the service's mark."""
    marked = _marked(tmp_path)
    orphaner = _script(tmp_path, "orphaner",
                       f"print(subprocess.Popen({marked!r}, stdout=subprocess.DEVNULL, "
                       f"stderr=subprocess.DEVNULL).pid, flush=True)")
    orphan_file = tmp_path / "orphan"
    main = _script(tmp_path, "main", f"subprocess.Popen({marked!r}, start_new_session=True)\n"
                                     f"out = subprocess.run([sys.executable, {str(orphaner)!r}], capture_output=True, "
                                     f"text=True).stdout\n"
                                     f"open({str(orphan_file)!r}, 'w').write(out)\n"
                                     "time.sleep(60)")
    service = Service("node", [sys.executable, str(main)], tmp_path / "node.log", marks=[MARK]).start()
    assert eventually(lambda: orphan_file.exists() and orphan_file.read_text().strip() != ""), service.output()
    orphan = int(orphan_file.read_text())
    assert eventually(lambda: len(service.processes()) == 3), service.processes()
    assert orphan in service.processes() and service.pid in service.processes()
    assert service.stop(timeout=5) == []
    assert not alive(orphan) and service.processes() == set()


def test_stopping_a_service_that_ended_spares_a_later_one_on_its_port_and_pid_marks(tmp_path: Path) -> None:
    first = Service("ended", [sys.executable, "-c", "pass"], tmp_path / "ended.log", marks=[MARK]).start()
    first.wait(10)  # it ended and was reaped: its pid and its port are free for others
    # a later service reuses the port (its child names the same Runtime API) and names the first one's pid,
    # as a reused pid would be named on its children's command lines
    child = _marked(tmp_path, "--parent-pid", str(first.pid))
    later = Service("later", [sys.executable, str(_script(tmp_path, "later", f"subprocess.Popen({child!r})\n"
                                                                             "time.sleep(60)"))],
                    tmp_path / "later.log", marks=[MARK]).start()
    try:
        assert eventually(lambda: len(later.processes()) == 2)
        (child,) = later.processes() - {later.pid}
        assert first.processes() == set()
        first.stop(timeout=2)
        assert alive(child) and later.running()
    finally:
        later.stop(timeout=5)
    assert not alive(child)


def test_a_marked_process_under_another_service_is_not_this_ones(tmp_path: Path) -> None:
    """Another program's live child naming the mark, started after the service: its parent is younger
    than the service and outside its tree, so it is someone else's."""
    service = Service("node", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "node.log",
                      marks=[MARK]).start()
    spawner = _script(tmp_path, "other", f"subprocess.Popen({_marked(tmp_path)!r})\ntime.sleep(60)")
    other = Service("other", [sys.executable, str(spawner)], tmp_path / "other.log").start()
    try:
        assert eventually(lambda: len(other.processes()) == 2)
        (marked,) = other.processes() - {other.pid}
        assert marked not in service.processes()
        service.stop(timeout=5)
        assert alive(marked)
    finally:
        other.stop(timeout=5)
