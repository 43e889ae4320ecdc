"""A hospital's ClientApps forked from a warm fork server, and the SuperNode's shorter poll.

What must hold: the fork server runs Flower's own `flwr-clientapp` with exactly the arguments Flower's
`SubprocessExecutor` passes, one child per request; it never holds the app's own code (the FAB's must run);
each child draws fresh random states; the SuperNode launcher starts fedhealth's SuperExec only for
`--isolation process` with FEDHEALTH_CLIENTAPP=forkserver, with the marks that let `kill_tree` find it; the
poll wrapper pulls again until a message comes. No SuperLink or SuperNode is started here
(tests/integration/test_deployment.py runs the real thing in this mode).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedhealth.deployment import superexec, supernode
from fedhealth.deployment.processes import runtime_mark
from tests.support import ROOT


def _spec(**changes: Any) -> Any:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    fields = {"task_type": TaskType.CLIENT_APP, "runtime_api_address": "127.0.0.1:9094", "token": "tok",
              "insecure": True, "root_certificates_path": None, "runtime_dependency_install": False,
              "parent_pid": 4321, "suppress_output": False, "task_id": 7, **changes}
    return ExecutionSpec(**fields)


@pytest.mark.parametrize("changes", [{}, {"insecure": False, "root_certificates_path": "/pki/ca.crt"},
                                     {"parent_pid": None, "runtime_dependency_install": True}], ids=str)
def test_the_children_get_the_arguments_flowers_subprocess_executor_passes(
        changes: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.superexec.executor import subprocess_executor

    seen: list[list[str]] = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **_: seen.append(list(args)))
    spec = _spec(**changes)
    subprocess_executor.SubprocessExecutor().launch(spec)
    assert seen == [["flwr-clientapp", *superexec.clientapp_argv(spec)]]


def _zygote(preload: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-P", str(superexec.ZYGOTE), "flwr-clientapp", "--preload",
                             json.dumps(preload)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_the_fork_server_runs_flowers_clientapp_once_per_request() -> None:
    server = _zygote(["flwr.supernode.cli.flwr_clientapp"])  # imported once, not once per child
    requests = [{"argv": ["--help"]}, "not json", {"argv": ["--help"], "quiet": True}, {"argv": ["--help"]}]
    out, err = server.communicate("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in requests),
                                  timeout=300)
    assert server.returncode == 0, err
    assert out.count("usage: flwr-clientapp") == 2  # the quiet child's output goes nowhere
    assert "ignored a malformed request" in err and "ready (1 modules preloaded)" in err


def test_the_fork_server_refuses_to_hold_the_apps_own_code() -> None:
    """A preload that imports fedhealth would shadow the FAB's fedhealth in every child."""
    server = _zygote(["json", "fedhealth.errors"])
    out, err = server.communicate(json.dumps({"argv": ["--help"]}) + "\n", timeout=300)
    assert server.returncode == 1 and "refusing to serve" in err and "fedhealth" in err
    assert "usage:" not in out
    assert not [m for m in superexec.PRELOAD if m.split(".")[0] in ("fedhealth", "clients", "server")]


def test_each_child_draws_fresh_random_states() -> None:
    np = pytest.importorskip("numpy")
    spec = importlib.util.spec_from_file_location("clientapp_zygote", superexec.ZYGOTE)
    assert spec is not None and spec.loader is not None
    zygote = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zygote)
    np.random.seed(1234)
    draws = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read)
            zygote._reseed()
            os.write(write, repr(float(np.random.rand())).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            draws.append(float(pipe.read()))
        os.waitpid(pid, 0)
    parent = float(np.random.rand())
    assert len({*draws, parent}) == 3


def test_the_superexec_starts_only_beside_a_process_isolated_node(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(supernode.subprocess, "Popen", lambda cmd, **_: started.append(cmd) or "proc")
    args = ["--superlink", "127.0.0.1:9093", "--isolation", "process", "--host", "127.0.0.1", "--port", "9200"]
    monkeypatch.setenv(supernode.CLIENTAPP_ENV, "forkserver")
    assert supernode.start_superexec(args) == "proc"
    line = " ".join(started[0]) + " "
    assert "-m fedhealth.cli deploy superexec flower-superexec " in line
    assert runtime_mark(9200) in line and f"--parent-pid {os.getpid()} " in line and "--insecure" in line
    assert supernode.start_superexec([a if a != "process" else "subprocess" for a in args]) is None
    monkeypatch.setenv(supernode.CLIENTAPP_ENV, "subprocess")
    assert supernode.start_superexec(args) is None  # process isolation with someone else's SuperExec
    monkeypatch.setenv(supernode.CLIENTAPP_ENV, "warm")
    with pytest.raises(supernode.LauncherError, match="forkserver or subprocess"):
        supernode.start_superexec(args)
    assert len(started) == 1


def test_flowers_superexec_is_given_the_fork_server_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.constant import ExecutorType
    from flwr.supercore.superexec import run_superexec as rs

    calls: list[Any] = []
    monkeypatch.setattr(rs, "get_executor", lambda kind, config=None, **kw: calls.append(kind) or "flower's")
    monkeypatch.setattr(superexec, "ForkServerExecutor", lambda address: f"forkserver for {address}")
    superexec.install("127.0.0.1:9200")
    assert rs.get_executor(ExecutorType.SUBPROCESS) == "forkserver for 127.0.0.1:9200"
    assert rs.get_executor(ExecutorType.KUBERNETES, {"image": "x"}) == "flower's" and calls == [ExecutorType.KUBERNETES]


@pytest.mark.parametrize(("raw", "expected"), [(None, 0.5), ("0.2", 0.2), ("flower", None), ("3", None),
                                               ("bad", "error"), ("0", "error"), ("30", "error")], ids=str)
def test_the_poll_interval_setting(raw: str | None, expected: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if raw is None:
        monkeypatch.delenv(supernode.POLL_ENV, raising=False)
    else:
        monkeypatch.setenv(supernode.POLL_ENV, raw)
    if expected == "error":
        with pytest.raises(supernode.LauncherError, match=supernode.POLL_ENV):
            supernode.poll_interval()
    else:
        assert supernode.poll_interval() == expected


@pytest.mark.parametrize("poll", [0.01, None], ids=["short-poll", "flowers-poll"])
def test_the_wrapper_pulls_again_until_a_message_comes(poll: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import start_client_internal as sci

    answers = [None, None, 42]
    calls: list[dict[str, Any]] = []

    def pull(**kwargs: Any) -> int | None:
        calls.append(kwargs)
        return answers[len(calls) - 1]

    monkeypatch.setattr(sci, "_pull_and_store_message", pull)
    supernode.install(None, "cleveland", poll)
    got = sci._pull_and_store_message(get_fab=lambda h, r: None, trusted_entities=None)
    assert (got, len(calls)) == ((42, 3) if poll else (None, 1))


def test_clients_deploy_refuses_an_unknown_clientapp_mode_and_a_hand_set_isolation(tmp_path: Path) -> None:
    required = ["--name", "a", "--data", "d", "--schema", "s", "--policy", "p", "--ledger-dir", "l",
                "--audit-log", "x", "--key", "k", "--ca", "c", "--superlink", "127.0.0.1:1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHEALTH_")}
    for extra, message in ((["--clientapp", "warm"], "--clientapp 'warm': give forkserver or subprocess"),
                           (["--", "--isolation", "subprocess"], "--isolation is set by this script")):
        done = subprocess.run(["bash", str(ROOT / "clients" / "deploy.sh"), *required, *extra], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not any(tmp_path.iterdir())
