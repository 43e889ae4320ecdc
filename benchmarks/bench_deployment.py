"""The deployment's resilience on one host: restarts and an absent hospital; print one JSON line.

    .venv/bin/python benchmarks/bench_deployment.py supernode-restart --workdir /tmp/r1  # a hospital restarted
    .venv/bin/python benchmarks/bench_deployment.py superlink-restart --workdir /tmp/r2  # the SuperLink restarted
    .venv/bin/python benchmarks/bench_deployment.py absent-hospital --workdir /tmp/r3    # one hospital late
    .venv/bin/python benchmarks/bench_deployment.py absent-hospital --workdir /tmp/r4 --wait-for-hospitals 30
    .venv/bin/python benchmarks/bench_deployment.py round-time --workdir /tmp/r5  # seconds per round, by mode
    .venv/bin/python benchmarks/bench_deployment.py describe --workdir /tmp/r6 --study configs/lung.toml --epsilon 1

`round-time` runs the same SecAgg+ + DP-SGD study in each deployment mode (`--modes`, default Flower's own
new `flwr-clientapp` per message with its 3 s SuperNode poll, against fedhealth's default: ClientApps forked
from a warm fork server, 0.5 s poll) and once in simulation, and prints each mode's per-round seconds, the
simulation's and their ratio; its progress goes to stderr, stdout is the one JSON line.

Each scenario sets up the same three-hospital deployment as `fedhealth deploy demo` (its `Host`, in
fedhealth/deployment/demo.py: every process started with server/deploy.sh and clients/deploy.sh, on 127.0.0.1
and free ports, each party with its own Flower home), breaks it the way its name says, and stops everything
(with what Flower started below it) at the end. Progress lines go to stdout first; the last line is one JSON
object of figures (seconds, statuses, audit entries, ledgers). The workdir keeps the PKI, each hospital's
folder, the logs and the run directories. The one-host walk-through itself is `fedhealth deploy demo`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedhealth.deployment.demo import (  # noqa: E402
    DATA,
    HOSPITALS,
    STUDY,
    DemoError,
    Host,
    log,
    new_folder,
    rounds_of,
    state_of,
    summary,
)
from fedhealth.deployment.processes import Service, wait_until  # noqa: E402


def supernode_restart(host: Host) -> dict[str, Any]:
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


def superlink_restart(host: Host) -> dict[str, Any]:
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
            text = n.output()
            return "Connection successful after" in text or text.count("SuperNode ID:") > 1

        with contextlib.suppress(TimeoutError):
            wait_until(lambda n=node: back(n) or not n.running(), 120, what=f"{name} reconnected")
        found = re.findall(r"Connection successful after ([0-9.]+) seconds", node.output())
        reconnected[name] = {"running": node.running(), "reconnected": back(node),
                             "seconds_retrying": float(found[-1]) if found else None}
    time.sleep(60)  # does the run continue by itself?
    listed = host.sh(str(host.bin / "flwr"), "list", "fedhealth-deployment", "--format", "json", check=False,
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


def absent_hospital(host: Host, wait: float, wait_for_hospitals: float | None = None) -> dict[str, Any]:
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


def simulation_twin(host: Host, rounds: int) -> tuple[Path, Path]:
    """The deployment study as a simulation config: the same three hospitals' files (where the deployment
    declares `records`, the simulation names the data), the same model, training, SecAgg+ and DP settings,
    no references (the deployment runs with references=false). Returns (config, run directory)."""
    text = (host.root / STUDY).read_text()
    text = text.replace('schema = "../data/heart-disease/schema.toml"',
                        f'schema = "{host.root / DATA / "schema.toml"}"')
    text = re.sub(r"(?m)^rounds = \d+", f"rounds = {rounds}", text)
    for name, csv in HOSPITALS.items():
        text = re.sub(rf'(?m)^(name = "{re.escape(name)}"\n)records = \d+', rf'\1data = "{host.root / DATA / csv}"',
                      text)
    text += "\n[references]\nlocal_only = false\npooled = false\nnon_private_federation = false\n"
    config = host.dir / "simulation" / "study.toml"
    config.parent.mkdir(parents=True)
    config.write_text(text)
    return config, host.dir / "simulation" / "run"


def round_seconds(out: Path) -> list[float]:
    return [float(r["seconds"]) for r in rounds_of(out) if r.get("seconds") is not None]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def round_time(workdir: Path, rounds: int, modes: list[tuple[str, str]]) -> dict[str, Any]:
    """Per-round seconds of the SecAgg+ + DP-SGD study, three hospitals on 127.0.0.1, in each deployment mode
    (clients/deploy.sh --clientapp, FEDHEALTH_SUPERNODE_POLL_INTERVAL), each a fresh deployment in its own
    folder; then the same study in simulation. Round 1 carries each run's first-message costs (the FAB
    installed, the run's context made); `steady` is the median of the later rounds."""
    result: dict[str, Any] = {"rounds": rounds, "deployment": {}}
    for clientapp, poll in modes:
        label = f"{clientapp}-poll-{poll}"
        host = Host(workdir / label)
        host.clientapp, host.node_env = clientapp, {"FEDHEALTH_SUPERNODE_POLL_INTERVAL": poll}
        log(f"{label}: setting up")
        host.prepare()
        try:
            host.start_superlink()
            host.connect_and_register()
            for name in HOSPITALS:
                host.start_hospital(name)
            out = host.dir / "server" / "runs" / "round-time"
            load_before = load()
            t0 = time.perf_counter()
            run = host.submit(host.study(rounds), out)
            run.wait(3600)
            seconds = round_seconds(out)
            result["deployment"][label] = {
                "clientapp": clientapp, "supernode_poll_s": poll, "state": state_of(out),
                "round_seconds": seconds, "steady_round_s": statistics.median(seconds[1:]) if len(seconds) > 1
                else None, "study_seconds": round(time.perf_counter() - t0, 1),
                "audit_entries": {h: host.audit(h).get("entries") for h in HOSPITALS},
                "load_before": load_before, "load_after": load()}
            log(f"{label}: {result['deployment'][label]}")
        finally:
            host.stop_all()
    sim = Host(workdir / "simulation-host")
    config, out = simulation_twin(sim, rounds)
    load_before = load()
    t0 = time.perf_counter()
    done = sim.sh(str(sim.bin / "fedhealth"), "simulate", "--config", str(config), "--out", str(out), timeout=3600,
                  check=False)
    seconds = round_seconds(out)
    result["simulation"] = {"state": state_of(out), "exit": done.returncode, "round_seconds": seconds,
                            "steady_round_s": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
                            "process_seconds": round(time.perf_counter() - t0, 1), "load_before": load_before,
                            "load_after": load()}
    if done.returncode != 0:
        result["simulation"]["error"] = done.stderr[-2000:]
    sim_steady = result["simulation"]["steady_round_s"] or (seconds[0] if seconds else None)
    for figures in result["deployment"].values():
        steady = figures["steady_round_s"]
        figures["ratio_to_simulation"] = round(steady / sim_steady, 2) if steady and sim_steady else None
    return result


