"""Benchmark fedhealth's federation against the same job written as plain Flower; print one JSON line.

    .venv/bin/python benchmarks/bench_federation.py                  smoke and default, 2 repeats each
    .venv/bin/python benchmarks/bench_federation.py --quick          smoke only, 1 repeat
    .venv/bin/python benchmarks/bench_federation.py --configs default --repeats 3

Why it is built this way:

* Every measured job runs in its own fresh interpreter (`sys.executable`), so each pays the same
  start-up (imports, `ray.init`, actors importing torch and Flower) and shutdown, and its memory
  can be measured alone. Wall time is taken by this parent, from launch to exit.
* The yardstick (`_plain_flower_job.py`) is what a Flower user writes for FedAvg with federated
  evaluation: NumPyClient + ClientApp, ServerApp(server_fn) + FedAvg, `run_simulation`, with
  fedhealth's own data, model, training loop, seeds and Ray backend config. So fedhealth/plain is
  the cost of fedhealth's federation layer alone (config payload, checks, run directory, resume).
  One difference in Flower itself remains, on purpose: `ServerApp(server_fn=...)` runs Flower's
  legacy server loop (one message exchange per client, each in its own thread), while fedhealth
  drives the workflow API (`DefaultWorkflow`, one batched exchange per round), as a typical user
  and fedhealth respectively do.
* The fedhealth job is `fedhealth.experiments.simulate.run_federation` only, the part that does the same work
  as the plain job. The full `simulate` (plus local-only and pooled references) is timed once per
  config and reported apart as `end_to_end_s`.
* Jobs are interleaved (plain, fedhealth, plain, fedhealth, ...) and the median is reported, so a
  slow spell on a shared machine does not land on one side only.
* Memory is the peak summed RSS of the job's whole process tree (driver, Ray's daemons, actors),
  sampled every 0.2 s with psutil (Ray ships a copy); shared library pages count once per process,
  the same way for both jobs. The driver's own peak (`ru_maxrss`) is reported beside it.
* Per-round time is the mean over rounds >= 2 (round 1 includes actors starting), from
  fedhealth's `rounds.jsonl` and from time stamps in the plain server (configure_fit to the end of
  evaluation); it is compared with the sum over hospitals of their local training time (what the
  round would cost with zero overhead on one core). `*_round_interval_s` is the mean time between
  consecutive round ends, which also covers fedhealth's per-round writes (metrics, checkpoint).

Exactly one JSON line goes to stdout; progress and diagnostics go to stderr. Exit status 1 (with
the failing job's log tail) when any job fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# What fedhealth/experiments/simulate.py sets, given to every process of both jobs so neither differs by environment.
# Telemetry off: hospital software must not phone home, and offline each process may wait for it at exit.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
os.environ.update(FLOWER_ENV)

JOBS = ("plain", "fedhealth", "end_to_end")
SAMPLE_EVERY_S = 0.2
RESULT_FILE = "result.json"
LOG_FILE = "job.log"


class BenchError(RuntimeError):
    """A job failed or produced no usable result; the message says which and shows its log tail."""


def _log(msg: str) -> None:
    print(f"bench_federation: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- child side (one job per process)


def _own_peak_mib() -> float:
    """This process's peak RSS; Linux reports KiB, macOS bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _read_run_dir(run_dir: Path, rounds: int) -> dict[str, Any]:
    """Per-round wall seconds, summed hospital training seconds and final AUROC, from the run's files."""
    from fedhealth.runs import rundir

    summaries = sorted(rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE), key=lambda r: int(r["round"]))
    if [int(r["round"]) for r in summaries] != list(range(1, rounds + 1)):
        raise RuntimeError(f"{run_dir}: rounds.jsonl holds rounds {[r['round'] for r in summaries]}, "
                           f"expected 1..{rounds}")
    train = [0.0] * rounds
    for row in rundir.read_jsonl(run_dir / rundir.METRICS_FILE):
        train[int(row["round"]) - 1] += float(row.get("train_seconds") or 0.0)
    return {"round_seconds": [float(r["seconds"]) for r in summaries], "train_seconds": train,
            "final_auroc": summaries[-1].get("auroc_weighted")}


