"""Deployment helpers: the flwr CLI's connection to a study's TLS SuperLink, a hospital's pre-flight
checks, and the process handling that scripts and tests need around Flower's long-running commands.

Why here and not in the shell scripts: Flower reads `[superlink.<name>] root-certificates` only as an
*absolute* path (`flwr/cli/typing.py`, `SuperLinkConnection.__post_init__`), so a committed
`configs/flower/config.toml` cannot point at a study's CA; `write_connection` writes the section with
the real path into `$FLWR_HOME/config.toml`. And Flower's processes outlive their parents: each
SuperLink and SuperNode starts a `flower-superexec` in a new session, which starts `flwr-serverapp` /
`flwr-clientapp` subprocesses, so killing one process (or one process group) leaves the rest running.
`Service.stop` finds every descendant first and stops them all.

The deployment scripts call these through `fedhealth deploy` (`connection`, `preflight`, `node-config`;
`fedhealth deploy --help` lists them), defined in fedhealth/deployment/cli.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
FLOWER_CONFIG = PROJECT / "configs" / "flower" / "config.toml"  # copied into $FLWR_HOME by the scripts
DEFAULT_CONNECTION = "fedhealth-deployment"  # the [superlink.<name>] section for a study's own SuperLink
DEFAULT_PORT = 9092  # the SuperLink's one loopback HTTPS port (Fleet, Control and Runtime APIs share it in flwr 1.41)
GATEWAY_PORT = 9093  # the hospitals' address: the Fleet API only (fedhealth/deployment/gateway.py)
# Every Flower process we start gets these: no telemetry (a hospital's software must not phone home) and no
# run-time `uv sync` of the app's dependencies (it would try to pull a CUDA torch from the internet).
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


# ---------------------------------------------------------------- the flwr CLI's connection


def write_connection(flwr_home: str | Path, address: str, root_certificates: str | Path,
                     name: str = DEFAULT_CONNECTION, base: str | Path | None = FLOWER_CONFIG) -> Path:
    """Add (or replace) `[superlink.<name>]` in `$FLWR_HOME/config.toml` and return that file.

    `address` is the SuperLink's HOST:PORT (its Control API, on the same port as the Fleet API);
    `root_certificates` the study CA, written as an absolute path as Flower requires. When the file
    does not exist yet it starts as a copy of `base` (our `configs/flower/config.toml`), so the
    simulation connection `local-simulation` stays available and stays the default."""
    import tomli_w

    home = Path(flwr_home)
    target = home / "config.toml"
    if target.is_file():
        data = tomllib.loads(target.read_text(encoding="utf-8"))
    elif base is not None and Path(base).is_file():
        data = tomllib.loads(Path(base).read_text(encoding="utf-8"))
    else:
        data = {}
    ca = Path(root_certificates).expanduser().resolve()
    superlink = data.setdefault("superlink", {})
    superlink[name] = {"address": address, "root-certificates": str(ca)}
    superlink.setdefault("default", name)
    home.mkdir(parents=True, exist_ok=True)
    target.write_text(tomli_w.dumps(data), encoding="utf-8")
    return target


# ---------------------------------------------------------------- a hospital's pre-flight checks


def hospital_problems(ca: str | Path, policy: str | Path | None = None, audit_log: str | Path | None = None,
                      public_key: str | Path | None = None, ledger_dir: str | Path | None = None, *,
                      audit_key: str | Path | None = None, node_key: str | Path | None = None,
                      trusted_entities: str | Path | None = None) -> list[str]:
    """What would make this hospital's SuperNode fail, or run unprotected, after launch (empty: fine).

    Checks the study CA (`--root-certificates`), the site policy file, the audit-signing key (it loads,
    matches its `.pub`, and is not the SuperNode key: the evidence is signed by a key of its own), the
    trusted-entities file (Ed25519 keys as Flower needs, and not empty: an empty one would make Flower
    run any app), that an existing audit log verifies with the audit public key (`public_key`, default
    AUDIT_KEY.pub; the ClientApp refuses to append to one that does not), and that the ledger and
    audit-log folders can be written."""
    from fedhealth.deployment.app_trust import AppTrustError, load_trusted_entities
    from fedhealth.privacy.audit import AuditError, verify_audit_log
    from fedhealth.security.certs import (
        CertificateError,
        _spki,
        check_ca_certificate,
        load_node_private_key,
        load_node_public_key,
        public_key_fingerprint,
    )
    from fedhealth.study.policy import SitePolicy

    problems: list[str] = []
    try:
        check_ca_certificate(ca)
    except CertificateError as err:
        problems.append(str(err))
    if policy:
        try:
            SitePolicy.from_file(Path(policy))
        except (OSError, ValueError) as err:
            problems.append(str(err))
    if audit_key:
        public_key = public_key or f"{audit_key}.pub"
        try:
            signing = load_node_private_key(audit_key, "audit signing key")
            published = load_node_public_key(public_key, "audit public key")
            if _spki(signing) != _spki(published):
                problems.append(f"{audit_key}: this audit signing key does not match {public_key} "
                                f"({public_key_fingerprint(signing)} vs {public_key_fingerprint(published)}); "
                                "auditors verify with the .pub, so pass the pair made together")
            if node_key and _spki(signing) == _spki(load_node_private_key(node_key)):
                problems.append(f"{audit_key}: the audit signing key is the SuperNode key ({node_key}); sign the "
                                "audit log with a key of its own (fedhealth certs hospital-keys makes audit_signing)")
        except CertificateError as err:
            problems.append(str(err))
    if trusted_entities:
        try:
            load_trusted_entities(trusted_entities)
        except AppTrustError as err:
            problems.append(str(err))
    if audit_log and Path(audit_log).exists():
        try:
            report = verify_audit_log(audit_log, public_key)
        except (AuditError, CertificateError) as err:
            problems.append(str(err))
        else:
            if report.problem is not None:
                problems.append(f"{audit_log}: the existing audit log fails verification at {report.problem}; "
                                "the SuperNode would refuse to append to it. Keep it as evidence and point "
                                "audit-log at a new file")
    for folder, what in ((ledger_dir, "ledger folder (ledger-dir)"),
                         (Path(audit_log).parent if audit_log else None, "audit log folder")):
        if folder is None:
            continue
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            problems.append(f"{folder}: {what} cannot be created ({err.strerror})")
            continue
        if not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"{folder}: {what} is not writable by this user (uid {os.getuid()})")
    return problems


def node_config(values: Mapping[str, str]) -> str:
    """`flower-supernode --node-config` text: `key='value' ...` (TOML literal strings, so no escaping).

    Raises ValueError for a value Flower's parser cannot carry (a single quote or a line break)."""
    parts = []
    for key, value in values.items():
        if not value:
            continue
        if "'" in value or "\n" in value:
            raise ValueError(f"node config {key}: {value!r} contains a quote or a line break; rename the path")
        if key == "hospital-name":  # the ClientApp refuses it too (node_config.py); say so before Flower starts
            from fedhealth.study.names import name_problem, shown

            problem = name_problem(value)
            if problem is not None:
                raise ValueError(f"node config hospital-name {shown(value)}: {problem}")
        parts.append(f"{key}='{value}'")
    return " ".join(parts)