SITE_POLICY = """# a describe scenario's site policy: every hospital the same
max_epsilon = 5.0
max_delta = 1e-5
min_hospitals = 3
require_secure_aggregation = true
"""


def describe_study(workdir: Path, study: Path, epsilon: float | None) -> dict[str, Any]:
    """A study of files described on a fresh deployment of its own hospitals (`server/entrypoint.sh describe`):
    each site a SuperNode with its file, the schema and a common policy (`SITE_POLICY`), the study submitted as
    a deployment config (no data paths; each hospital's usable rows declared). The figures: time, who took part,
    n, each ledger's entries, the files written."""
    import tomli_w

    from fedhealth.data.cohort_records import cohort_records
    from fedhealth.data.study_file import load_config

    cfg = load_config(study)
    if cfg.study_schema is None:
        raise DemoError(f"{study}: a study of files is needed (each hospital's own file becomes a SuperNode's)")
    folder = new_folder(workdir)
    policy = folder / "site-policy.toml"
    policy.write_text(SITE_POLICY)
    schema = (study.parent / str(load_config_schema(study))).resolve()
    hospitals = {h.name: (Path(h.data).resolve(), schema, policy) for h in cfg.hospitals}
    host = Host(folder / "deployment", hospitals=hospitals)
    data = cfg.model_dump(mode="json", exclude_none=True)
    data.pop("study_schema", None)
    data["schema"] = str(schema)
    for i, h in enumerate(data["hospitals"]):
        h.pop("data", None)
        h.pop("data_sha256", None)
        h["records"] = len(cohort_records(cfg, i).records.label)
    deployed = folder / f"{cfg.name}-deployment.toml"
    deployed.write_text(tomli_w.dumps(data))
    host.prepare()
    started = time.perf_counter()
    try:
        host.start_superlink()
        host.connect_and_register()
        for name in hospitals:
            node = host.start_hospital(name)
            wait_until(lambda n=node: "SuperNode ID:" in n.output() or not n.running(), 180, 0.5, f"{name} online")
        online = time.perf_counter() - started
        out = folder / "runs" / "describe"
        env = {"FEDHEALTH_STUDY": str(deployed), "FEDHEALTH_APP": host.app}
        if epsilon is not None:
            env["FEDHEALTH_EPSILON"] = str(epsilon)
        submit = host.start("describe", ["bash", "server/entrypoint.sh", "describe", str(out)], host.cli_home, [],
                            env)
        code = submit.wait(600)
        seconds = time.perf_counter() - started - online
        description = json.loads((out / "description.json").read_text()) if (out / "description.json").exists() \
            else None
        return {"study": cfg.name, "hospitals": len(hospitals), "exit": code, "state": state_of(out),
                "seconds_to_online": round(online, 1), "seconds_describe": round(seconds, 1),
                "released_by": None if description is None else description["hospitals"],
                "declined": None if description is None else description["declined"],
                "n": None if description is None else description["n"],
                "epsilon": epsilon, "noise_sd": None if description is None else description["noise_sd"],
                "ledger": {h: host.ledger(h) for h in hospitals},
                "files": sorted(p.name for p in out.iterdir()) if out.is_dir() else []}
    finally:
        host.stop_all()