def run_child(job: str, config: Path, workdir: Path) -> None:
    """Run one job in this (fresh) process and write its result, with phase time stamps, to `workdir`."""
    marks = {"started": time.time()}
    from fedhealth.data.study_file import load_config

    # Plain aggregation, as in the yardstick: this measures fedhealth's federation layer; what SecAgg+
    # adds on top is bench_secagg.py's subject.
    cfg = load_config(config, ["federation.secure_aggregation.enabled=false"])
    round_ends: list[float] = []  # epoch seconds as each round ends
    if job == "plain":
        import _plain_flower_job as plain  # benchmarks/ is sys.path[0], and Ray adds it for the actors too

        marks["imported"] = time.time()
        record = plain.run(cfg)
        marks["finished"] = time.time()
        round_ends = record.round_end_epochs
        out: dict[str, Any] = {"round_seconds": record.round_seconds, "train_seconds": record.train_seconds,
                               "final_auroc": record.auroc_weighted[-1]}
    else:
        import flwr.simulation  # noqa: F401  (imported lazily by run_federation; counted as import time here)

        import fedhealth.coordinator.app  # noqa: F401
        import fedhealth.hospital.app  # noqa: F401
        from fedhealth.experiments import simulate
        from fedhealth.runs import rundir

        run_dir = rundir.create_run_dir(cfg, workdir / "run")
        marks["imported"] = time.time()

        def on_round(_round: int, _summary: dict[str, Any]) -> None:
            round_ends.append(time.time())  # called once the round's files are on disk

        if job == "fedhealth":
            simulate.run_federation(cfg, run_dir, on_round)
        else:
            simulate.simulate(cfg, run_dir, on_round)
            if rundir.read_state(run_dir).get("status") != "completed":
                raise RuntimeError(f"{run_dir}: simulate returned but the run is not marked completed")
        marks["finished"] = time.time()
        out = _read_run_dir(run_dir, cfg.federation.rounds)
    out.update(marks=marks, round_ends=round_ends, driver_peak_mib=_own_peak_mib())
    (workdir / RESULT_FILE).write_text(json.dumps(out), encoding="utf-8")


# ---------------------------------------------------------------- parent side (launch, sample, summarise)


def _import_psutil() -> Any | None:
    """psutil if importable, else the copy Ray vendors in ray/thirdparty_files (without importing Ray)."""
    try:
        import psutil
    except ImportError:
        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            return None
        sys.path.append(str(Path(next(iter(spec.submodule_search_locations))) / "thirdparty_files"))
        try:
            import psutil
        except ImportError:
            return None
    return psutil


