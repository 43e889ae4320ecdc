"""`fedhealth deploy superexec ARGS`: Flower's own SuperExec, launching ClientApps from a fork server.

Why: in flwr 1.41 each message a SuperNode receives becomes a task, and the SuperExec next to the SuperNode
starts one `flwr-clientapp` process per task (`SubprocessExecutor` in
`flwr/supercore/superexec/executor/subprocess_executor.py`); `flwr-clientapp` runs exactly that one task and
exits (`flwr/supernode/runtime/run_clientapp.py`). There is no long-running ClientApp in 1.41: the SuperNode's
`--isolation process` only means that the SuperExec is started by someone else instead of by the SuperNode.
So every message pays a new interpreter importing flwr, torch and Opacus: seconds each on a 2-core host, five
messages per hospital per SecAgg+ round.

This is that SuperExec, unchanged (Flower's `flower-superexec` entry point with its own arguments and
polling), except for the executor it is given: `ForkServerExecutor` implements Flower's documented
`Executor` protocol (`flwr/supercore/superexec/executor/types.py`) and, for ClientApp tasks, asks a fork
server (`clientapp_zygote.py`, started once, with flwr, torch, numpy and Opacus imported) to fork a child
that runs Flower's `flwr-clientapp` entry point with exactly the arguments `SubprocessExecutor` would pass.
Each message still runs in a process of its own that exits after it, so nothing a ClientApp holds in memory
outlives its message, as before; what is shared is only what importing those libraries put in memory.
Other task types, and any ClientApp task while the fork server cannot be (re)started, go to Flower's
`SubprocessExecutor`.

The SuperNode runs with `--isolation process`; `fedhealth/deployment/supernode.py` starts this process next to
it (same process group, `--parent-pid` the SuperNode), so it stops with the node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

ZYGOTE = Path(__file__).with_name("clientapp_zygote.py")
# What a hospital's ClientApp imports that costs the time: Flower's ClientApp runtime and SecAgg+ mod, torch,
# numpy, Opacus (DP-SGD) and SciPy below it. Third-party only: the app's own code (fedhealth, clients) must be
# the FAB's, so the fork server refuses to serve if one of these pulls it in.
PRELOAD = (
    "flwr.supernode.cli.flwr_clientapp",
    "flwr.supernode.runtime.run_clientapp",
    "flwr.client",
    "flwr.clientapp",
    "flwr.client.mod",
    "numpy",
    "torch",
    "torch.nn",
    "torch.optim",
    "opacus",
    "opacus.grad_sample.utils",
    "opacus.optimizers",
    "opacus.utils.uniform_sampler",
)
MODES = ("forkserver", "subprocess")  # how a hospital's SuperNode starts ClientApps (clients/deploy.sh --clientapp)


def clientapp_argv(spec: Any) -> list[str]:
    """The `flwr-clientapp` arguments Flower's `SubprocessExecutor.launch` builds for `spec`, without the command."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG

    args = [TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type], spec.runtime_api_address, "--token", spec.token]
    if spec.insecure:
        args.append("--insecure")
    elif spec.root_certificates_path is not None:
        args.extend(["--root-certificates", spec.root_certificates_path])
    if spec.parent_pid is not None:
        args.extend(["--parent-pid", str(spec.parent_pid)])
    if spec.runtime_dependency_install:
        args.append("--allow-runtime-dependency-installation")
    return args


