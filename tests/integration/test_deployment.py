"""Deployment on one host, with real processes: a TLS SuperLink with SuperNode authentication and a
database, three hospital SuperNodes (each with its own CSV, schema copy, site policy, ledger and signed
audit log), keys registered with `flwr supernode register`, the study submitted with `flwr run`.

Everything is started through the scripts a hospital network would use (`server/deploy.sh`,
`clients/deploy.sh`, the container entrypoints), on 127.0.0.1 and free ports, and every process
(with the `flower-superexec`, `flwr-serverapp` and `flwr-clientapp` processes Flower starts below it)
is stopped in `finally`. Slow: each Flower message runs in a fresh process, SecAgg+ needs four exchanges
per round and Flower's SuperNode polls every 3 s, so a round costs about 70 s; the two-round study with its
SuperLink and hospital restarts about 220 s, and the file about 300 s on an idle 2-core machine
(docs/deployment.md, Timing).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedhealth.deployment.processes import (
    FLOWER_ENV,
    Service,
    free_port,
    port_open,
    processes_mentioning,
    runtime_mark,
    wait_until,
)
from tests.support import ROOT

BIN = ROOT / ".venv" / "bin"
DATA = ROOT / "configs" / "data" / "heart-disease"
STUDY = "configs/deployment/heart-disease.toml"  # relative to the project: the ServerApp reads it from the FAB
HOSPITALS = {"cleveland": "cleveland.csv", "hungary": "hungary.csv", "va-long-beach": "va_long_beach.csv"}
LATE_JOINER = {"switzerland": "switzerland.csv"}  # joins the federation in one test only
pytestmark = pytest.mark.slow
# The app version the hospitals approved: published in the operator's registry, signed by each hospital's own key.
APP_SPEC = "@fedhealth/fedhealth=={version}"


def _env(**extra: str) -> dict[str, str]:
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **FLOWER_ENV, "PATH": path, **extra}


def _run(cmd: list[str], timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout)


@dataclass
class Site:
    """One hospital's own folder: nothing in it is shared with the server but the public key."""

    name: str
    root: Path
    port: int = 0

    @property
    def keys(self) -> Path:
        return self.root / "keys"  # made here by `fedhealth certs hospital-keys`: only supernode_auth.pub leaves

    @property
    def key(self) -> Path:
        return self.keys / "supernode_auth"

    @property
    def pub(self) -> Path:
        return self.keys / "supernode_auth.pub"

    @property
    def audit_pub(self) -> Path:
        return self.keys / "audit_signing.pub"

    @property
    def app_log(self) -> Path:
        return self.root / "audit" / "app-checks.jsonl"

    @property
    def data(self) -> Path:
        return self.root / "data.csv"

    @property
    def audit(self) -> Path:
        return self.root / "audit" / "audit.jsonl"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger"

    def args(self, superlink: str, ca: Path, data: Path | None = None) -> list[str]:
        return ["bash", "clients/deploy.sh", "--name", self.name, "--data", str(data or self.data),
                "--schema", str(self.root / "schema.toml"), "--policy", str(self.root / "policy.toml"),
                "--ledger-dir", str(self.ledger), "--audit-log", str(self.audit), "--key", str(self.key),
                "--ca", str(ca), "--superlink", superlink, "--port", str(self.port)]


@dataclass
class Deployment:
    root: Path
    pki: Path
    port: int  # the gateway: the only address hospitals dial (Fleet API only)
    link_port: int  # the SuperLink's loopback port (Fleet, Control and Runtime APIs): the operator's
    registry_port: int
    cli_home: Path
    sites: dict[str, Site]
    app_spec: str = ""
    services: list[Service] = field(default_factory=list)

    @property
    def superlink(self) -> Service:
        return self.services[0]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def control_address(self) -> str:
        return f"127.0.0.1:{self.link_port}"

    @property
    def registry(self) -> Path:
        return self.root / "operator" / "registry"

    @property
    def ca(self) -> Path:
        return self.pki / "ca" / "ca.crt"

    def start(self, name: str, cmd: list[str], home: Path, marks: list[str], **env: str) -> Service:
        service = Service(name, cmd, self.root / "logs" / f"{name}.log", cwd=ROOT, marks=marks,
                          env={"FLWR_HOME": str(home), "PATH": _env()["PATH"], **env})
        self.services.append(service.start())
        return service

    def start_hospital(self, site: Site, label: str | None = None, extra: list[str] | None = None) -> Service:
        site.port = site.port or free_port()
        cmd = site.args(self.address, self.ca) + (["--", *extra] if extra else [])
        return self.start(label or site.name, cmd, site.root / "flwr-home", [runtime_mark(site.port)])

    def start_hospital_container_style(self, site: Site) -> Service:
        """The hospital image's entry point, configured the way compose.yaml does it: environment only."""
        site.port = site.port or free_port()
        return self.start(site.name, ["bash", "clients/entrypoint.sh"], site.root / "flwr-home",
                          [runtime_mark(site.port)], FEDHEALTH_HOSPITAL=site.name, FEDHEALTH_SUPERLINK=self.address,
                          FEDHEALTH_DATA=str(site.data), FEDHEALTH_SCHEMA=str(site.root / "schema.toml"),
                          FEDHEALTH_POLICY=str(site.root / "policy.toml"), FEDHEALTH_CA=str(self.ca),
                          FEDHEALTH_KEY=str(site.key), FEDHEALTH_LEDGER_DIR=str(site.ledger),
                          FEDHEALTH_AUDIT_LOG=str(site.audit), FEDHEALTH_RUNTIME_PORT=str(site.port))

    def start_superlink(self) -> Service:
        """The server image's entry point (server/entrypoint.sh start -> server/deploy.sh start), set up by
        environment, on this deployment's port and state database (a restart finds its registrations there).
        The running SuperLink is always services[0]; a stopped one stays in the list for the final checks."""
        old = self.services[0] if self.services else None
        seen = old.output().count("Uvicorn running on https://") if old is not None else 0  # one log file
        link = self.start("superlink", ["bash", "server/entrypoint.sh", "start"], self.root / "server" / "flwr-home",
                          [runtime_mark(self.link_port)], FEDHEALTH_PKI=str(self.pki), FEDHEALTH_HOST="127.0.0.1",
                          FEDHEALTH_PORT=str(self.link_port),
                          FEDHEALTH_DATABASE=str(self.root / "server" / "state.db"),
                          FEDHEALTH_SERVER_NAMES="127.0.0.1 localhost",
                          FEDHEALTH_APP_REGISTRY=f"http://127.0.0.1:{self.registry_port}")
        if old is not None:
            self.services.remove(link)
            self.services.insert(0, link)
        wait_until(lambda: link.output().count("Uvicorn running on https://") > seen or not link.running(), 120,
                   what="the SuperLink listening")
        assert link.running(), self.logs()
        return link

    def service(self, name: str) -> Service:
        """The latest service started under `name`."""
        return [s for s in self.services if s.name == name][-1]

    def logs(self, *names: str, tail: int = 2500) -> str:
        chosen = [s for s in self.services if not names or s.name in names]
        return "\n".join(f"----- {s.name} (exit {s.proc.poll() if s.proc else None}) -----\n{s.output()[-tail:]}"
                         for s in chosen)