# ---------------------------------------------------------------- processes and ports


# Ports that fixed programs take: docs/deployment.md's walk-through (9092-9097) and `flwr run`'s local SuperLink
# (39091-39093, flwr/cli/constant.py, inside the OS's range of ports it hands out): never given by free_port
RESERVED_PORTS = frozenset(range(9092, 9098)) | frozenset(range(39091, 39094))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it), never one of `RESERVED_PORTS`."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _proc_stat(pid: int) -> tuple[int, str, int, int] | None:
    """(parent pid, state letter, process group, start time in clock ticks) of a live process, None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[1]), rest[0], int(rest[2]), int(rest[19])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _process_table() -> dict[int, tuple[int, str, int, int]]:
    table = {}
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is not None and stat[1] not in ("Z", "X"):
            table[pid] = stat
    return table


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


def descendants(pids: Iterable[int]) -> set[int]:
    """Every live process below `pids` in the parent tree (children, grandchildren, ...)."""
    return _below(set(pids), _process_table())


def _below(roots: set[int], table: Mapping[int, tuple[int, str, int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat[0], []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_mentioning(marks: Sequence[str]) -> set[int]:
    """Live Flower processes (`flower-*`, `flwr-*`) whose command line contains one of `marks`.

    Why: a `flower-superexec` whose parent died is re-parented to init and no longer shows in
    `descendants`; its command line still names its parent (`--parent-pid N`) and the ports it serves.
    Whose they are is `owned_processes`' question: a pid and a port are both reused."""
    found = set()
    for pid in _all_pids():
        cmd = _command_line(pid)
        if ("flower-" in cmd or "flwr-" in cmd) and any(m in cmd for m in marks) and alive(pid):
            found.add(pid)
    return found