class TreeSampler:
    """Samples the summed RSS of a process and all its descendants in a background thread.

    Also remembers every descendant it saw, so processes a job leaves behind (Ray daemons that
    outlive their driver) can be found and stopped before the next measurement.
    """

    def __init__(self, psutil: Any, pid: int) -> None:
        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.peak_bytes = 0
        self.seen: dict[int, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except self.psutil.Error:
            return  # the root has exited
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
                self.seen.setdefault(p.pid, p)
            except self.psutil.Error:
                continue  # exited between listing and reading
        self.peak_bytes = max(self.peak_bytes, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_EVERY_S)

    def stop_leftovers(self, grace_s: float = 5.0) -> list[str]:
        """Stop descendants still running after the job exited; returns their names for a warning."""
        alive = [p for pid, p in self.seen.items() if pid != self.root.pid and p.is_running()]
        if not alive:
            return []
        _, alive = self.psutil.wait_procs(alive, timeout=grace_s)  # Ray's shutdown may still be finishing
        names = []
        for p in alive:
            try:
                names.append(f"{p.name()}[{p.pid}]")
                p.kill()
            except self.psutil.Error:
                continue
        return names


@dataclass
class JobResult:
    job: str
    wall_s: float  # launch to exit, measured by the parent
    peak_tree_mib: float | None  # None when psutil is unavailable
    driver_peak_mib: float
    round_seconds: list[float]
    train_seconds: list[float]
    final_auroc: float | None
    round_ends: list[float]  # epoch seconds as each round ended (its files written, for fedhealth)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def s_per_round(self) -> float | None:
        """Mean wall seconds of rounds >= 2: round 1 also pays for actors starting and importing."""
        return statistics.fmean(self.round_seconds[1:]) if len(self.round_seconds) > 1 else None

    @property
    def round_interval_s(self) -> float | None:
        """Mean time from one round's end to the next over rounds >= 2: everything a round costs,
        including what `s_per_round` leaves out (fedhealth writes each round's files after timing it)."""
        ends = self.round_ends
        return (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else None

    @property
    def train_s_per_round(self) -> float | None:
        return statistics.fmean(self.train_seconds[1:]) if len(self.train_seconds) > 1 else None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_job(job: str, config: Path, psutil: Any | None, timeout_s: float) -> JobResult:
    """Launch `job` on `config` in a fresh interpreter, sample its process tree, return its figures."""
    workdir = Path(tempfile.mkdtemp(prefix=f"fedhealth-bench-{job}-"))
    log_path = workdir / LOG_FILE
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", job, "--config", str(config),
           "--workdir", str(workdir)]
    launched = time.time()
    t0 = time.perf_counter()
    with log_path.open("wb") as log:
        # A session of its own: on timeout or Ctrl-C the whole group (driver and Ray) can be stopped at once.
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **FLOWER_ENV}, start_new_session=True)
        sampler = TreeSampler(psutil, proc.pid) if psutil is not None else None
        if sampler is not None:
            sampler.start()
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            wall = time.perf_counter() - t0
            exited = time.time()
            if sampler is not None:
                sampler.stop()
    if rc is None:
        _kill_group(proc)
    if sampler is not None:
        leftovers = sampler.stop_leftovers()
        if leftovers:
            _log(f"warning: {job} left {len(leftovers)} process(es) running after it exited; stopped "
                 f"{', '.join(leftovers)}")
    result_path = workdir / RESULT_FILE
    if rc != 0 or not result_path.is_file():
        why = f"timed out after {timeout_s:.0f} s" if rc is None else f"exited with status {rc}"
        raise BenchError(f"{job} job on {config.name} {why} (log kept in {log_path}); last lines:\n"
                         f"{_tail(log_path)}")
    data = json.loads(result_path.read_text(encoding="utf-8"))
    shutil.rmtree(workdir, ignore_errors=True)
    marks = data["marks"]
    return JobResult(
        job=job,
        wall_s=wall,
        peak_tree_mib=sampler.peak_bytes / 2**20 if sampler is not None else None,
        driver_peak_mib=float(data["driver_peak_mib"]),
        round_seconds=[float(s) for s in data["round_seconds"]],
        train_seconds=[float(s) for s in data["train_seconds"]],
        final_auroc=data.get("final_auroc"),
        round_ends=[float(t) for t in data["round_ends"]],
        phases={
            "startup_s": marks["started"] - launched,  # interpreter start until the job's first line
            "imports_s": marks["imported"] - marks["started"],  # config, Flower, torch, fedhealth
            "rounds_s": data["round_ends"][-1] - marks["imported"],  # ray.init, actors starting, all rounds
            "teardown_s": marks["finished"] - data["round_ends"][-1],  # Flower stopping, ray.shutdown (+ references)
            "exit_s": exited - marks["finished"],  # result file, interpreter and thread teardown
        },
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the job's whole session (driver plus the Ray processes it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def summarise(hospitals: int, rounds: int, fed: list[JobResult], plain: list[JobResult],
              end_to_end: JobResult | None) -> dict[str, Any]:
    """Medians over repeats; ratios are fedhealth/plain of those medians."""
    fed_s, plain_s = _median([j.wall_s for j in fed]), _median([j.wall_s for j in plain])
    fed_mem, plain_mem = _median([j.peak_tree_mib for j in fed]), _median([j.peak_tree_mib for j in plain])
    fed_round, plain_round = _median([j.s_per_round for j in fed]), _median([j.s_per_round for j in plain])
    out: dict[str, Any] = {
        "hospitals": hospitals,
        "rounds": rounds,
        "repeats": len(fed),
        "fedhealth_s": _r(fed_s),
        "plain_s": _r(plain_s),
        "ratio": _r(_ratio(fed_s, plain_s)),
        "fedhealth_s_per_round": _r(fed_round),
        "plain_s_per_round": _r(plain_round),
        "round_ratio": _r(_ratio(fed_round, plain_round)),
        "fedhealth_round_interval_s": _r(_median([j.round_interval_s for j in fed])),
        "plain_round_interval_s": _r(_median([j.round_interval_s for j in plain])),
        "train_s_per_round_sum": _r(_median([j.train_s_per_round for j in fed])),
        "plain_train_s_per_round_sum": _r(_median([j.train_s_per_round for j in plain])),
        "fedhealth_peak_mib": _r(fed_mem, 1),
        "plain_peak_mib": _r(plain_mem, 1),
        "memory_ratio": _r(_ratio(fed_mem, plain_mem)),
        "fedhealth_driver_peak_mib": _r(_median([j.driver_peak_mib for j in fed]), 1),
        "plain_driver_peak_mib": _r(_median([j.driver_peak_mib for j in plain]), 1),
        "fedhealth_runs_s": [_r(j.wall_s) for j in fed],
        "plain_runs_s": [_r(j.wall_s) for j in plain],
        "phases": {name: {k: _r(_median([j.phases[k] for j in jobs])) for k in jobs[0].phases}
                   for name, jobs in (("fedhealth", fed), ("plain", plain))},
        # Same data, model, seeds and FedAvg: these should agree to float noise (summation order aside).
        "final_auroc": {"fedhealth": _r(fed[-1].final_auroc, 5), "plain": _r(plain[-1].final_auroc, 5)},
    }
    if end_to_end is not None:
        out["end_to_end_s"] = _r(end_to_end.wall_s)
    return out