def _make_site(root: Path, name: str) -> Site:
    """A hospital's folder, with the keys it made itself (the operator gets only supernode_auth.pub)."""
    from fedhealth.security.certs import init_hospital_keys

    site = Site(name, root / name)
    site.root.mkdir(parents=True)
    init_hospital_keys(site.keys, name)
    # 'rogue' impersonates a real site with cleveland's file
    shutil.copy(DATA / {**HOSPITALS, **LATE_JOINER}.get(name, "cleveland.csv"), site.data)
    site.data.chmod(0o444)  # the SuperNode only reads it
    shutil.copy(DATA / "schema.toml", site.root / "schema.toml")
    policy = ROOT / "configs" / "deployment" / f"policy-{name}.toml"
    shutil.copy(policy if policy.exists() else ROOT / "configs" / "deployment" / "policy-cleveland.toml",
                site.root / "policy.toml")
    return site


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A running TLS SuperLink with the three hospitals' keys registered (not the 'rogue' one)."""
    from fedhealth.deployment.app_trust import Registry, build_fab, sign_fab, summarize_fab
    from fedhealth.security.certs import add_hospital_public_key, approval_key_id

    started = time.perf_counter()
    root = tmp_path_factory.mktemp("deploy")
    pki = root / "operator" / "pki"
    made = _run([str(BIN / "fedhealth"), "certs", "init", "--out", str(pki)])
    assert made.returncode == 0, made.stderr
    assert not list(pki.rglob("supernode_auth")), "the operator's PKI must hold no hospital private key"
    dep = Deployment(root, pki, free_port(), free_port(), free_port(), root / "operator" / "flwr-home",
                     {h: _make_site(root, h) for h in [*HOSPITALS, "rogue"]})
    for h in HOSPITALS:  # each hospital sends its SuperNode public key, nothing else
        add_hospital_public_key(pki, h, dep.sites[h].pub)
    # The app version the hospitals run: built by the publisher, reviewed and signed off by each hospital with its
    # own approval key (its trusted-entities.yaml names only that key), published with the signatures.
    fab = build_fab(ROOT)
    summary = summarize_fab(fab)
    registry = Registry(dep.registry)
    registry.publish(fab)
    for h in HOSPITALS:
        registry.add_signature(sign_fab(fab, dep.sites[h].keys / "app_approval", approval_key_id(h)))
    dep.app_spec = APP_SPEC.format(version=summary.version)
    try:
        dep.start_superlink()
        dep.start("registry", ["bash", "server/deploy.sh", "registry", "--dir", str(dep.registry),
                               "--port", str(dep.registry_port)], dep.cli_home, [])
        gateway = dep.start("gateway", ["bash", "server/entrypoint.sh", "gateway"], dep.cli_home, [],
                            FEDHEALTH_PKI=str(pki), FEDHEALTH_GATEWAY_HOST="127.0.0.1",
                            FEDHEALTH_GATEWAY_PORT=str(dep.port), FEDHEALTH_PORT=str(dep.link_port))
        wait_until(lambda: port_open("127.0.0.1", dep.port) and port_open("127.0.0.1", dep.registry_port), 60,
                   what="the gateway and the registry listening")
        assert gateway.running(), gateway.output()
        connected = _run(["bash", "server/deploy.sh", "connect", "--address", dep.control_address,
                          "--pki", str(pki)], FLWR_HOME=str(dep.cli_home))
        assert connected.returncode == 0, connected.stderr
        registered = _run(["bash", "server/deploy.sh", "register", "--pki", str(pki),
                           *[a for h in HOSPITALS for a in ("--hospital", h)]], FLWR_HOME=str(dep.cli_home))
        assert registered.returncode == 0, registered.stdout + registered.stderr
        assert registered.stdout.count("registered successfully") == 3, registered.stdout
        again = _run(["bash", "server/deploy.sh", "register", str(dep.sites["cleveland"].pub)],
                     FLWR_HOME=str(dep.cli_home))
        assert again.returncode == 0 and "already registered" in again.stdout, again.stdout + again.stderr
        assert "No such file" not in again.stderr, again.stderr  # each status is recorded, failed ones too
        print(f"\n[deployment] SuperLink up and 3 keys registered in {time.perf_counter() - started:.1f} s")
        yield dep
    finally:
        for service in reversed(dep.services):
            service.stop()
        leftovers = {p for s in dep.services for p in s.processes()}
        assert not leftovers, f"processes left running: {sorted(leftovers)}"


# ---------------------------------------------------------------- refused before Flower starts


