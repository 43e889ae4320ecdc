"""`fedhealth deploy demo`: a whole three-hospital deployment on one host, driven through the deploy scripts.

Why it drives `server/deploy.sh` and `clients/deploy.sh` rather than calling Flower directly: the demo is
the walk-through of docs/deployment.md done by a program, so a hospital's IT sees the same commands, the same
checks and the same logs as when it follows the page by hand. Those scripts (and the heart-disease data
copies each hospital gets) live in a source checkout, not in an installed package, so the demo refuses to
run anywhere else (`checkout_root`).

Native route (`run_demo`): the operator's PKI, each hospital's folder (data copy, schema copy, policy, its
own keys, its approval of the app), a TLS SuperLink on 127.0.0.1 behind the Fleet-only gateway, the keys
registered, three SuperNodes, the study submitted with `flwr run`, then everything stopped. Every party has
a Flower home of its own (`FLWR_HOME`), and every port is a free one on 127.0.0.1. The result is one JSON
line of figures (state, rounds, each hospital's audit-log verification and ledger).

Compose route (`lay_out_compose`): the same folders, laid out for `configs/deployment/compose.yaml`
(a server certificate naming the `superlink` container), and the docker compose commands to run.

`Host` is also what `benchmarks/bench_deployment.py` builds its resilience scenarios on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedhealth.deployment.processes import FLOWER_ENV, PROJECT, Service, free_port, runtime_mark, wait_until
from fedhealth.errors import DeploymentError

HOSPITALS = {"cleveland": "cleveland.csv", "hungary": "hungary.csv", "va-long-beach": "va_long_beach.csv"}
STUDY = "configs/deployment/heart-disease.toml"  # relative to the app (the FAB), as `flwr run` takes it
DATA = Path("configs") / "data" / "heart-disease"  # relative to the checkout
# What a checkout has and an installed package lacks: the deploy scripts and the hospitals' data copies.
CHECKOUT_FILES = ("server/deploy.sh", "clients/deploy.sh", "configs/deployment/heart-disease.toml",
                  "configs/data/heart-disease/schema.toml", "pyproject.toml")


class DemoError(DeploymentError, RuntimeError):
    """The demo cannot run here (no source checkout, a folder in use) or a step of it failed."""


def checkout_root(root: Path = PROJECT) -> Path:
    """The source checkout this package runs from; DemoError naming what is missing when it is not one."""
    missing = [name for name in CHECKOUT_FILES if not (root / name).is_file()]
    missing += [f"{DATA}/{csv}" for csv in HOSPITALS.values() if not (root / DATA / csv).is_file()]
    if missing:
        raise DemoError(
            f"fedhealth deploy demo runs from a source checkout (it drives server/deploy.sh and clients/deploy.sh "
            f"and copies configs/data/heart-disease/ to each hospital), but fedhealth is loaded from {root}, which "
            f"lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}. Clone the repository, run "
            "`bash scripts/setup.sh` there and run `.venv/bin/fedhealth deploy demo` from it")
    return root


def _bin_dir(root: Path) -> Path:
    """Where `fedhealth` and `flwr` are: the checkout's .venv when there is one, else this Python's bin."""
    venv = root / ".venv" / "bin"
    return venv if (venv / "flwr").exists() else Path(sys.executable).parent


def new_folder(path: Path) -> Path:
    """`path`, absolute, created; DemoError if it holds anything (the demo never writes into a used folder)."""
    path = path.expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise DemoError(f"{path}: exists and is not a folder; name a new folder for the demo")
    if path.is_dir() and any(path.iterdir()):
        raise DemoError(f"{path}: exists and is not empty; remove it or name another folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Host:
    """The operator's side (PKI, SuperLink, gateway, registry, flwr CLI) and the three hospitals' folders under
    one workdir, each party with its own Flower home, all on 127.0.0.1 and free ports."""

    def __init__(self, workdir: Path, root: Path | None = None,
                 hospitals: dict[str, tuple[Path, Path, Path]] | None = None) -> None:
        """`hospitals`: name -> (data file, schema, site policy), relative to the checkout; default the
        heart-disease deployment's three (`HOSPITALS`, `DATA`, configs/deployment/policy-NAME.toml)."""
        self.root = checkout_root(root or PROJECT)
        self.hospitals = hospitals or {
            name: (DATA / csv, DATA / "schema.toml", Path("configs") / "deployment" / f"policy-{name}.toml")
            for name, csv in HOSPITALS.items()}
        self.bin = _bin_dir(self.root)
        self.dir = new_folder(workdir)
        self.pki = self.dir / "operator" / "pki"
        self.cli_home = self.dir / "operator" / "flwr-home"  # the operator's flwr CLI
        self.port = free_port()  # the gateway: the hospitals' address (Fleet API only)
        self.link_port = free_port()  # the SuperLink on loopback (its Control API is the operator's only)
        self.registry_port = free_port()
        self.ports = {h: free_port() for h in self.hospitals}
        self.app = ""  # the approved app version, @publisher/name==x.y.z
        self.services: dict[str, Service] = {}
        self.address = f"127.0.0.1:{self.port}"  # what the hospitals dial
        self.control_address = f"127.0.0.1:{self.link_port}"  # what the operator's flwr CLI dials
        # clients/deploy.sh --clientapp for every hospital (None: the script's default) and extra environment
        # for their SuperNodes (e.g. FEDHEALTH_SUPERNODE_POLL_INTERVAL); benchmarks compare the settings
        self.clientapp: str | None = None
        self.node_env: dict[str, str] = {}

    def env(self, **extra: str) -> dict[str, str]:
        path = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, **FLOWER_ENV, "PATH": path, **extra}

    def sh(self, *cmd: str, timeout: float = 120, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        done = subprocess.run(list(cmd), cwd=self.root, env=self.env(**extra), capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise DemoError(f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def site(self, name: str) -> Path:
        return self.dir / "hospitals" / name

    def state(self, name: str) -> Path:
        """Where a hospital's ledger/ and audit/ are: its folder here (a container host: its state volume)."""
        return self.site(name)

    def prepare(self) -> None:
        """The operator's `fedhealth certs init`; each hospital's folder (data copy, read-only; schema copy;
        policy) and its own keys (`fedhealth certs hospital-keys`), of which the operator files only the .pub;
        the app built, reviewed and approved by each hospital, published with the approvals."""
        fedhealth = str(self.bin / "fedhealth")
        self.sh(fedhealth, "certs", "init", "--out", str(self.pki))
        registry = self.dir / "operator" / "registry"
        fab = self.dir / "operator" / "app.fab"
        self.sh(fedhealth, "app", "build", "--out", str(fab))
        review = json.loads(self.sh(fedhealth, "app", "review", str(fab), "--json").stdout)
        self.app = f"{review['app_id']}=={review['version']}"
        self.sh(fedhealth, "app", "publish", str(fab), "--dir", str(registry))
        for name, (data, schema, policy) in self.hospitals.items():
            site = self.site(name)
            site.mkdir(parents=True)
            shutil.copy(self.root / data, site / "data.csv")
            (site / "data.csv").chmod(0o444)
            shutil.copy(self.root / schema, site / "schema.toml")
            shutil.copy(self.root / policy, site / "policy.toml")
            self.sh(fedhealth, "certs", "hospital-keys", "--out", str(site / "keys"), "--hospital", name)
            self.sh(fedhealth, "certs", "add-hospital", str(site / "keys" / "supernode_auth.pub"), "--pki",
                    str(self.pki), "--hospital", name)
            self.sh(fedhealth, "app", "approve", str(fab), "--key", str(site / "keys" / "app_approval"), "--hospital",
                    name, "--sha256", review["sha256"], "--out", str(site / "approval.json"))
            self.sh(fedhealth, "app", "add-signature", str(site / "approval.json"), "--dir", str(registry))

    def start(self, name: str, cmd: list[str], home: Path, marks: list[str],
              env: dict[str, str] | None = None) -> Service:
        service = Service(name, cmd, self.dir / "logs" / f"{name}.log", cwd=self.root, marks=marks,
                          env={"FLWR_HOME": str(home), "PATH": self.env()["PATH"], **(env or {})})
        self.services[name] = service.start()
        return service

    def start_superlink(self) -> Service:
        """The SuperLink on loopback (with the registry it fetches approved apps from) and, once, the gateway
        and the registry."""
        if "registry" not in self.services:
            self.start("registry", ["bash", "server/deploy.sh", "registry", "--dir",
                                    str(self.dir / "operator" / "registry"), "--port", str(self.registry_port)],
                       self.dir / "operator" / "registry-flwr-home", [])
            self.start("gateway", ["bash", "server/deploy.sh", "gateway", "--pki", str(self.pki), "--host",
                                   "127.0.0.1", "--port", str(self.port), "--superlink", self.control_address],
                       self.dir / "operator" / "gateway-flwr-home", [])
        link = self.start("superlink", ["bash", "server/deploy.sh", "start", "--pki", str(self.pki),
                                        "--host", "127.0.0.1", "--port", str(self.link_port),
                                        "--app-registry", f"http://127.0.0.1:{self.registry_port}",
                                        "--database", str(self.dir / "server" / "state.db")],
                          self.dir / "server" / "flwr-home", [runtime_mark(self.link_port)])
        return listening(link, 60)

    def connect_and_register(self) -> None:
        self.sh("bash", "server/deploy.sh", "connect", "--address", self.control_address, "--pki",
                str(self.pki), FLWR_HOME=str(self.cli_home))
        done = self.sh("bash", "server/deploy.sh", "register", "--pki", str(self.pki),
                       FLWR_HOME=str(self.cli_home))
        log(done.stdout.strip())

    def start_hospital(self, name: str) -> Service:
        site = self.site(name)
        cmd = ["bash", "clients/deploy.sh", "--name", name, "--data", str(site / "data.csv"),
               "--schema", str(site / "schema.toml"), "--policy", str(site / "policy.toml"),
               "--ledger-dir", str(site / "ledger"), "--audit-log", str(site / "audit" / "audit.jsonl"),
               "--key", str(site / "keys" / "supernode_auth"),
               "--ca", str(self.pki / "ca" / "ca.crt"), "--superlink", self.address, "--port", str(self.ports[name])]
        if self.clientapp is not None:
            cmd += ["--clientapp", self.clientapp]
        old = self.services.get(name)
        if old is not None and old.running():
            raise DemoError(f"hospital {name} is already running")
        return self.start(name, cmd, site / "flwr-home", [runtime_mark(self.ports[name])], self.node_env)

    def study(self, rounds: int, timeout: float | None = None, wait_for_hospitals: float | None = None) -> str:
        """The deployment study with another round count, SecAgg+ stage timeout or wait for hospitals, as a
        file in the workdir (an absolute `config` works since the server runs on this host)."""
        if rounds == 1 and timeout is None and wait_for_hospitals is None:
            return STUDY
        text = (self.root / STUDY).read_text()
        text = text.replace('schema = "../data/heart-disease/schema.toml"',
                            f'schema = "{self.root / DATA / "schema.toml"}"')
        text = re.sub(r"(?m)^rounds = \d+", f"rounds = {rounds}", text)
        if timeout is not None:
            text = re.sub(r"(?m)^timeout = [0-9.]+", f"timeout = {timeout}", text)
        if wait_for_hospitals is not None:
            text = re.sub(r"(?m)^\[federation\]\n", f"[federation]\nwait_for_hospitals = {wait_for_hospitals}\n",
                          text)
        path = self.dir / "operator" / f"study-{rounds}-rounds.toml"
        path.write_text(text)
        return str(path)

    def submit(self, config: str, out: Path, resume: bool = False) -> Service:
        """`flwr run @fedhealth/fedhealth==x.y.z fedhealth-deployment --stream ...` (the approved version, from the
        registry) as a service (its log is the ServerApp's log)."""
        name = f"flwr-run-{out.name}" + ("-resumed" if resume else "")
        extra = " resume=true" if resume else ""
        return self.start(name, [str(self.bin / "flwr"), "run", self.app, "fedhealth-deployment", "--stream",
                                 "--run-config",
                                 f"config='{config}' out='{out}' references=false{extra}"], self.cli_home, [])

    def restart_until_online(self, name: str, pause: float = 10.0, attempts: int = 12) -> dict[str, Any]:
        """Start a hospital again until its SuperNode is activated. After an unclean exit the SuperLink keeps
        the node online until its heartbeat window passes (2 x 30 s), and refuses to activate it again
        before that ("[code: 2004] Failed to activate SuperNode", exit 305)."""
        t0 = time.perf_counter()
        for attempt in range(1, attempts + 1):
            seen = len(self.services[name].output()) if name in self.services else 0  # the log file is shared
            node = self.start_hospital(name)
            wait_until(lambda n=node, k=seen: "SuperNode ID:" in n.output()[k:] or not n.running(), 120, 0.2,
                       f"{name} activated")
            if node.running():
                return {"attempts": attempt, "online_after_s": round(time.perf_counter() - t0, 1)}
            node.stop()
            log(f"{name}: restart attempt {attempt} refused (exit {node.proc.returncode}); retrying in {pause:.0f} s")
            time.sleep(pause)
        raise DemoError(f"{name} could not rejoin after {attempts} attempts")

    def run_id(self, submitted: Service) -> str | None:
        found = re.search(r"Successfully started run (\d+)", submitted.output())
        return found.group(1) if found else None

    def audit(self, name: str) -> dict[str, Any]:
        from fedhealth.privacy.audit import verify_audit_log

        path = self.state(name) / "audit" / "audit.jsonl"
        if not path.exists():
            return {"entries": 0}
        report = verify_audit_log(path, self.site(name) / "keys" / "audit_signing.pub")
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return {"ok": report.ok, "entries": report.entries, "problem": str(report.problem) if report.problem else None,
                "rounds": [(e["run_id"][-6:], e["round"], e["decision"][:8]) for e in entries]}

    def ledger(self, name: str) -> list[tuple[int, float]]:
        path = self.state(name) / "ledger" / f"{name}.json"
        if not path.exists():
            return []
        return [(e["round"], round(e["epsilon"], 3)) for e in json.loads(path.read_text())["entries"]]

    def stop_all(self) -> None:
        """Stop every service, newest first: the study, then the hospitals, then the SuperLink, the gateway and
        the registry (the order of docs/deployment.md's teardown)."""
        for service in reversed(list(self.services.values())):
            if service.proc is not None:
                service.stop()


def listening(link: Service, timeout: float) -> Service:
    """`link`, once its SuperLink serves HTTPS; DemoError with the end of its log if it stopped first."""
    wait_until(lambda: "Uvicorn running on https://" in link.output() or not link.running(), timeout,
               what="the SuperLink listening")
    if not link.running():
        raise DemoError(f"the SuperLink stopped:\n{link.output()[-3000:]}")
    return link


def hand_to_containers(folder: Path, uid: int) -> None:
    """Give `folder` to the containers' account (the key files are 0600), all but the study CA's private key,
    which no container mounts and which stays the operator's."""
    for path in [folder, *folder.rglob("*")]:
        if path.name != "ca.key":
            os.chown(path, uid, uid, follow_symlinks=False)


def rounds_of(out: Path) -> list[dict[str, Any]]:
    path = out / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def state_of(out: Path) -> str:
    try:
        return str(json.loads((out / "state.json").read_text())["status"])
    except (OSError, ValueError, KeyError):
        return "missing"


def summary(host: Host, out: Path, **figures: Any) -> dict[str, Any]:
    """The figures every scenario ends with: the run's state and rounds, each hospital's audit log and ledger."""
    return {**figures, "state": state_of(out),
            "rounds": [{k: r.get(k) for k in ("round", "status", "hospitals_aggregated", "seconds", "failure")}
                       for r in rounds_of(out)],
            "audit": {h: host.audit(h) for h in HOSPITALS}, "ledger": {h: host.ledger(h) for h in HOSPITALS}}


def demo(host: Host, rounds: int, studies: int = 1) -> dict[str, Any]:
    """The study to the end (`studies` times in a row, same hospitals, ledgers and audit logs)."""
    t0 = time.perf_counter()
    host.start_superlink()
    host.connect_and_register()
    for name in HOSPITALS:
        host.start_hospital(name)
    runs = []
    out = host.dir / "server" / "runs" / "demo"
    for i in range(1, studies + 1):
        out = host.dir / "server" / "runs" / (f"demo-{i}" if studies > 1 else "demo")
        started = time.perf_counter()
        run = host.submit(host.study(rounds), out)
        run.wait(3600)
        runs.append({"run_dir": str(out), "run_id": host.run_id(run), "flwr_run_exit": run.proc.returncode,
                     "state": state_of(out), "seconds": round(time.perf_counter() - started, 1),
                     "ledger_after": {h: host.ledger(h) for h in HOSPITALS}})
        log(f"study {i}: {runs[-1]['state']} in {runs[-1]['seconds']} s")
    return summary(host, out, seconds=round(time.perf_counter() - t0, 1), runs=runs)


def run_demo(workdir: Path, rounds: int = 1, studies: int = 1, keep_running: bool = False) -> dict[str, Any]:
    """The native demo in `workdir` (new or empty): returns its figures, `{"scenario": "demo", ...}`.

    Everything it started is stopped at the end unless `keep_running` (then the SuperLink, gateway, registry
    and SuperNodes stay up; their pids are in the result, and docs/deployment.md's teardown stops them)."""
    host = Host(workdir)
    log(f"setting up {host.dir}: the operator's PKI, three hospitals' folders and keys, the approved app")
    host.prepare()
    try:
        result = demo(host, rounds, studies)
    finally:
        if not keep_running:
            host.stop_all()
    if keep_running:
        result["running"] = {name: s.pid for name, s in host.services.items() if s.running()}
    return {"scenario": "demo", **result}


def lay_out_compose(workdir: Path) -> str:
    """Lay out `workdir` (new or empty) for configs/deployment/compose.yaml and return the commands to run.

    Certificates that name the `superlink` container; each hospital's folder with its data copy (read-only),
    schema, policy and its own keys; only each hospital's public key and its approval of the app reach the
    operator's side (`server/state/registry`)."""
    root = checkout_root()
    bindir = _bin_dir(root)
    folder = new_folder(workdir)
    env = {**os.environ, **FLOWER_ENV, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def fedhealth(*args: str) -> None:
        done = subprocess.run([str(bindir / "fedhealth"), *args], cwd=root, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise DemoError(f"fedhealth {' '.join(args)} exited {done.returncode}\n{done.stdout}{done.stderr}")
        if done.stdout.strip():
            print(done.stdout.rstrip(), flush=True)

    fedhealth("certs", "init", "--out", str(folder / "pki"), "--server-name", "superlink", "--server-name",
              "localhost", "--server-name", "127.0.0.1")
    registry = folder / "server" / "state" / "registry"
    registry.parent.mkdir(parents=True)
    fab = folder / "app.fab"
    fedhealth("app", "build", "--out", str(fab))
    sha = hashlib.sha256(fab.read_bytes()).hexdigest()
    fedhealth("app", "publish", str(fab), "--dir", str(registry))
    for name, csv in HOSPITALS.items():
        site = folder / "hospitals" / name
        (site / "state").mkdir(parents=True)
        for source, target in ((DATA / csv, "data.csv"), (DATA / "schema.toml", "schema.toml"),
                               (Path("configs") / "deployment" / f"policy-{name}.toml", "policy.toml")):
            shutil.copy(root / source, site / target)
            (site / target).chmod(0o444)
        # at the hospital: its own keys; only supernode_auth.pub and its approval of the app go to the operator
        fedhealth("certs", "hospital-keys", "--out", str(site / "keys"), "--hospital", name)
        fedhealth("app", "approve", str(fab), "--key", str(site / "keys" / "app_approval"), "--hospital", name,
                  "--sha256", sha, "--out", str(site / "approval.json"))
        fedhealth("certs", "add-hospital", str(site / "keys" / "supernode_auth.pub"), "--pki", str(folder / "pki"),
                  "--hospital", name)
        fedhealth("app", "add-signature", str(site / "approval.json"), "--dir", str(registry))
    # The containers run as FEDHEALTH_UID, which must own the 0600 key files: the caller's uid, or the images'
    # own service account (10001) rather than root
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        uid = gid = 10001
        hand_to_containers(folder, uid)
    compose = "docker compose -f configs/deployment/compose.yaml"
    return "\n".join([
        "", f"{folder} is ready for configs/deployment/compose.yaml. From the repository root ({root}), with",
        "docker compose (or podman-compose, with the same arguments):", "",
        "  bash scripts/build_images.sh",
        f"  export FEDHEALTH_DEMO={folder} FEDHEALTH_UID={uid} FEDHEALTH_GID={gid}",
        f"  {compose} up -d superlink gateway registry",
        f"  {compose} exec -T superlink /opt/fedhealth/server/entrypoint.sh register",
        f"  {compose} up -d cleveland hungary va-long-beach",
        f"  {compose} exec -T superlink /opt/fedhealth/server/entrypoint.sh run",
        f"  {compose} down", ""])