def runtime_mark(port: int, host: str = "127.0.0.1") -> str:
    """The mark of a SuperLink's or SuperNode's own processes: its SuperExec and the app processes it starts
    all name its Runtime API address (`--runtime-api-address HOST:PORT`)."""
    return f"--runtime-api-address {host}:{port} "


def owned_processes(root: int, root_started: int, root_reaped: bool, marks: Sequence[str] = ()) -> set[int]:
    """The live processes that belong to the service started as `root` (start time `root_started`, in clock
    ticks): itself, everything below it, the rest of its process group, and the orphans (re-parented to init)
    among the Flower processes naming one of `marks`, started after it.

    Why so careful: on a busy machine pids are reused within minutes (Linux's default pid_max is 32768), and a
    free port a test released is soon another test's. Once `root` has exited and been reaped (`root_reaped`),
    its pid, its group id and the `--parent-pid ROOT` on its children's command lines can all name another
    service's processes; and a `--runtime-api-address` mark can name a later service on the same port. So a
    marked process counts only if it started after `root` and was adopted: its parent is init, or a process
    older than `root` (a subreaper), never a younger process outside this tree, which is some other service
    started since. The group counts only while its leader is `root` itself or gone. Whatever the service's
    own tree still reaches is found through `descendants`."""
    table = _process_table()
    leader = table.get(root)
    ours_alive = leader is not None and leader[3] == root_started and not root_reaped
    found = {root} | _below({root}, table) if ours_alive else set()
    if not root_reaped:  # unreaped, the root holds its pid and group id: nobody else can have them
        found |= {pid for pid, stat in table.items() if stat[2] == root and stat[3] >= root_started}
    else:  # once reaped, `--parent-pid ROOT` may name a newer process's children
        marks = [m for m in marks if m != f"--parent-pid {root} "]
    if marks:
        for pid in processes_mentioning(marks):
            stat = table.get(pid)
            if stat is None or stat[3] < root_started:
                continue
            parent = table.get(stat[0])
            if stat[0] <= 1 or parent is None or parent[3] < root_started:
                found.add(pid)
    return found | _below(found, table)


def kill_processes(find: Callable[[], set[int]], timeout: float = 10.0) -> list[int]:
    """SIGTERM what `find()` returns, look again (children started meanwhile join), wait up to `timeout`
    seconds, then SIGKILL what is left. Returns the pids that needed SIGKILL."""
    targets: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        # looked up again every pass: a pid that ended meanwhile (and may be someone else's now) drops out,
        # a child started meanwhile (a superexec spawning an app process) joins
        current = find()
        if not current:
            return []
        for pid in current - targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        targets |= current
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    forced = sorted(find())
    for pid in forced:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return forced


@dataclass
class Service:
    """A long-running command in its own session (process group), its output in `log`."""

    name: str
    cmd: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # strings only this service's processes carry, e.g. "--runtime-api-address 127.0.0.1:PORT " (its SuperExec and
    # the app processes it starts); not the SuperLink's address, which every SuperNode names too. See
    # owned_processes.
    marks: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: int = 0  # the root process's start time (clock ticks since boot): tells it from a reused pid

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **FLOWER_ENV, **self.env}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                                         start_new_session=True)
        stat = _proc_stat(self.proc.pid)
        self.started = stat[3] if stat is not None else 0
        self.marks.append(f"--parent-pid {self.proc.pid} ")  # trailing space: pid 12 must not match 123
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def running(self) -> bool:
        """Still running. Does not reap an ended root (its pid and group id stay reserved for `stop`)."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        try:
            ended = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.proc.poll() is None
        return ended is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if still running after `timeout` seconds."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def processes(self) -> set[int]:
        """This service's live processes (see `owned_processes`): empty once it stopped cleanly."""
        if self.proc is None:
            return set()
        reaped = self.proc.returncode is not None
        return {p for p in owned_processes(self.proc.pid, self.started, reaped, self.marks) if alive(p)}

    def stop(self, timeout: float = 10.0) -> list[int]:
        """Stop the service and everything it started; reap it. Returns pids that needed SIGKILL."""
        if self.proc is None:
            return []
        forced = kill_processes(self.processes, timeout)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return forced


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll `predicate` until true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
