"""Hostile inputs from the security review of the deployment commands and the run directory (issue 16):
a FAB whose own metadata (publisher, name, version) would become a path outside the registry, a certificate
validity past any calendar, an `app build --out` onto a file the build reads, and a second process driving a
run directory another process is driving.

The table runs through the harness (tests/hostile.py): exit code, a message naming the fault, no traceback, no
planted patient value, nothing changed outside what the case allows. Focused tests below it pin the library
behaviour the table cannot see (what a failed creation removes, the lock held by a real second process).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.deployment.app_trust import AppTrustError, Registry, fab_sha256, summarize_fab
from fedhealth.runs import rundir
from fedhealth.security import certs
from tests.hostile import Hostile, check
from tests.support import ROOT, SMOKE


def _fab_bytes(name: str = "toyapp", publisher: str = "toypub", version: str = "1.0.0") -> bytes:
    """A FAB as a publisher could hand it over: a zip whose pyproject.toml says what the publisher wants."""
    pyproject = (f'[project]\nname = "{name}"\nversion = "{version}"\n'
                 f'[tool.flwr.app]\npublisher = "{publisher}"\n')
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", pyproject)
        archive.writestr("toyapp/server.py", "x = 1\n")
    return buffer.getvalue()


def _write_fab(**fields: str):
    def setup(ws: Path) -> None:
        (ws / "app.fab").write_bytes(_fab_bytes(**fields))
        (ws / "out" / "registry").mkdir(parents=True)
    return setup


def _project(ws: Path) -> None:
    """A minimal Flower app folder Flower's own builder accepts."""
    project = ws / "proj"
    (project / "toyapp").mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent("""\
        [project]
        name = "toyapp"
        version = "1.0.0"

        [tool.flwr.app]
        publisher = "toypub"

        [tool.flwr.app.components]
        serverapp = "toyapp.server:app"
        clientapp = "toyapp.client:app"
        """))
    (project / "toyapp" / "server.py").write_text("app = None  # the source a hospital reviewed\n")
    (project / "toyapp" / "client.py").write_text("app = None\n")


def _keys_and_fab(**fields: str):
    def setup(ws: Path) -> None:
        certs.init_hospital_keys(ws / "keys", "north")
        (ws / "app.fab").write_bytes(_fab_bytes(**fields))
        (ws / "out").mkdir()
    return setup


def _nothing_in(*parts: str):
    def extra(ws: Path, output: str) -> None:
        assert not ws.joinpath(*parts).exists(), f"{'/'.join(parts)} was left behind by a refused command"
    return extra


def _empty(*parts: str):
    def extra(ws: Path, output: str) -> None:
        folder = ws.joinpath(*parts)
        assert folder.is_dir() and not any(folder.iterdir()), f"{folder}: a folder the user made was not kept as it was"
    return extra


def _escaped_nowhere(ws: Path, output: str) -> None:
    assert not list(ws.parent.rglob("escaped*")), "a FAB's name became a path outside the registry"


def _driven_run(ws: Path) -> None:
    """A resumable run directory (interrupted, released) whose lock another live process holds."""
    run = rundir.create_run_dir(load_config(SMOKE), ws / "out" / "run")
    rundir.mark_status(run, "interrupted", released=True, stopped_by="SIGINT")
    _LOCKERS.append(_hold_in_another_process(run))


_LOCKERS: list[subprocess.Popen] = []


