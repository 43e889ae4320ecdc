"""A whole deployment on one host, driven through the deployment scripts: the demo and the resilience runs.

    python scripts/_deploy.py demo --workdir deploy-demo            # 3 hospitals, the study to the end
    python scripts/_deploy.py supernode-restart --workdir /tmp/r1   # a hospital restarted between rounds / mid-round
    python scripts/_deploy.py superlink-restart --workdir /tmp/r2   # the SuperLink restarted mid-study
    python scripts/_deploy.py absent-hospital --workdir /tmp/r3     # one hospital never connects (then late)

Every process is started with `server/deploy.sh` / `clients/deploy.sh` exactly as
docs/deployment.md shows, on 127.0.0.1 and free ports, and stopped (with everything Flower started below
it) on exit. Each command ends by printing one JSON line of figures (seconds, statuses, audit entries).
The workdir keeps the PKI, each hospital's folder (data copy, policy, ledger, audit log), the logs and
the server's run directories for inspection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedhealth.deployment.processes import FLOWER_ENV, Service, free_port, runtime_mark, wait_until  # noqa: E402

BIN = ROOT / ".venv" / "bin"
DATA = ROOT / "configs" / "data" / "heart-disease"
HOSPITALS = {"cleveland": "cleveland.csv", "hungary": "hungary.csv", "va-long-beach": "va_long_beach.csv"}
STUDY = "configs/deployment/heart-disease.toml"


def env(**extra: str) -> dict[str, str]:
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}" if BIN.is_dir() else os.environ.get("PATH", "")
    return {**os.environ, **FLOWER_ENV, "PATH": path, **extra}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Host:
    """The operator's side (PKI, SuperLink, flwr CLI) and the three hospitals' folders under one workdir."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir.resolve()
        if self.dir.exists() and any(self.dir.iterdir()):
            raise SystemExit(f"error: {self.dir} exists and is not empty; choose a new --workdir")
        self.pki = self.dir / "operator" / "pki"
        self.cli_home = self.dir / "operator" / "flwr-home"
        self.port = free_port()  # the gateway: the hospitals' address (Fleet API only)
        self.link_port = free_port()  # the SuperLink on loopback (its Control API is the operator's only)
        self.registry_port = free_port()
        self.ports = {h: free_port() for h in HOSPITALS}
        self.app = ""  # the approved app version, @publisher/name==x.y.z
        self.services: dict[str, Service] = {}
        self.run_ids: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def control_address(self) -> str:
        return f"127.0.0.1:{self.link_port}"

    def sh(self, *cmd: str, timeout: float = 120, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        done = subprocess.run(list(cmd), cwd=ROOT, env=env(**extra), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise SystemExit(f"error: {' '.join(cmd)} exited {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def prepare(self) -> None:
        """The operator's `fedhealth certs init`; each hospital's folder (data copy, read-only; schema copy;
        policy) and its own keys (`fedhealth certs hospital-keys`), of which the operator files only the .pub;
        the app built, reviewed and approved by each hospital, published with the approvals."""
        fedhealth = str(BIN / "fedhealth")
        self.sh(fedhealth, "certs", "init", "--out", str(self.pki))
        registry = self.dir / "operator" / "registry"
        fab = self.dir / "operator" / "app.fab"
        self.sh(fedhealth, "app", "build", "--out", str(fab))
        review = json.loads(self.sh(fedhealth, "app", "review", str(fab), "--json").stdout)
        self.app = f"{review['app_id']}=={review['version']}"
        self.sh(fedhealth, "app", "publish", str(fab), "--dir", str(registry))
        for name, csv in HOSPITALS.items():
            site = self.site(name)
            site.mkdir(parents=True)
            shutil.copy(DATA / csv, site / "data.csv")
            (site / "data.csv").chmod(0o444)
            shutil.copy(DATA / "schema.toml", site / "schema.toml")
            shutil.copy(ROOT / "configs" / "deployment" / f"policy-{name}.toml", site / "policy.toml")
            self.sh(fedhealth, "certs", "hospital-keys", "--out", str(site / "keys"), "--hospital", name)
            self.sh(fedhealth, "certs", "add-hospital", str(site / "keys" / "supernode_auth.pub"), "--pki",
                    str(self.pki), "--hospital", name)
            self.sh(fedhealth, "app", "approve", str(fab), "--key", str(site / "keys" / "app_approval"), "--hospital",
                    name, "--sha256", review["sha256"], "--out", str(site / "approval.json"))
            self.sh(fedhealth, "app", "add-signature", str(site / "approval.json"), "--dir", str(registry))

    def site(self, name: str) -> Path:
        return self.dir / "hospitals" / name

    def start(self, name: str, cmd: list[str], home: Path, marks: list[str]) -> Service:
        service = Service(name, cmd, self.dir / "logs" / f"{name}.log", cwd=ROOT, marks=marks,
                          env={"FLWR_HOME": str(home), "PATH": env()["PATH"]})
        self.services[name] = service.start()
        return service

    def start_superlink(self) -> Service:
        """The SuperLink on loopback (with the registry it fetches approved apps from) and, once, the gateway
        and the registry."""
        if "registry" not in self.services:
            self.start("registry", ["bash", "server/deploy.sh", "registry", "--dir",
                                    str(self.dir / "operator" / "registry"), "--port", str(self.registry_port)],
                       self.cli_home, [])
            self.start("gateway", ["bash", "server/deploy.sh", "gateway", "--pki", str(self.pki), "--host",
                                   "127.0.0.1", "--port", str(self.port), "--superlink", self.control_address],
                       self.cli_home, [])
        link = self.start("superlink", ["bash", "server/deploy.sh", "start", "--pki", str(self.pki),
                                        "--host", "127.0.0.1", "--port", str(self.link_port),
                                        "--app-registry", f"http://127.0.0.1:{self.registry_port}",
                                        "--database", str(self.dir / "server" / "state.db")],
                          self.dir / "server" / "flwr-home", [runtime_mark(self.link_port)])
        wait_until(lambda: "Uvicorn running on https://" in link.output() or not link.running(), 60,
                   what="the SuperLink listening")
        if not link.running():
            raise SystemExit(f"error: the SuperLink stopped:\n{link.output()[-3000:]}")
        return link

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
        old = self.services.get(name)
        if old is not None and old.running():
            raise RuntimeError(f"hospital {name} is already running")
        return self.start(name, cmd, site / "flwr-home", [runtime_mark(self.ports[name])])

    def study(self, rounds: int, timeout: float | None = None, wait_for_hospitals: float | None = None) -> str:
        """The deployment study with another round count, SecAgg+ stage timeout or wait for hospitals, as a
        file in the workdir (an absolute `config` works since the server runs on this host)."""
        if rounds == 1 and timeout is None and wait_for_hospitals is None:
            return STUDY
        text = (ROOT / STUDY).read_text()
        text = text.replace('schema = "../data/heart-disease/schema.toml"', f'schema = "{DATA / "schema.toml"}"')
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
        return self.start(name, [str(BIN / "flwr"), "run", self.app, "fedhealth-deployment", "--stream",
                                 "--run-config",
                                 f"config='{config}' out='{out}' references=false{extra}"], self.cli_home, [])

    def restart_until_online(self, name: str, pause: float = 10.0, attempts: int = 12) -> dict:
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
        raise RuntimeError(f"{name} could not rejoin after {attempts} attempts")

    def run_id(self, submitted: Service) -> str | None:
        found = re.search(r"Successfully started run (\d+)", submitted.output())
        return found.group(1) if found else None

    def audit(self, name: str) -> dict:
        from fedhealth.privacy.audit import verify_audit_log

        path = self.site(name) / "audit" / "audit.jsonl"
        if not path.exists():
            return {"entries": 0}
        report = verify_audit_log(path, self.site(name) / "keys" / "audit_signing.pub")
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return {"ok": report.ok, "entries": report.entries, "problem": str(report.problem) if report.problem else None,
                "rounds": [(e["run_id"][-6:], e["round"], e["decision"][:8]) for e in entries]}

    def ledger(self, name: str) -> list:
        path = self.site(name) / "ledger" / f"{name}.json"
        if not path.exists():
            return []
        return [(e["round"], round(e["epsilon"], 3)) for e in json.loads(path.read_text())["entries"]]

    def stop_all(self) -> None:
        for service in reversed(list(self.services.values())):
            if service.proc is not None:
                service.stop()


def rounds_of(out: Path) -> list[dict]:
    path = out / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def state_of(out: Path) -> str:
    try:
        return json.loads((out / "state.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "missing"


def summary(host: Host, out: Path, **figures) -> dict:
    return {**figures, "state": state_of(out),
            "rounds": [{k: r.get(k) for k in ("round", "status", "hospitals_aggregated", "seconds", "failure")}
                       for r in rounds_of(out)],
            "audit": {h: host.audit(h) for h in HOSPITALS}, "ledger": {h: host.ledger(h) for h in HOSPITALS}}


# ---------------------------------------------------------------- the scenarios


def demo(host: Host, rounds: int, studies: int = 1) -> dict:
    """The study to the end (`studies` times in a row, same hospitals, ledgers and audit logs)."""
    t0 = time.perf_counter()
    host.start_superlink()
    host.connect_and_register()
    for name in HOSPITALS:
        host.start_hospital(name)
    runs = []
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


def supernode_restart(host: Host) -> dict:
    """3 rounds: hungary's SuperNode is killed right after round 1 and restarted 5 s later; then killed during
    round 3's training stage and restarted (that round's reply is lost: SecAgg+ waits its stage timeout)."""
    host.start_superlink()
    host.connect_and_register()
    for name in HOSPITALS:
        host.start_hospital(name)
    out = host.dir / "server" / "runs" / "restart"
    t0 = time.perf_counter()
    run = host.submit(host.study(3, timeout=60.0), out)
    wait_until(lambda: len(rounds_of(out)) >= 1 or not run.running(), 900, 1, "round 1")
    log("round 1 done; killing hungary's SuperNode")
    host.services["hungary"].stop()
    time.sleep(5)
    between = host.restart_until_online("hungary")
    log(f"hungary restarted: {between}")
    wait_until(lambda: len(rounds_of(out)) >= 2 or not run.running(), 900, 1, "round 2")
    # round 3: kill hungary once its training message has reached it (stage collect_masked_vectors)
    marker = host.services["hungary"].output().count("stage 2")
    log("round 2 done; waiting for hungary's round-3 training stage")

    def training_started() -> bool:
        return host.services["hungary"].output().count("starting stage 2") > 0 and \
            host.services["hungary"].output().count("stage 2") > marker

    wait_until(lambda: training_started() or not run.running(), 900, 0.2, "round 3 training")
    host.services["hungary"].stop()
    killed_at = time.perf_counter()
    log("hungary killed during round 3's training; restarting in 5 s")
    time.sleep(5)
    mid_round = host.restart_until_online("hungary")
    log(f"hungary restarted: {mid_round}")
    run.wait(1800)
    return summary(host, out, seconds=round(time.perf_counter() - t0, 1), flwr_run_exit=run.proc.returncode,
                   restart_between_rounds=between, restart_mid_round=mid_round,
                   finished_after_mid_round_kill_s=round(time.perf_counter() - killed_at, 1), run_dir=str(out))


def superlink_restart(host: Host) -> dict:
    """2 rounds: the SuperLink (and the ServerApp it runs) is killed during round 1 and restarted on the
    same --database; then: what the restarted SuperLink says about the run, what the run directory says, and
    the study submitted again with resume=true."""
    link = host.start_superlink()
    host.connect_and_register()
    for name in HOSPITALS:
        host.start_hospital(name)
    out = host.dir / "server" / "runs" / "restart"
    run = host.submit(host.study(2), out)
    wait_until(lambda: "share_keys" in link.output() or "Sending: train" in host.services["cleveland"].output()
               or not run.running(), 600, 0.5, "round 1 under way")
    time.sleep(10)
    log("killing the SuperLink (and its ServerApp) mid-round")
    link.stop()
    run_exit = run.wait(30)
    time.sleep(5)
    del host.services["superlink"]
    link = host.start_superlink()
    log("SuperLink restarted on the same database")
    reconnected = {}
    for name in HOSPITALS:
        node = host.services[name]

        def back(n: Service = node) -> bool:  # a SuperNode retries its connection, then carries on
            out = n.output()
            return "Connection successful after" in out or out.count("SuperNode ID:") > 1

        with contextlib.suppress(TimeoutError):
            wait_until(lambda n=node: back(n) or not n.running(), 120, what=f"{name} reconnected")
        found = re.findall(r"Connection successful after ([0-9.]+) seconds", node.output())
        reconnected[name] = {"running": node.running(), "reconnected": back(node),
                             "seconds_retrying": float(found[-1]) if found else None}
    time.sleep(60)  # does the run continue by itself?
    listed = host.sh(str(BIN / "flwr"), "list", "fedhealth-deployment", "--format", "json", check=False,
                     FLWR_HOME=str(host.cli_home))
    try:
        statuses = [(r.get("run-id"), r.get("status")) for r in json.loads(listed.stdout).get("runs", [])]
    except ValueError:
        statuses = []
    stopped = json.loads((out / "state.json").read_text())
    resubmit = host.submit(host.study(2), out, resume=True)  # the same study continues from its checkpoint
    resubmit.wait(1800)
    return summary(host, out, flwr_run_exit_after_kill=run_exit, nodes=reconnected, run_statuses=statuses,
                   flwr_list=listed.stdout[-3000:], state_after_kill={k: stopped.get(k) for k in
                                                                     ("status", "last_round", "stopped_by", "error")},
                   resubmit_exit=resubmit.proc.returncode,
                   resubmit_log=[line for line in resubmit.output().splitlines() if "rror" in line][-5:])


def absent_hospital(host: Host, wait: float, wait_for_hospitals: float | None = None) -> dict:
    """Two hospitals connect, the third does not: how long the study waits, then the third arrives late.
    With `wait_for_hospitals`, the study's own bound: the study must stop by itself, marked failed."""
    host.start_superlink()
    host.connect_and_register()
    for name in ("cleveland", "hungary"):
        host.start_hospital(name)
    out = host.dir / "server" / "runs" / "absent"
    t0 = time.perf_counter()
    run = host.submit(host.study(1, wait_for_hospitals=wait_for_hospitals), out)
    if wait_for_hospitals is not None:
        run.wait(wait_for_hospitals + 300)
        state = json.loads((out / "state.json").read_text()) if (out / "state.json").exists() else {}
        return summary(host, out, stopped_after_s=round(time.perf_counter() - t0, 1), state=state.get("status"),
                       error=state.get("error"), flwr_run_exit=run.proc.returncode)
    time.sleep(wait)
    waited = {"seconds": round(time.perf_counter() - t0, 1), "state": state_of(out), "rounds": len(rounds_of(out)),
              "flwr_run_running": run.running(),
              "cleveland_messages": host.services["cleveland"].output().count("Received successfully")}
    log(f"after {wait:.0f} s without va-long-beach: {waited}; starting it now")
    late = time.perf_counter()
    host.start_hospital("va-long-beach")
    run.wait(1800)
    return summary(host, out, while_absent=waited, finished_after_late_start_s=round(time.perf_counter() - late, 1),
                   flwr_run_exit=run.proc.returncode)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["demo", "supernode-restart", "superlink-restart", "absent-hospital"])
    parser.add_argument("--workdir", type=Path, required=True, help="a new or empty folder for everything")
    parser.add_argument("--rounds", type=int, default=1, help="demo: rounds of the study")
    parser.add_argument("--studies", type=int, default=1, help="demo: run the study this many times in a row")
    parser.add_argument("--wait", type=float, default=90.0, help="absent-hospital: seconds before the third starts")
    parser.add_argument("--wait-for-hospitals", type=float, default=None,
                        help="absent-hospital: the study's federation.wait_for_hospitals; the third never starts")
    parser.add_argument("--keep-running", action="store_true", help="demo: leave the SuperLink and SuperNodes up")
    args = parser.parse_args()
    host = Host(args.workdir)
    host.prepare()
    try:
        if args.scenario == "demo":
            result = demo(host, args.rounds, args.studies)
        elif args.scenario == "supernode-restart":
            result = supernode_restart(host)
        elif args.scenario == "superlink-restart":
            result = superlink_restart(host)
        else:
            result = absent_hospital(host, args.wait, args.wait_for_hospitals)
    finally:
        if not (args.keep_running and args.scenario == "demo"):
            host.stop_all()
    print(json.dumps({"scenario": args.scenario, **result}))
    ok = result.get("state") == "completed"
    return 0 if ok or args.scenario == "superlink-restart" else 1


if __name__ == "__main__":
    sys.exit(main())