class ForkServerExecutor:
    """Flower's `Executor` protocol: ClientApp tasks forked from a warm fork server, the rest as Flower does."""

    def __init__(self, runtime_api_address: str, preload: Sequence[str] = PRELOAD) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self._fallback = SubprocessExecutor()
        self._preload = list(preload)
        self._label = ["flwr-clientapp", "--runtime-api-address", runtime_api_address]
        self._server: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._starts = 0
        self._start()

    def _start(self) -> bool:
        """(Re)start the fork server; False once it has failed to stay up three times."""
        from flwr.supercore import log

        if self._starts >= 3:
            return False
        self._starts += 1
        self._server = subprocess.Popen([sys.executable, "-P", str(ZYGOTE), *self._label, "--preload",
                                         json.dumps(self._preload)], stdin=subprocess.PIPE, text=True)
        log(INFO, "fedhealth: ClientApps start from a fork server (pid %d)", self._server.pid)
        return True

    def _alive(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def get_eligible_capacity(self, supported_task_types: set[Any], *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set[Any], set[str]]:
        return self._fallback.get_eligible_capacity(supported_task_types, insecure=insecure,
                                                    root_certificates_path=root_certificates_path)

    def wait_for_capacity(self, task_type: Any = None, *, fab_hash: str | None = None, insecure: bool = False,
                          root_certificates_path: str | None = None) -> None:
        """No capacity gate, as for subprocesses."""

    def launch(self, spec: Any) -> Any:
        from flwr.supercore import log
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self._fallback.launch(spec)
        request = json.dumps({"argv": clientapp_argv(spec), "quiet": bool(spec.suppress_output)}) + "\n"
        with self._lock:
            for _ in range(2):
                if not self._alive() and not self._start():
                    break
                try:
                    assert self._server is not None and self._server.stdin is not None
                    self._server.stdin.write(request)
                    self._server.stdin.flush()
                    return LaunchResult.accepted()
                except (BrokenPipeError, OSError):
                    log(WARNING, "fedhealth: the ClientApp fork server is gone; starting it again")
        log(ERROR, "fedhealth: the ClientApp fork server cannot be started; this task runs as a new flwr-clientapp")
        return self._fallback.launch(spec)

    def reconcile(self) -> None:
        """Start the fork server again if it died between tasks, so the next message does not wait for it."""
        from flwr.supercore import log

        if self._server is not None and not self._alive():
            log(WARNING, "fedhealth: the ClientApp fork server exited (%s); starting it again",
                self._server.returncode)
            with self._lock:
                self._start()

    def close(self) -> None:
        """Close the fork server's input (it exits at end of input), then make sure it is gone."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            server.kill()
            server.wait()
        self._fallback.close()


def install(runtime_api_address: str) -> None:
    """Make Flower's SuperExec build a `ForkServerExecutor` where it would build its `SubprocessExecutor`."""
    from flwr.supercore.constant import ExecutorType
    from flwr.supercore.superexec import run_superexec as rs

    original = rs.get_executor
    if getattr(original, "_fedhealth_wrapped", False):
        return

    def get_executor(executor_type: Any, executor_config: Any = None, **kwargs: Any) -> Any:
        if executor_type == ExecutorType.SUBPROCESS:
            return ForkServerExecutor(runtime_api_address)
        return original(executor_type, executor_config, **kwargs)

    get_executor._fedhealth_wrapped = True  # type: ignore[attr-defined]
    get_executor.__wrapped__ = original  # type: ignore[attr-defined]
    rs.get_executor = get_executor


def main(args: Sequence[str]) -> None:
    """Flower's `flower-superexec` with `args` (after its program name, which `supernode.superexec_command` puts
    first so that the command line names flower-superexec), given the fork-server executor."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.supercore.superexec import run_superexec as rs

    from fedhealth.deployment.supernode import SUPEREXEC_PROGRAM as PROGRAM
    from fedhealth.deployment.supernode import LauncherError, _option, check_flower

    check_flower()
    if not callable(getattr(rs, "get_executor", None)):
        raise LauncherError("flwr's SuperExec has no get_executor; update fedhealth/deployment/superexec.py")
    args = list(args[1:] if args and args[0] == PROGRAM else args)
    install(_option(args, "--runtime-api-address") or "127.0.0.1:9094")
    from flwr.supercore.cli.flower_superexec import flower_superexec

    sys.argv = [PROGRAM, *args]
    flower_superexec()