def _hold_in_another_process(run: Path) -> subprocess.Popen:
    """A process that takes the run's lock the way a driver does, says so on stdout, then waits."""
    code = ("import sys, time; from pathlib import Path; from fedhealth.runs import rundir; "
            "rundir._hold(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture(autouse=True)
def _stop_lockers():
    yield
    while _LOCKERS:
        proc = _LOCKERS.pop()
        proc.kill()
        proc.wait()


def _resume_refused(ws: Path, output: str) -> None:
    assert f"pid {_LOCKERS[-1].pid}" in output, "the refusal does not name the process that drives the run"


CASES = [
    # -- a FAB's own metadata becomes registry paths (review item 2) --
    Hostile("app publish name ../../../escaped",
            lambda ws: ["app", "publish", str(ws / "app.fab"), "--dir", str(ws / "out" / "registry")], 2,
            names=("project.name", "'/'"), setup=_write_fab(name="../../../escaped"), allowed=(),
            extra=_escaped_nowhere),
    Hostile("app publish publisher ..",
            lambda ws: ["app", "publish", str(ws / "app.fab"), "--dir", str(ws / "out" / "registry")], 2,
            names=("tool.flwr.app.publisher",), setup=_write_fab(publisher=".."), allowed=()),
    Hostile("app publish version with a slash",
            lambda ws: ["app", "publish", str(ws / "app.fab"), "--dir", str(ws / "out" / "registry")], 2,
            names=("project.version",), setup=_write_fab(version="1.0.0/../../../escaped"), allowed=(),
            extra=_escaped_nowhere),
    Hostile("app approve a FAB named ../x",
            lambda ws: ["app", "approve", str(ws / "app.fab"), "--key", str(ws / "keys" / "app_approval"),
                        "--sha256", fab_sha256((ws / "app.fab").read_bytes()), "--out", str(ws / "out" / "sig.json"),
                        "--hospital", "north"], 2,
            names=("project.name",), setup=_keys_and_fab(name="../x"), allowed=()),
    # -- a validity past any calendar (review item 10) --
    Hostile("certs init --days 3000000",
            lambda ws: ["certs", "init", "--out", str(ws / "out" / "pki1"), "--days", "3000000"], 2,
            names=("--days", "36500"), allowed=(), extra=_nothing_in("out")),
    Hostile("certs init --days 0 into an empty folder the user made",
            lambda ws: ["certs", "init", "--out", str(ws / "out" / "pki1"), "--days", "0"], 2,
            names=("--days",), setup=lambda ws: (ws / "out" / "pki1").mkdir(parents=True), allowed=(),
            extra=_empty("out", "pki1")),
    # -- app build onto the project it builds (review item 12) --
    Hostile("app build --out a project source --force",
            lambda ws: ["app", "build", "--project", str(ws / "proj"), "--out",
                        str(ws / "proj" / "toyapp" / "server.py"), "--force"], 2,
            names=("--project", "server.py", "the build reads"), setup=_project, allowed=()),
    Hostile("app build --out a new non-FAB file in the project",
            lambda ws: ["app", "build", "--project", str(ws / "proj"), "--out", str(ws / "proj" / "toyapp" / "x.py")],
            2, names=("--project", "x.py", ".fab"), setup=_project, allowed=(), extra=_nothing_in("proj", "toyapp",
                                                                                                "x.py")),
    Hostile("app build --out a link to a project source --force",
            lambda ws: ["app", "build", "--project", str(ws / "proj"), "--out", str(ws / "out" / "app.fab"),
                        "--force"], 2,
            names=("--project", "server.py"),
            setup=lambda ws: (_project(ws), (ws / "out").mkdir(),
                              (ws / "out" / "app.fab").symlink_to(ws / "proj" / "toyapp" / "server.py")),
            allowed=()),
    # -- a second driver of one run directory (review item 6) --
    Hostile("simulate --resume a run another process drives",
            lambda ws: ["simulate", "--resume", str(ws / "out" / "run")], 2,
            names=("being driven by another process", "wait for it or stop it"), setup=_driven_run, allowed=(),
            extra=_resume_refused),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_review_deploy(case: Hostile, tmp_path: Path) -> None:
    check(case, tmp_path)


# -- FAB metadata and registry paths --


@pytest.mark.parametrize(("fields", "field"), [
    ({"name": "../../../escaped"}, "project.name"), ({"name": ".hidden"}, "project.name"),
    ({"publisher": "a/b"}, "tool.flwr.app.publisher"), ({"publisher": "x\\u001b[31m"}, "tool.flwr.app.publisher"),
    ({"version": "../1.0.0"}, "project.version"), ({"version": "1.0 0"}, "project.version"),
])
def test_a_fab_whose_metadata_is_no_name_is_refused_naming_the_field(fields: dict[str, str], field: str) -> None:
    with pytest.raises(AppTrustError, match=field.replace(".", r"\.")) as err:
        summarize_fab(_fab_bytes(**fields))
    assert "\x1b" not in str(err.value)


def test_a_version_may_hold_letters_plus_and_minus() -> None:
    assert summarize_fab(_fab_bytes(version="1.0.0rc1+local-2")).version == "1.0.0rc1+local-2"


def test_publish_refuses_before_writing_and_a_good_fab_lands_inside(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    with pytest.raises(AppTrustError, match="project.name"):
        registry.publish(_fab_bytes(name="../../escaped"))
    assert not list(tmp_path.rglob("*.fab"))
    _, target = registry.publish(_fab_bytes())
    assert target == tmp_path / "registry" / "apps" / "toypub" / "toyapp" / "1.0.0.fab"


def test_publish_refuses_a_registry_folder_linked_outside(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "registry" / "apps").mkdir(parents=True)
    (tmp_path / "registry" / "apps" / "toypub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(AppTrustError, match="outside this folder"):
        Registry(tmp_path / "registry").publish(_fab_bytes())
    assert not any((tmp_path / "elsewhere").iterdir())


@pytest.mark.parametrize(("app_id", "version"), [("@../x", None), ("@toypub/..", None), ("@toypub/toyapp", "../1"),
                                                 ("@toypub/toyapp", 1)])
def test_a_lookup_with_names_that_escape_finds_nothing(tmp_path: Path, app_id: str, version) -> None:
    registry = Registry(tmp_path / "registry")
    registry.publish(_fab_bytes())
    assert registry.lookup(app_id, version) is None
    assert registry.lookup("@toypub/toyapp", None) is not None


# -- certificates: nothing left behind --


def test_init_refuses_a_validity_past_the_bound_before_any_folder(tmp_path: Path) -> None:
    with pytest.raises(certs.PKIError, match="at most 36500 days"):
        certs.init_study_pki(tmp_path / "pki", days=3_000_000)
    with pytest.raises(certs.PKIError, match="whole number"):
        certs.init_study_pki(tmp_path / "pki", days=True)
    assert not (tmp_path / "pki").exists()
    assert certs.init_study_pki(tmp_path / "pki", days=certs.MAX_DAYS).root.is_dir()


def test_a_failure_part_way_removes_only_what_the_call_created(tmp_path: Path, monkeypatch) -> None:
    given = tmp_path / "given"  # a folder the user made, with a file of their own
    given.mkdir()
    (given / "notes.txt").write_text("mine")
    calls = []

    def failing(path: Path, data: bytes, mode: int) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        certs.atomic_write_bytes(path, data, mode)

    monkeypatch.setattr(certs, "_write_file", failing)
    with pytest.raises(OSError):
        certs.init_study_pki(given / "pki")
    assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    calls.clear()
    with pytest.raises(OSError):
        certs.init_study_pki(given)  # the folder itself was there: it stays, with the user's file
    assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    calls.clear()
    with pytest.raises(OSError):
        certs.init_hospital_keys(tmp_path / "keys", "north")
    assert not (tmp_path / "keys").exists()


# -- one driver per run directory --


def test_a_second_process_cannot_drive_a_run_until_the_first_exits(tmp_path: Path) -> None:
    run = rundir.create_run_dir(load_config(SMOKE), tmp_path / "run")
    rundir.mark_status(run, "interrupted", released=True, stopped_by="SIGINT")
    assert run.resolve() not in rundir._HELD  # released: this process let go of the lock
    holder = _hold_in_another_process(run)
    try:
        with pytest.raises(rundir.RunDirError, match=f"being driven by another process \\(pid {holder.pid}\\)"):
            rundir.reopen_run_dir(run)
        assert rundir.read_state(run)["status"] == "interrupted"  # the refused call wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # the lock dies with its process, SIGKILL included
        holder.wait()
    assert rundir.reopen_run_dir(run) == run
    assert rundir.read_state(run)["status"] == "running"
    rundir.mark_status(run, "interrupted", released=True, stopped_by="SIGINT")


def test_create_run_dir_refuses_a_folder_another_process_is_creating_a_run_in(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold_in_another_process(out)
    try:
        with pytest.raises(rundir.RunDirError, match=f"pid {holder.pid}"):
            rundir.create_run_dir(load_config(SMOKE), out)
        assert not (out / rundir.STATE_FILE).exists() and not (out / rundir.CONFIG_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
    run = rundir.create_run_dir(load_config(SMOKE), out)  # an empty folder but for a lock nobody holds
    rundir.mark_completed(run)
    assert run.resolve() not in rundir._HELD


def test_two_processes_resuming_at_once_one_wins(tmp_path: Path) -> None:
    run = rundir.create_run_dir(load_config(SMOKE), tmp_path / "run")
    rundir.mark_status(run, "interrupted", released=True, stopped_by="SIGINT")
    code = ("import sys, time; from pathlib import Path; from fedhealth.runs import rundir\n"
            "try:\n    rundir.reopen_run_dir(Path(sys.argv[1]))\nexcept rundir.RunDirError as e:\n"
            "    print('refused', e, flush=True); sys.exit(2)\nprint('driving', flush=True); time.sleep(5)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=env) for _ in range(2)]
    try:
        lines = sorted(p.stdout.readline().strip() for p in procs if p.stdout is not None)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert lines[0] == "driving" and lines[1].startswith("refused") and "being driven by another process" in lines[1]