def _bad_csv(site: Site, tmp_path: Path, kind: str) -> Path:
    import pandas as pd

    frame = pd.read_csv(DATA / "cleveland.csv")
    if kind == "missing-column":
        frame = frame.drop(columns=["age"])
    else:  # cholesterol exported in mmol/L where the schema says mg/dL: the glucose-style unit mistake
        frame["chol"] = (frame["chol"] / 38.67).round(2)
    path = tmp_path / f"{kind}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("missing-column", "missing column(s) age"),
    ("unit", "values are below the valid minimum 80 mg/dL: is it recorded in another unit?"),
], ids=["missing-column", "unit-mistake"])
def test_a_bad_csv_is_rejected_with_the_validation_report_before_flower_starts(deployment, tmp_path, kind, message):
    site = deployment.sites["cleveland"]
    proc = _run(site.args(deployment.address, deployment.ca, _bad_csv(site, tmp_path, kind)), timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stdout and "NOT usable" in proc.stdout
    assert "not usable for this study" in proc.stderr and "SuperNode not started" in proc.stderr
    assert "Starting Flower SuperNode" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("missing", ["data", "ca", "key"])
def test_a_missing_file_is_named_before_flower_starts(deployment, tmp_path, missing):
    site = deployment.sites["cleveland"]
    args = site.args(deployment.address, deployment.ca)
    option = {"data": "--data", "ca": "--ca", "key": "--key"}[missing]
    absent = tmp_path / f"no-such-{missing}"
    args[args.index(option) + 1] = str(absent)
    proc = _run(args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {absent}: ") and "not found" in proc.stderr, proc.stderr


def test_the_superlink_does_not_start_with_tls_files_that_would_fail(deployment, tmp_path):
    pki = tmp_path / "pki"
    shutil.copytree(deployment.pki / "ca", pki / "ca")
    shutil.copytree(deployment.pki / "server", pki / "server")
    args = ["bash", "server/deploy.sh", "start", "--pki", str(pki), "--port", str(free_port()),
            "--database", str(tmp_path / "state.db")]
    uncovered = _run([*args, "--server-name", "superlink.study.example"])
    assert uncovered.returncode == 1, uncovered.stdout + uncovered.stderr
    assert "server certificate does not cover host 'superlink.study.example'" in uncovered.stderr
    (pki / "server" / "server.key").unlink()
    missing = _run(args)
    assert missing.returncode == 2
    assert f"error: {pki / 'server' / 'server.key'}: server private key (--key) not found" in missing.stderr
    assert "Starting Flower SuperLink" not in uncovered.stdout + missing.stdout


# ---------------------------------------------------------------- refused by the SuperLink


def _flower_supernode(dep: Deployment, name: str, *args: str) -> Service:
    """flower-supernode run directly (clients/deploy.sh refuses these set-ups itself)."""
    port = free_port()
    cmd = [str(BIN / "flower-supernode"), "--superlink", dep.address, "--port", str(port), "--max-retries", "2",
           "--node-config", "hospital-name='cleveland'", *args]
    return dep.start(name, cmd, dep.root / "negative" / name, [runtime_mark(port)])


@pytest.fixture(scope="module")
def refused(deployment) -> dict[str, tuple[int | None, str]]:
    """SuperNodes the SuperLink must refuse, started together (each is a few seconds of imports): name ->
    (exit status or None if still running after 120 s, its output)."""
    key = str(deployment.sites["cleveland"].key)
    other_pki = deployment.root / "negative" / "other-pki"
    made = _run([str(BIN / "fedhealth"), "certs", "init", "--out", str(other_pki)])
    assert made.returncode == 0, made.stderr
    nodes = [
        # a real hospital's set-up, but its key was never registered
        deployment.start_hospital(deployment.sites["rogue"], "unregistered"),
        # TLS, but trusting only the system's CAs, or another study's CA
        _flower_supernode(deployment, "no-ca", "--auth-supernode-private-key", key),
        _flower_supernode(deployment, "wrong-ca", "--auth-supernode-private-key", key,
                          "--root-certificates", str(other_pki / "ca" / "ca.crt")),
        # plaintext: with its key (Flower refuses to send node authentication in the clear), and without
        _flower_supernode(deployment, "plaintext-keyed", "--insecure", "--auth-supernode-private-key", key),
        _flower_supernode(deployment, "plaintext", "--insecure"),
    ]
    return {n.name: (n.wait(120), n.output()) for n in nodes}


def test_a_supernode_whose_key_is_not_registered_is_refused(deployment, refused):
    code, out = refused["unregistered"]
    assert code not in (None, 0), out
    assert "[code: 2004] Failed to activate SuperNode" in out and "SuperNode ID:" not in out
    assert "No SuperNode found with the given public key" in deployment.superlink.output()
    # the hospital's launcher says what the code can mean, with the fingerprint the operator compares
    from fedhealth.security.certs import load_node_private_key, public_key_fingerprint

    fingerprint = public_key_fingerprint(load_node_private_key(deployment.sites["rogue"].key))
    assert "error: hospital rogue: the SuperLink at 127.0.0.1:" in out, out[-3000:]
    assert f"its key is not registered there: ask the operator to check that the key with fingerprint {fingerprint}" \
        in out and "the SuperLink still counts this node online" in out, out[-3000:]


@pytest.mark.parametrize("name", ["no-ca", "wrong-ca"])
def test_a_supernode_without_the_study_ca_fails_the_tls_handshake(refused, name):
    code, out = refused[name]
    assert code not in (None, 0), out
    assert "SSL/TLS handshake error" in out and "CERTIFICATE_VERIFY_FAILED" in out, out
    assert "SuperNode ID:" not in out


def test_a_plaintext_supernode_is_refused(deployment, refused):
    code, out = refused["plaintext-keyed"]
    assert code not in (None, 0) and "requires a secure TLS connection" in out, out
    # Without a key the TLS SuperLink drops the plaintext connection ("Connection reset by peer" or "Server
    # disconnected without sending a response", depending on timing).
    code, out = refused["plaintext"]
    assert code not in (None, 0), out
    assert "The SuperNode could not establish a connection to the SuperLink" in out and "SuperNode ID:" not in out
    # and our script never passes --insecure through
    site = deployment.sites["cleveland"]
    proc = _run([*site.args(deployment.address, deployment.ca), "--", "--insecure"])
    assert proc.returncode == 2 and "--insecure is refused" in proc.stderr


# ---------------------------------------------------------------- a whole study


def _expected_train_rows(cfg, index: int, data: Path) -> int:
    from fedhealth.data.hospitals import load_hospital

    return len(load_hospital(cfg, index, str(data)).y_train)


def _study_file(root: Path, rounds: int) -> Path:
    """The deployment study with another round count, as an absolute path (the server runs on this host)."""
    text = (ROOT / STUDY).read_text()
    text = text.replace('schema = "../data/heart-disease/schema.toml"', f'schema = "{DATA / "schema.toml"}"')
    text = re.sub(r"(?m)^rounds = \d+", f"rounds = {rounds}", text)
    path = root / "operator" / f"study-{rounds}-rounds.toml"
    path.write_text(text)
    return path


def _restart_until_online(dep: Deployment, site: Site, attempts: int = 16, pause: float = 10.0) -> Service:
    """Start a hospital again, as its service manager would, until its SuperNode is activated. A SuperNode
    that could not deregister on the way out stays online at the SuperLink until its heartbeat window
    (2 x 30 s) passes, and is refused meanwhile with code 2004 (docs/deployment.md, Resilience)."""
    for attempt in range(1, attempts + 1):
        node = dep.start_hospital(site, f"{site.name}-restart-{attempt}")
        wait_until(lambda n=node: "SuperNode ID:" in n.output() or not n.running(), 180, 0.5,
                   f"{site.name} activated again")
        if node.running():
            return node
        assert "[code: 2004]" in node.output(), node.output()[-3000:]
        assert "start it again after 60 s; refused again means cause 1" in node.output(), node.output()[-3000:]
        time.sleep(pause)
    raise AssertionError(f"{site.name} could not rejoin in {attempts} attempts")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _superexecs(mark: str) -> list[int]:
    """The live `flower-superexec` processes serving the Runtime API that `mark` names."""
    found = []
    for pid in processes_mentioning([mark]):
        with contextlib.suppress(OSError):
            if b"flower-superexec" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return sorted(found)


def test_three_hospitals_finish_a_secure_study_across_a_hospital_and_a_superlink_restart(deployment):
    """Round 1 runs; then the SuperLink is stopped (its ServerApp with it) before round 2 can finish, and the
    run directory must say so; hungary's SuperNode is stopped too. The SuperLink restarts on its database, the
    two other SuperNodes reconnect, hungary starts again (same key, ledger and audit log, a new process), and
    `run --resume` finishes round 2 from round 1's checkpoint. Every hospital ends with a signed audit trail
    and a ledger that charged each round once."""
    from fedhealth.data.study_file import load_config
    from fedhealth.model.initial import initial_weights
    from fedhealth.privacy.audit import hash_arrays, verify_audit_log
    from fedhealth.study.policy import SitePolicy

    started = time.perf_counter()
    study = _study_file(deployment.root, rounds=2)
    cfg = load_config(study)
    cleveland = deployment.start_hospital(deployment.sites["cleveland"])
    deployment.start_hospital(deployment.sites["hungary"])
    deployment.start_hospital_container_style(deployment.sites["va-long-beach"])
    # cleveland's SuperExec (which starts a ClientApp per message) is killed under its running SuperNode, as
    # an administrator's `pkill` or the OOM killer would: the hospital's launcher starts it again, and
    # cleveland's updates are in every round below (`hospitals_aggregated == [0, 1, 2]`)
    mark = runtime_mark(deployment.sites["cleveland"].port)
    wait_until(lambda: _superexecs(mark) or not cleveland.running(), 120, 0.2, "cleveland's SuperExec")
    (killed,) = _superexecs(mark)
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: "Started it again" in cleveland.output() or not cleveland.running(), 30, 0.2,
               "cleveland's SuperExec started again")
    assert f"its SuperExec (pid {killed}) ended (signal SIGKILL) while the SuperNode runs" in cleveland.output()
    assert len(_superexecs(mark)) == 1
    out = deployment.root / "server" / "runs" / "study"
    # server/entrypoint.sh run: `flwr run . fedhealth-deployment --stream --run-config "config=... out=...
    # references=false"`, then exit 1 unless the run directory says completed (flwr run alone exits 0 anyway)
    first = deployment.start("submit", ["bash", "server/entrypoint.sh", "run", str(out)], deployment.cli_home, [],
                             FEDHEALTH_STUDY=str(study), FEDHEALTH_APP=deployment.app_spec)
    wait_until(lambda: len(_lines(out / "rounds.jsonl")) >= 1 or not first.running(), 420, 0.5, "round 1")
    round_one = time.perf_counter() - started
    assert [r["round"] for r in _lines(out / "rounds.jsonl")] == [1], first.output()[-4000:] + deployment.logs()

    # --- the SuperLink is stopped mid-study (a host restart, an upgrade): the ServerApp is stopped with it.
    # hungary's SuperNode goes down too while the SuperLink is away (it cannot deregister), to come back later.
    deployment.superlink.stop()
    deployment.service("hungary").stop()
    assert first.wait(120) == 1, first.output()[-4000:]
    assert f"the run did not complete; see the log above and {out} (continue it: run --resume {out})" in \
        first.output()
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "failed" and state["stopped_by"] == "SIGTERM" and state["last_round"] == 1, state
    assert state["error"].startswith("the server process received SIGTERM during round 2"), state
    status = _run([str(BIN / "fedhealth"), "status", str(out)])
    assert status.returncode == 1 and "failed: the server process received SIGTERM" in status.stdout, status.stdout

    deployment.start_superlink()
    for name in ("cleveland", "va-long-beach"):  # their SuperNodes kept running and dial again by themselves
        node = deployment.service(name)
        wait_until(lambda n=node: "Connection successful after" in n.output() or not n.running(), 180, 0.5,
                   f"{name} reconnected")
        assert node.running(), node.output()[-3000:]
    # hungary restarts: same key, ledger and audit log, a new process. The SuperLink keeps its old node online
    # until the heartbeat window passes and refuses the new process until then (code 2004). Resuming before it
    # is back would start round 2 with a node that looks online but is not there, and drop it from the round.
    _restart_until_online(deployment, deployment.sites["hungary"], pause=5.0)
    resumed = deployment.start("resume", ["bash", "server/entrypoint.sh", "run", "--resume", str(out)],
                               deployment.cli_home, [], FEDHEALTH_STUDY=str(study), FEDHEALTH_APP=deployment.app_spec)
    assert resumed.wait(480) == 0, resumed.output()[-4000:] + deployment.logs()
    seconds = time.perf_counter() - started
    print(f"\n[deployment] 3 hospitals, 2 rounds with SecAgg+ and DP-SGD, round 1 after {round_one:.0f} s, a "
          f"hospital and the SuperLink restarted, resumed: {seconds:.1f} s in all")
    assert f"run directory: {out}" in resumed.output()
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "completed" and state["last_round"] == cfg.federation.rounds == 2, state
    assert "error" not in state and "stopped_by" not in state, state
    (resume,) = state["resumes"]
    assert resume["after_round"] == 1 and "received SIGTERM during round 2" in resume["previous"]
    run_ids = [re.search(r"Successfully started run (\d+)", text).group(1)
               for text in (first.output(), resumed.output())]

    names = [h.name for h in cfg.hospitals]
    rounds = _lines(out / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["status"] == "aggregated" and r["secure_aggregation"] is True, rounds
        assert r["hospitals_aggregated"] == [0, 1, 2] and not r["declined"], rounds
    metrics = _lines(out / "metrics.jsonl")
    assert sorted((m["round"], m["hospital"]) for m in metrics) == sorted((r, n) for r in (1, 2) for n in names)
    for m in metrics:
        assert m["trained"] and m["aggregated"] and m["n_train"] is None  # record counts stay inside SecAgg+
        assert 0.5 < m["auroc"] <= 1.0, m
    # the server holds no patient data: no data file reached its run directory or its Flower apps
    server_files = [p.name for p in (deployment.root / "server").rglob("*") if p.is_file()]
    assert not [f for f in server_files if f.endswith((".csv", ".parquet"))], server_files

    # round 1's global model is the seeded initial one; round 2's is round 1's checkpoint: the resumed run
    # continued from exactly what the interrupted one had aggregated
    from fedhealth.runs import rundir

    received = {1: hash_arrays(initial_weights(cfg)),
                2: hash_arrays(rundir.load_weights(rundir.checkpoint_path(out, 1))[0])}
    for index, name in enumerate(names):
        site = deployment.sites[name]
        approved = _lines(site.app_log)  # the hospital's record of the app its SuperNode was sent, per run
        assert {e["run_id"] for e in approved} >= set(run_ids), approved
        for e in approved:
            if e["run_id"] in run_ids:
                assert e["decision"] == "approved" and e["verified_by"] == [f"{name}-approval"], e
                assert e["app_id"] == "@fedhealth/fedhealth", e
        report = verify_audit_log(site.audit, site.audit_pub)
        assert report.ok and report.signatures_checked and report.entries == 2, report
        assert report.sent_rounds == (1, 2)
        entries = [json.loads(line) for line in site.audit.read_text().splitlines()]
        assert [(e["run_id"], e["round"]) for e in entries] == list(zip(run_ids, (1, 2), strict=True))
        ledger = json.loads((site.ledger / f"{name}.json").read_text())
        assert [e["round"] for e in ledger["entries"]] == [1, 2]  # each round charged once, across both runs
        cap = SitePolicy.from_file(site.root / "policy.toml").max_epsilon
        for entry, charged in zip(entries, ledger["entries"], strict=True):
            assert entry["hospital"] == name and entry["decision"] == "sent"
            assert entry["global_model_sha256"] == received[entry["round"]]
            assert entry["records_used"] == _expected_train_rows(cfg, index, site.data)
            assert entry["policy_checks"]["secure_aggregation"] is True
            assert entry["policy_checks"]["epsilon_cap"] == f"{cap:g}"
            assert entry["epsilon_total"] == pytest.approx(charged["epsilon"])
        assert 0 < ledger["entries"][0]["epsilon"] < ledger["entries"][1]["epsilon"]
        assert ledger["entries"][1]["epsilon"] <= cfg.privacy.target_epsilon + 1e-6
        for m in metrics:
            if m["hospital"] == name:
                assert m["epsilon"] == pytest.approx(ledger["entries"][m["round"] - 1]["epsilon"])
    verify = _run([str(BIN / "fedhealth"), "audit", "verify", str(deployment.sites["hungary"].audit),
                   "--public-key", str(deployment.sites["hungary"].audit_pub), "--expected-entries", "2"])
    assert verify.returncode == 0 and "signatures by SHA256:" in verify.stdout, verify.stdout + verify.stderr


def _ensure_hospitals_online(dep: Deployment) -> None:
    """The three registered hospitals connected, whether or not an earlier test left them running."""
    for name in HOSPITALS:
        running = [s for s in dep.services if s.name.split("-restart-")[0] == name and s.running()]
        node = running[-1] if running else dep.start_hospital(dep.sites[name], f"{name}-for-absent")
        wait_until(lambda n=node: "SuperNode ID:" in n.output() or not n.running(), 180, 0.5, f"{name} activated")
        assert node.running(), node.output()[-3000:]


def test_a_hospital_that_never_connects_stops_the_study_after_the_wait_with_nothing_charged(deployment):
    """A study that names a fourth hospital whose SuperNode never starts: the server waits
    federation.wait_for_hospitals (5 s here, 600 s by default) instead of Flower's default day, then stops the
    study, marked failed with the counts and what to change; no hospital trains or spends budget."""
    _ensure_hospitals_online(deployment)
    study = _study_file(deployment.root, rounds=1)
    text = study.read_text().replace("[federation]\n", "[federation]\nwait_for_hospitals = 5.0\n", 1)
    text += '\n[[hospitals]]\nname = "switzerland"\nrecords = 123\ntier = "secondary"\nregion = "CH"\n'
    study = study.with_name("study-with-an-absent-hospital.toml")
    study.write_text(text)
    def hospital_files() -> dict[str, bytes]:  # each hospital's ledger and audit log, as they stand
        paths = [p for name in HOSPITALS for p in (deployment.sites[name].ledger / f"{name}.json",
                                                   deployment.sites[name].audit)]
        return {str(p): p.read_bytes() if p.exists() else b"" for p in paths}

    before = hospital_files()
    # a node registered at this SuperLink, connected, but not one of the study's hospitals: it must not count
    # as the missing fourth hospital, nor be sent anything
    outsider = deployment.sites["rogue"]
    filed = _run(["bash", "server/deploy.sh", "register", str(outsider.pub), "--hospital", "rogue"],
                 FLWR_HOME=str(deployment.cli_home))
    assert filed.returncode == 0 and "as rogue" in filed.stdout, filed.stdout + filed.stderr
    rogue = deployment.start_hospital(outsider, "registered-outsider")
    wait_until(lambda: "SuperNode ID:" in rogue.output() or not rogue.running(), 180, 0.5, "the outsider online")
    assert rogue.running(), rogue.output()[-3000:]
    out = deployment.root / "server" / "runs" / "absent"
    started = time.perf_counter()
    submit = deployment.start("submit-absent", ["bash", "server/entrypoint.sh", "run", str(out)],
                              deployment.cli_home, [], FEDHEALTH_STUDY=str(study), FEDHEALTH_APP=deployment.app_spec)
    assert submit.wait(300) == 1, submit.output()[-4000:] + deployment.logs()
    print(f"\n[deployment] a study with an absent hospital stopped {time.perf_counter() - started:.0f} s after "
          "submission (wait_for_hospitals = 5 s)")
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "failed" and state["last_round"] == 0, state
    assert ("only 3 of 4 hospitals connected after 5 s (1 other connected node(s) are not this study's hospitals: "
            "registered as 'rogue', not one of this study's hospitals" in state["error"]), state
    assert "the study needs at least 4 (federation.min_hospitals)" in state["error"], state
    rogue.stop()
    assert "[RUN " not in rogue.output() and "Received successfully" not in rogue.output(), rogue.output()[-3000:]
    assert not outsider.app_log.exists()  # nothing reached the outsider: no message, no app
    assert "lower federation.min_hospitals, or raise federation.wait_for_hospitals" in state["error"]
    assert _lines(out / "rounds.jsonl") == [] and _lines(out / "metrics.jsonl") == []
    status = _run([str(BIN / "fedhealth"), "status", str(out)])
    assert status.returncode == 1 and "only 3 of 4 hospitals connected" in status.stdout, status.stdout
    assert hospital_files() == before  # nothing trained, nothing charged, nothing sent


def test_an_aggregate_below_a_hospitals_minimum_after_a_dropout_releases_nothing_of_it(deployment):
    """A fourth hospital joins (registered, its own keys, approval and policy) and takes part in SecAgg+ key
    sharing, then declines at training (its policy allows only the MLP): a real dropout after key sharing.
    Three masked vectors meet the study's minimum of 3, so the honest coordinator asks for unmasking; but
    cleveland's data-protection officer has raised its minimum aggregate to 4 (the policy file is read each
    round). Cleveland refuses to unmask, and with reconstruction threshold 3 the two others' shares are too
    few to remove any mask: the round fails, nothing is aggregated, and the server never reads cleveland's
    minimum (only the category of its refusal)."""
    from fedhealth.deployment.app_trust import Registry, sign_fab
    from fedhealth.security.certs import add_hospital_public_key, approval_key_id

    _ensure_hospitals_online(deployment)
    name = "switzerland"
    site = deployment.sites[name] = _make_site(deployment.root, name)
    (site.root / "policy.toml").write_text('max_epsilon = 5.0\nmax_delta = 1e-5\nallowed_models = ["mlp"]\n')
    add_hospital_public_key(deployment.pki, name, site.pub)
    registered = _run(["bash", "server/deploy.sh", "register", "--pki", str(deployment.pki),
                       "--hospital", name], FLWR_HOME=str(deployment.cli_home))
    assert registered.returncode == 0, registered.stdout + registered.stderr
    registry = Registry(deployment.registry)
    fab_path, _ = registry.lookup("@fedhealth/fedhealth", deployment.app_spec.rpartition("==")[2])
    registry.add_signature(sign_fab(fab_path.read_bytes(), site.keys / "app_approval", approval_key_id(name)))

    cleveland = deployment.sites["cleveland"]
    policy = cleveland.root / "policy.toml"
    kept = policy.read_text()
    study = _study_file(deployment.root, rounds=1)
    text = study.read_text().replace('name = "heart-disease-deployment"', 'name = "heart-disease-dropout"', 1)
    # a small budget: the restart test above may have spent 3 of va-long-beach's lifetime cap of 4 already
    text = text.replace("target_epsilon = 3.0", "target_epsilon = 0.5", 1)
    assert "target_epsilon = 0.5" in text
    text += '\n[[hospitals]]\nname = "switzerland"\nrecords = 123\ntier = "secondary"\nregion = "Zurich, CH"\n'
    study = study.with_name("study-with-a-dropout.toml")
    study.write_text(text)
    out = deployment.root / "server" / "runs" / "dropout"
    node = deployment.start_hospital(site)
    try:
        wait_until(lambda: "SuperNode ID:" in node.output() or not node.running(), 180, 0.5, f"{name} activated")
        assert node.running(), node.output()[-3000:]
        policy.write_text(kept.replace("min_hospitals = 3", "min_hospitals = 4"))
        assert "min_hospitals = 4" in policy.read_text()
        started = time.perf_counter()
        submit = deployment.start("submit-dropout", ["bash", "server/entrypoint.sh", "run", str(out)],
                                  deployment.cli_home, [], FEDHEALTH_STUDY=str(study),
                                  FEDHEALTH_APP=deployment.app_spec)
        assert submit.wait(480) == 1, submit.output()[-4000:] + deployment.logs()
        print(f"\n[deployment] 4 hospitals, one dropped out after key sharing, aggregate refused by the hospital "
              f"with the higher minimum: {time.perf_counter() - started:.0f} s")
    finally:
        policy.write_text(kept)
        node.stop()

    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "failed" and "NothingAggregated" in state["error"], state
    (round_one,) = _lines(out / "rounds.jsonl")
    assert round_one["status"] == "failed" and round_one["hospitals_aggregated"] == [], round_one
    assert round_one["hospitals_trained"] == [0, 1, 2], round_one
    assert round_one["failure"].startswith("SecAgg+ unmask stage could not complete"), round_one["failure"]
    assert round_one["declined"] == [{"hospital_index": 3, "reason": "its site policy", "epsilon": None}]
    # the server reads the category of cleveland's refusal, never its minimum
    assert round_one["fit_failures"] == ["refusing to unmask: fewer contributors than its minimum aggregate"]
    # nothing was unmasked: the round's checkpoint is the global model every hospital was sent, unchanged
    from fedhealth.privacy.audit import hash_arrays
    from fedhealth.runs import rundir

    sent = _lines(cleveland.audit)[-1]
    assert sent["decision"] == "sent" and sent["round"] == 1 and sent["update_sha256"], sent
    kept_model = hash_arrays(rundir.load_weights(rundir.checkpoint_path(out, 1))[0])
    assert kept_model == sent["global_model_sha256"]
    # the hospital that dropped out trained and spent nothing; the full reason stays in its own audit log
    assert not list(site.ledger.glob("*.json")), sorted(p.name for p in site.ledger.glob("*"))
    (refusal,) = _lines(site.audit)
    assert refusal["update_sha256"] is None and refusal["epsilon_charged"] == 0.0, refusal
    assert refusal["decision"] == "declined: model 'logreg' is not allowed by the site policy; declining this round"


# ---------------------------------------------------------------- who reaches the Control API, which code runs


def _listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP port listens on (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add("127.0.0.1" if address == "0100007F" else address)
    return found


def test_a_hospitals_credentials_reach_only_the_fleet_api(deployment, tmp_path):
    """A hospital (or anyone on the hospitals' network) holds the study CA and its own registered node key. At
    the address it dials it can be a SuperNode, but it cannot submit a run, register a key or talk to the Runtime
    API: Flower 1.41 serves all three APIs on one port and the Control API has no authentication of its own, so
    the SuperLink listens on loopback only and the gateway passes the Fleet API alone."""
    import httpx

    from fedhealth.security.certs import init_hospital_keys

    home = tmp_path / "hospital-flwr-home"
    connected = _run(["bash", "server/deploy.sh", "connect", "--address", deployment.address,
                      "--ca", str(deployment.ca)], FLWR_HOME=str(home))
    assert connected.returncode == 0, connected.stderr
    intruder = init_hospital_keys(tmp_path / "intruder-keys", "intruder")
    register = _run([str(BIN / "flwr"), "supernode", "register", str(intruder.node.public_key),
                     "fedhealth-deployment"], FLWR_HOME=str(home))
    submit = _run([str(BIN / "flwr"), "run", ".", "fedhealth-deployment", "--run-config",
                   "config='configs/smoke.toml'"], FLWR_HOME=str(home), timeout=120)
    for done in (register, submit):
        assert done.returncode != 0, done.stdout + done.stderr
        assert "registered successfully" not in done.stdout and "Successfully started run" not in done.stdout
    gateway = deployment.service("gateway").output()
    assert "refused POST /v1/control/register-node from 127.0.0.1" in gateway, gateway
    assert "refused POST /v1/control/start-run from 127.0.0.1" in gateway, gateway
    # the Runtime API (what a ServerApp process uses) is closed too; the Fleet API is forwarded (401 without a key)
    with httpx.Client(verify=str(deployment.ca), base_url=f"https://{deployment.address}") as client:
        assert client.post("/v1/runtime/get-run", content=b"").status_code == 403
        assert client.post("/v1/fleet/get-run", content=b"").status_code not in (403, 404)
    # the SuperLink itself (Control API included) listens on loopback only, and a wider bind is refused
    assert _listening_addresses(deployment.link_port) == {"127.0.0.1"}
    exposed = _run(["bash", "server/deploy.sh", "start", "--pki", str(deployment.pki), "--host", "0.0.0.0",
                    "--port", str(free_port()), "--database", str(tmp_path / "state.db")])
    assert exposed.returncode == 2 and "--host 0.0.0.0 is refused" in exposed.stderr, exposed.stderr
    assert "Starting Flower SuperLink" not in exposed.stdout + exposed.stderr
    # and the intruder's key never reached the SuperLink's registry
    listed = _run([str(BIN / "flwr"), "supernode", "list", "fedhealth-deployment", "--format", "json"],
                  FLWR_HOME=str(deployment.cli_home))
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert intruder.node.public_key.read_text().split()[1] not in listed.stdout


def _operator_patched_fab(version: str) -> bytes:
    """The study app with a change only the operator made, built exactly as Flower builds FABs."""
    from flwr.cli.build import build_fab_from_files
    from flwr.cli.utils import collect_files

    files: dict[str, bytes | Path] = dict(collect_files(ROOT))
    pyproject = (ROOT / "pyproject.toml").read_text()
    files["pyproject.toml"] = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject, count=1).encode()
    files["clients/app.py"] = (ROOT / "clients" / "app.py").read_bytes() + b"\n# the operator's own change\n"
    return build_fab_from_files(files)[0]


def test_a_hospital_runs_only_app_versions_it_approved(deployment, tmp_path):
    """The operator submits (1) the local app unsigned, as `flwr run .` does, and (2) a patched version it
    published with signatures of its own, one under a hospital's key id. Every hospital's SuperNode (Flower's
    --trusted-entities) refuses both before any app process starts: the data file is never opened, nothing is
    charged or audited, the FAB is never installed; the hospital's own app-check log names each refused app.
    (The approved version runs in the study test above.)"""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from fedhealth.deployment.app_trust import Registry, sign_fab, summarize_fab

    _ensure_hospitals_online(deployment)
    patched = _operator_patched_fab("0.1.99")
    operator_key = ed25519.Ed25519PrivateKey.generate()
    registry = Registry(deployment.registry)
    registry.publish(patched)
    for key_id in ("operator", "cleveland-approval"):  # a signature under the hospital's id, by the operator's key
        registry.add_signature(sign_fab(patched, operator_key, key_id))
    patched_sha = summarize_fab(patched).sha256
    study = _study_file(deployment.root, rounds=1)

    def hospital_files() -> dict[str, bytes]:
        paths = [p for name in HOSPITALS for p in (deployment.sites[name].ledger / f"{name}.json",
                                                   deployment.sites[name].audit)]
        return {str(p): p.read_bytes() if p.exists() else b"" for p in paths}

    before = hospital_files()
    for name in HOSPITALS:  # atime 0 and mtime now: any read of the file sets its atime (relatime)
        data = deployment.sites[name].data
        os.utime(data, (0, data.stat().st_mtime))
    runs = {"unsigned": ".", "patched": "@fedhealth/fedhealth==0.1.99"}
    submits = {label: deployment.start(f"submit-{label}", ["bash", "server/entrypoint.sh", "run",
                                                           str(deployment.root / "server" / "runs" / label)],
                                       deployment.cli_home, [], FEDHEALTH_STUDY=str(study), FEDHEALTH_APP=app)
               for label, app in runs.items()}
    started = time.perf_counter()

    def refusals(name: str) -> list[dict]:
        return [e for e in _lines(deployment.sites[name].app_log) if e["decision"].startswith("refused")]

    wait_until(lambda: all(len(refusals(n)) >= 2 for n in HOSPITALS) or
               not any(s.running() for s in submits.values()), 300, 0.5, "every hospital refused both apps")
    for submit in submits.values():
        assert submit.wait(300) is not None, submit.output()[-3000:]
    print(f"\n[deployment] two unapproved apps refused by 3 hospitals, runs ended after "
          f"{time.perf_counter() - started:.0f} s")
    run_ids = {label: re.search(r"Successfully started run (\d+)", s.output()).group(1) for label, s in submits.items()}
    for name in HOSPITALS:
        site = deployment.sites[name]
        by_run = {e["run_id"]: e for e in refusals(name)}
        unsigned, signed = by_run[run_ids["unsigned"]], by_run[run_ids["patched"]]
        assert unsigned["decision"].startswith("refused: the FAB carries no signature"), unsigned
        assert unsigned["app_id"] == "@fedhealth/fedhealth" and unsigned["signed_by"] == []
        assert signed["fab_sha256"] == patched_sha and signed["version"] == "0.1.99", signed
        assert signed["signed_by"] == ["cleveland-approval", "operator"] and signed["verified_by"] == [], signed
        log = "\n".join(s.output() for s in deployment.services if s.name == name or s.name.startswith(f"{name}-"))
        assert "App verification is not supported by the connected SuperLink" in log  # Flower's own refusals
        assert "FAB verification failed" in log
        assert site.data.stat().st_atime == 0, f"{name}: the data file was read"
        installed = [p.name for p in (site.root / "flwr-home").rglob("*") if patched_sha[:8] in p.name]
        assert not installed, installed
    assert hospital_files() == before  # nothing trained, charged or audited
    data = deployment.sites["cleveland"].data
    data.read_bytes()
    assert data.stat().st_atime > 0  # the check above could see a read


# ---------------------------------------------------------------- separate network namespaces


@dataclass
class Netns:
    """Network namespaces joined by a bridge in the server's namespace; deleted on close."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    names: list[str] = field(default_factory=list)

    def ip(self, *args: str, ns: str | None = None) -> None:
        cmd = ["ip", *(["-n", ns] if ns else []), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")

    def add(self, role: str) -> str:
        name = f"fh-{self.tag}-{role}"
        self.ip("netns", "add", name)
        self.names.append(name)
        self.ip("link", "set", "lo", "up", ns=name)
        return name

    def close(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = Netns()
    try:
        server = probe.add("probe")
        probe.ip("link", "add", f"fhp{probe.tag}", "type", "veth", "peer", "name", f"fhq{probe.tag}")
        probe.ip("link", "set", f"fhq{probe.tag}", "netns", server)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        return f"`ip netns` / veth do not work here: {err}"
    finally:
        subprocess.run(["ip", "link", "del", f"fhp{probe.tag}"], capture_output=True, timeout=10)
        probe.close()
    return None


def test_hospitals_in_their_own_network_namespaces_reach_the_superlink_only_over_its_tls_address(tmp_path):
    """Server and each hospital in separate network namespaces (own loopback, own address), joined by a
    bridge: the SuperNodes dial the SuperLink's address, which its certificate names, and authenticate."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    net, services = Netns(), []
    subnet = f"10.{int(net.tag[:2], 16) % 200 + 20}.{int(net.tag[2:4], 16)}"
    server_ip, port = f"{subnet}.1", 9093  # a namespace has its own ports: no clash with the host's
    pki = tmp_path / "pki"
    try:
        made = _run([str(BIN / "fedhealth"), "certs", "init", "--out", str(pki), "--server-name", server_ip,
                     "--server-name", "127.0.0.1"])
        assert made.returncode == 0, made.stderr
        sites = {name: _make_site(tmp_path / "sites", name) for name in HOSPITALS}
        from fedhealth.security.certs import add_hospital_public_key

        for name, site in sites.items():
            add_hospital_public_key(pki, name, site.pub)
        server = net.add("srv")
        bridge = f"fhb{net.tag}"
        net.ip("link", "add", bridge, "type", "bridge", ns=server)
        net.ip("addr", "add", f"{server_ip}/24", "dev", bridge, ns=server)
        net.ip("link", "set", bridge, "up", ns=server)
        namespaces = {}
        for i, name in enumerate(HOSPITALS, start=1):
            ns = net.add(f"h{i}")
            outside, inside = f"fh{net.tag}o{i}", f"fh{net.tag}i{i}"
            net.ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            net.ip("link", "set", outside, "netns", server)
            net.ip("link", "set", inside, "netns", ns)
            net.ip("link", "set", outside, "master", bridge, ns=server)
            net.ip("link", "set", outside, "up", ns=server)
            net.ip("addr", "add", f"{subnet}.{10 + i}/24", "dev", inside, ns=ns)
            net.ip("link", "set", inside, "up", ns=ns)
            namespaces[name] = ns

        def start(name: str, ns: str, cmd: list[str], home: Path) -> Service:
            service = Service(name, ["ip", "netns", "exec", ns, *cmd], tmp_path / "logs" / f"{name}.log",
                              env={"FLWR_HOME": str(home), "PATH": _env()["PATH"]}, cwd=ROOT)
            services.append(service.start())
            return service

        # the SuperLink (Fleet, Control and Runtime APIs on one port) on the server's loopback only; the hospitals'
        # address is the gateway, which passes the Fleet API alone
        link_port = 9092
        superlink = start("superlink", server, ["bash", "server/deploy.sh", "start", "--pki", str(pki),
                                                "--host", "127.0.0.1", "--port", str(link_port),
                                                "--database", str(tmp_path / "state.db")], tmp_path / "srv-home")
        gateway = start("gateway", server, ["bash", "server/deploy.sh", "gateway", "--pki", str(pki),
                                            "--host", server_ip, "--port", str(port), "--server-name", server_ip,
                                            "--superlink", f"127.0.0.1:{link_port}"], tmp_path / "srv-home")
        wait_until(lambda: "Uvicorn running on https://" in superlink.output() or not superlink.running(), 120,
                   what="the SuperLink listening in its namespace")
        assert superlink.running(), superlink.output()
        assert gateway.running(), gateway.output()
        cli_home = tmp_path / "operator-home"
        for cmd in (["connect", "--address", f"127.0.0.1:{link_port}", "--pki", str(pki)],
                    ["register", "--pki", str(pki)]):
            done = subprocess.run(["ip", "netns", "exec", server, "bash", "server/deploy.sh", *cmd],
                                  cwd=ROOT, env=_env(FLWR_HOME=str(cli_home)), capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
        nodes = {}
        for name, ns in namespaces.items():
            site = sites[name]
            site.port = 9094  # each namespace has its own ports
            nodes[name] = start(name, ns, site.args(f"{server_ip}:{port}", pki / "ca" / "ca.crt"),
                                site.root / "flwr-home")

        def dial(ns: str, host: str, to: int) -> subprocess.CompletedProcess:
            return subprocess.run(["ip", "netns", "exec", ns, str(BIN / "python"), "-c",
                                   f"import socket; socket.create_connection(('{host}', {to}), timeout=2)"],
                                  capture_output=True, text=True, timeout=30)

        # a hospital's own loopback is not the server's: dialing 127.0.0.1 finds nothing there
        local = dial(namespaces["hungary"], "127.0.0.1", port)
        assert local.returncode != 0 and "Connection refused" in local.stderr
        # and from the hospitals' network the SuperLink's own port (the Control API) is closed
        control = dial(namespaces["hungary"], server_ip, link_port)
        assert control.returncode != 0 and "Connection refused" in control.stderr, control.stderr
        for name, node in nodes.items():
            wait_until(lambda n=node: "SuperNode ID:" in n.output() or not n.running(), 120,
                       what=f"hospital {name} registered")
            assert node.running() and "SuperNode ID:" in node.output(), node.output()[-3000:]
    finally:
        for service in reversed(services):
            service.stop()
        net.close()
        leftovers = {p for s in services for p in s.processes()}
        assert not leftovers, f"processes left running: {sorted(leftovers)}"


def test_a_cohort_description_runs_on_the_deployment_engine_charged_beside_training(deployment):
    """`server/entrypoint.sh describe` (issue 19): the study's cohort described in one SecAgg+ round of the
    deployed hospitals, each reading its own file, noised for epsilon 1 and charged to the same ledger its
    training rounds (earlier in this file) were charged to, so the two compose in one budget; Table 1 is written
    from the unmasked sum. Asked for exact statistics instead, every deployed hospital declines, charging and
    sending nothing."""
    from fedhealth.data.cohort_records import cohort_records
    from fedhealth.data.study_file import load_config
    from fedhealth.privacy.ledger import epsilon_of
    from fedhealth.statistics.study import description_terms
    from fedhealth.study.config import description_of
    from fedhealth.study.policy import SitePolicy

    _ensure_hospitals_online(deployment)
    study = _study_file(deployment.root, rounds=1)
    cfg = description_of(load_config(study), epsilon=1.0)
    terms = description_terms(cfg)

    def ledgers() -> dict[str, list[dict]]:
        return {name: json.loads(p.read_text())["entries"] if (p := deployment.sites[name].ledger / f"{name}.json")
                .exists() else [] for name in HOSPITALS}

    before = ledgers()
    out = deployment.root / "server" / "runs" / "describe"
    submit = deployment.start("submit-describe", ["bash", "server/entrypoint.sh", "describe", str(out)],
                              deployment.cli_home, [], FEDHEALTH_STUDY=str(study), FEDHEALTH_APP=deployment.app_spec,
                              FEDHEALTH_EPSILON="1.0")
    assert submit.wait(300) == 0, submit.output()[-4000:] + deployment.logs()
    assert json.loads((out / "state.json").read_text())["status"] == "completed"
    description = json.loads((out / "description.json").read_text())
    assert description["hospitals"] == list(HOSPITALS) and description["epsilon"] == 1.0
    assert all(row["privacy"].startswith("epsilon 1 per hospital")
               for row in csv.DictReader((out / "table1.csv").open()))
    true_n = sum(len(cohort_records(cfg, i, str(deployment.sites[h.name].data)).records.label)
                 for i, h in enumerate(cfg.hospitals))
    assert abs(description["n"] - true_n) <= 4 * description["noise_sd"]  # the noised count of every record
    after = ledgers()
    for name in HOSPITALS:
        new = after[name][len(before[name]):]
        assert after[name][:len(before[name])] == before[name] and len(new) == 1, (name, new)
        entry = new[0]
        assert (entry["sample_rate"], entry["steps"]) == (1.0, 1)
        assert entry["noise_multiplier"] == pytest.approx(terms.noise_multiplier)
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in after[name]]
        assert entry["epsilon"] == pytest.approx(epsilon_of(history, terms.delta))  # composed with training
        assert entry["epsilon"] <= SitePolicy.from_file(deployment.sites[name].root / "policy.toml").max_epsilon

    exact = deployment.root / "server" / "runs" / "describe-exact"
    submit = deployment.start("submit-describe-exact", ["bash", "server/entrypoint.sh", "describe", str(exact)],
                              deployment.cli_home, [], FEDHEALTH_STUDY=str(study), FEDHEALTH_APP=deployment.app_spec)
    assert submit.wait(300) == 1, submit.output()[-4000:]
    assert not (exact / "table1.csv").exists()
    rows = _lines(exact / "rounds.jsonl")
    assert rows and not rows[0].get("hospitals_aggregated"), rows
    assert {d["reason"] for d in rows[0]["declined"]} == {"its site policy"}, rows
    assert ledgers() == after  # nothing charged