def load_config_schema(study: Path) -> str:
    """The `schema` key of a study TOML as written (relative to the study file)."""
    import tomllib

    return tomllib.loads(study.read_text())["schema"]


SCENARIOS = ("supernode-restart", "superlink-restart", "absent-hospital", "round-time", "describe")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--workdir", type=Path, required=True, help="a new or empty folder for everything")
    parser.add_argument("--wait", type=float, default=90.0, help="absent-hospital: seconds before the third starts")
    parser.add_argument("--wait-for-hospitals", type=float, default=None,
                        help="absent-hospital: the study's federation.wait_for_hospitals; the third never starts")
    parser.add_argument("--rounds", type=int, default=3, help="round-time: rounds per study (round 1 is warm-up)")
    parser.add_argument("--modes", default="subprocess:flower,forkserver:0.5",
                        help="round-time: comma-separated CLIENTAPP:POLL, clients/deploy.sh --clientapp and "
                             "FEDHEALTH_SUPERNODE_POLL_INTERVAL ('flower': Flower's own 3 s)")
    parser.add_argument("--study", type=Path, default=ROOT / "configs" / "lung.toml",
                        help="describe: a study of files, each hospital a SuperNode of its own")
    parser.add_argument("--epsilon", type=float, default=1.0, help="describe: each hospital's epsilon (0: exact)")
    args = parser.parse_args()
    if args.scenario == "describe":
        try:
            with contextlib.redirect_stdout(sys.stderr):
                result = describe_study(args.workdir, args.study.resolve(), args.epsilon or None)
        except DemoError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(json.dumps({"scenario": args.scenario, **result}))
        return 0 if result["state"] == "completed" else 1
    if args.scenario == "round-time":
        modes = [tuple(m.split(":", 1)) for m in args.modes.split(",") if m]
        if any(len(m) != 2 for m in modes):
            parser.error("--modes: give CLIENTAPP:POLL pairs, e.g. subprocess:flower,forkserver:0.5")
        try:
            new_folder(args.workdir)
            with contextlib.redirect_stdout(sys.stderr):
                result = round_time(args.workdir, args.rounds, modes)  # type: ignore[arg-type]
        except DemoError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(json.dumps({"scenario": args.scenario, **result}))
        return 0 if all(f["state"] == "completed" for f in result["deployment"].values()) else 1
    try:
        host = Host(args.workdir)
    except DemoError as err:  # not a checkout, or a workdir in use
        print(f"error: {err}", file=sys.stderr)
        return 2
    host.prepare()
    try:
        if args.scenario == "supernode-restart":
            result = supernode_restart(host)
        elif args.scenario == "superlink-restart":
            result = superlink_restart(host)
        else:
            result = absent_hospital(host, args.wait, args.wait_for_hospitals)
    finally:
        host.stop_all()
    print(json.dumps({"scenario": args.scenario, **result}))
    return 0 if result.get("state") == "completed" or args.scenario == "superlink-restart" else 1


if __name__ == "__main__":
    sys.exit(main())