def _config_path(name: str) -> Path:
    path = Path(name) if name.endswith(".toml") else ROOT / "configs" / f"{name}.toml"
    if not path.is_file():
        raise BenchError(f"config {name!r}: {path} not found")
    return path.resolve()


def _machine() -> dict[str, Any]:
    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": ver("torch"),
            "flwr": ver("flwr"), "ray": ver("ray"), "platform": platform.platform()}


def bench(configs: list[str], repeats: int, timeout_s: float) -> dict[str, Any]:
    from fedhealth.data.study_file import load_config  # light (pydantic); keeps Flower and torch out of the parent

    psutil = _import_psutil()
    if psutil is None:
        _log("warning: psutil not found (nor Ray's copy): peak process-tree memory will be null")
    report: dict[str, Any] = {"bench": "federation", "machine": _machine()}
    ratios = []
    for name in configs:
        path = _config_path(name)
        try:
            cfg = load_config(path)
        except ValueError as err:  # ConfigError: one line per problem, naming the file
            raise BenchError(str(err)) from None
        fed: list[JobResult] = []
        plain: list[JobResult] = []
        for i in range(repeats):
            for job, bucket in (("plain", plain), ("fedhealth", fed)):
                res = run_job(job, path, psutil, timeout_s)
                bucket.append(res)
                _log(f"[{path.stem}] {job} {i + 1}/{repeats}: {res.wall_s:.2f} s, per round after the first "
                     f"{res.s_per_round if res.s_per_round is not None else float('nan'):.3f} s, "
                     f"peak {res.peak_tree_mib or float('nan'):.0f} MiB")
        e2e = run_job("end_to_end", path, psutil, timeout_s)
        _log(f"[{path.stem}] end_to_end (simulate with references): {e2e.wall_s:.2f} s")
        entry = summarise(len(cfg.hospitals), cfg.federation.rounds, fed, plain, e2e)
        report[path.stem] = entry
        if entry["ratio"] is not None:
            ratios.append(entry["ratio"])
    report["ratio_max"] = max(ratios) if ratios else None
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="smoke,default",
                        help="comma-separated config names under configs/ or .toml paths (default: smoke,default)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved plain/fedhealth pairs per config")
    parser.add_argument("--quick", action="store_true", help="smoke only, 1 repeat")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per job (default 900)")
    parser.add_argument("--job", choices=JOBS, help=argparse.SUPPRESS)  # internal: run one job in this process
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.job:
        run_child(args.job, args.config, args.workdir)
        return 0
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    configs = ["smoke"] if args.quick else [c.strip() for c in args.configs.split(",") if c.strip()]
    repeats = 1 if args.quick else args.repeats
    try:
        report = bench(configs, repeats, args.timeout)
    except BenchError as err:
        _log(f"error: {err}")
        return 1
    except Exception:
        _log(f"error: the benchmark itself failed:\n{traceback.format_exc()}")
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
