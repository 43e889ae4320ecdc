"""fedhealth against a hand-written, tuned Flower peer on the same federation job; print one JSON line.

    .venv/bin/python benchmarks/bench_federation.py                 the five jobs, 3 interleaved repeats
    .venv/bin/python benchmarks/bench_federation.py --quick         two jobs, 1 repeat (development)
    .venv/bin/python benchmarks/bench_federation.py --jobs 5x3-dp --repeats 1
    .venv/bin/python benchmarks/bench_federation.py --fedhealth-backend in-process

The job (issue 17): 5 or 20 hospitals of 2,000 rows and 20 features each, an MLP 20-32-1, SGD at learning rate
0.1 without momentum, batch 64, one local epoch per round, every hospital evaluated every round. Five jobs:
5 x 1 round and 5 x 3 rounds in the clear, 5 x 3 with record-level DP-SGD (noise multiplier 1.0, clipping
norm 1.0), 5 x 3 and 20 x 3 with DP-SGD and SecAgg+.

Why it is built this way:

* Both sides run as a user runs them, each in a fresh process whose wall time this parent takes from launch
  to exit: fedhealth as `python -m fedhealth.cli simulate --config STUDY --out DIR` (the whole command, with
  its run directory, final scoring, report and the local-only reference it runs by default; the pooled and
  no-DP references are switched off, as the issue's job states), and the peer as
  `python benchmarks/_flower_peer.py ...`, which imports nothing from fedhealth (see its docstring for what
  makes it a tuned peer).
* The data are the same rows on both sides: generated once per benchmark run from a fixed seed, written as one
  CSV per hospital with a `set` column (the official train/test split) and a study schema, which fedhealth
  reads as hospital files (`[split]` in the schema) and the peer reads with the csv module. The schema's
  fixed references are centre 0 and scale 1, so fedhealth's encoding leaves the values as written.
* Both start from the same model (fedhealth's round-0 weights, given to the peer as a file), and SecAgg+
  runs with the same protocol parameters on both sides: the shares, threshold, weight bound and
  ranges that fedhealth derives for the study go to the peer's `SecAggPlusWorkflow`.
* The work is checked to be the same: both report the last round's accuracy and mean per-hospital AUROC
  (fedhealth in its run directory's `summary.json`, the peer as its last stdout line), and a job whose two
  sides differ by more than `TOLERANCE` is flagged (`comparable: false`, exit status 1).
* Runs are interleaved (peer, fedhealth, peer, fedhealth, ...) and medians are reported, so a slow spell on a
  shared machine does not land on one side only.
* Memory is the peak, over samples every `SAMPLE_EVERY_S`, of the PSS summed over the job's whole process
  tree (driver, Ray's daemons, actors; every process the sampler has seen in the tree counts until it
  exits): PSS splits shared pages among the processes sharing them, so a library mapped by eight
  processes counts once, not eight times as summed RSS would.

Exactly one JSON line goes to stdout; progress goes to stderr. Exit status 1, with the failing job's log tail,
when a job fails; 1 also when a job's two sides did not reach comparable metrics (the line is still printed).
Never asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PEER = HERE / "_flower_peer.py"

ROWS = 2_000
FEATURES = 20
TEST_ROWS = 500  # a quarter of each hospital's rows, fedhealth's default test fraction
MAX_HOSPITALS = 20
DATA_SEED = 20_261_201
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
SAMPLE_EVERY_S = 0.15
TOLERANCE = 0.05  # largest difference in final accuracy or mean AUROC that still counts as the same work
LABEL, SPLIT = "outcome", "set"
TELEMETRY_OFF = {"FLWR_TELEMETRY_ENABLED": "0"}


@dataclass(frozen=True)
class Job:
    name: str
    hospitals: int
    rounds: int
    dp: bool
    secagg: bool


JOBS = (
    Job("5x1-plain", 5, 1, dp=False, secagg=False),
    Job("5x3-plain", 5, 3, dp=False, secagg=False),
    Job("5x3-dp", 5, 3, dp=True, secagg=False),
    Job("5x3-dp-secagg", 5, 3, dp=True, secagg=True),
    Job("20x3-dp-secagg", 20, 3, dp=True, secagg=True),
)
QUICK_JOBS = ("5x1-plain", "5x3-dp-secagg")


class BenchError(RuntimeError):
    """A job failed or produced no usable result; the message says which and shows its log tail."""


def _log(msg: str) -> None:
    print(f"bench_federation: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the data and the study (shared by both sides)


def hospital_name(index: int) -> str:
    """Hospital `index` (0-based): also its CSV's stem, as `_flower_peer.hospital_file` expects."""
    return f"h{index + 1:02d}"


def feature_names(features: int = FEATURES) -> list[str]:
    return [f"f{i + 1:02d}" for i in range(features)]


def write_data(data_dir: Path, hospitals: int = MAX_HOSPITALS, rows: int = ROWS, features: int = FEATURES,
               test_rows: int = TEST_ROWS, seed: int = DATA_SEED) -> Path:
    """Write `hospitals` CSVs and their study schema into `data_dir` (made; must not exist); returns the schema.

    A logistic outcome of the features with one interaction and a per-hospital shift in the features and
    the baseline risk: learnable by the MLP within a few rounds, and not identical across hospitals, so
    federated averaging has something to do. The same seed gives the same bytes.
    """
    data_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 1.0, features) * (3.0 / np.sqrt(features))
    names = feature_names(features)
    for h in range(hospitals):
        shift = rng.normal(0.0, 0.3, features)
        x = rng.normal(shift, 1.0, (rows, features))
        logit = x @ weights + 0.8 * x[:, 0] * x[:, 1] + rng.normal(0.0, 0.3) - 0.3
        y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
        is_test = np.zeros(rows, dtype=bool)
        is_test[rng.permutation(rows)[:test_rows]] = True
        lines = [",".join([*names, LABEL, SPLIT])]
        for i in range(rows):
            cells = [f"{v:.4f}" for v in x[i]]
            lines.append(",".join([*cells, str(y[i]), "test" if is_test[i] else "train"]))
        (data_dir / f"{hospital_name(h)}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    schema = data_dir / "schema.toml"
    columns = "".join(
        f'\n[[columns]]\nname = "{n}"\nkind = "continuous"\nunit = "1"\nmin = -20\nmax = 20\ncenter = 0\n'
        f"scale = 1\nrequired = true\nindicator = false\n" for n in names)
    schema.write_text(
        "# Written by benchmarks/bench_federation.py: generated rows, not patients.\n"
        '[study]\nname = "bench-federation"\nmissing_values = [""]\n\n'
        f'[label]\ncolumn = "{LABEL}"\npositive = [1]\nnegative = [0]\n\n'
        f'[split]\ncolumn = "{SPLIT}"\ntrain = ["train"]\ntest = ["test"]\n' + columns,
        encoding="utf-8")
    return schema


def study_toml(job: Job, data_dir: Path, backend: str | None = None) -> str:
    """The study TOML of `job` over the files in `data_dir` (paths written absolute).

    `backend` goes into `federation.backend` only when given, so the benchmark runs against a fedhealth that
    has no such key as well as one that has."""
    lines = [
        "# Written by benchmarks/bench_federation.py",
        f'name = "bench-{job.name}"',
        "seed = 42",
        f"schema = {json.dumps(str(data_dir / 'schema.toml'))}",
        "",
        "[model]", 'name = "mlp"', "hidden = [32]",
        "",
        "[training]", "local_epochs = 1", "batch_size = 64", "learning_rate = 0.1", "momentum = 0.0",
        "weight_decay = 0.0", "test_fraction = 0.25",
        "",
        "[federation]", f"rounds = {job.rounds}", "cpus_per_client = 1.0",
    ]
    if backend is not None:
        lines.append(f"backend = {json.dumps(backend)}")
    lines += ["", "[federation.secure_aggregation]", f"enabled = {str(job.secagg).lower()}", "",
              "[references]", "local_only = true", "pooled = false", "non_private_federation = false", ""]
    if job.dp:
        lines += ["[privacy]", 'mode = "record"', f"noise_multiplier = {NOISE_MULTIPLIER}",
                  f"max_grad_norm = {MAX_GRAD_NORM}", ""]
    for h in range(job.hospitals):
        lines += ["[[hospitals]]", f'name = "{hospital_name(h)}"',
                  f"data = {json.dumps(str(data_dir / (hospital_name(h) + '.csv')))}", ""]
    return "\n".join(lines)


def write_initial_weights(study: Path, path: Path) -> Path:
    """fedhealth's round-0 model for `study`, as the .npz the peer's `--initial-weights` reads.

    Both sides then start from the same model: after one round of 24 SGD steps the AUROC still depends on
    the starting point by several points, which would hide whether the two did the same work."""
    from fedhealth.data.study_file import load_config
    from fedhealth.model.initial import initial_weights

    np.savez(path, *initial_weights(load_config(study)))
    return path


def peer_args(job: Job, data_dir: Path, study: Path, initial: Path | None = None) -> list[str]:
    """The peer's command-line arguments for `job`; SecAgg+ with the parameters fedhealth derives for `study`."""
    args = ["--data", str(data_dir), "--hospitals", str(job.hospitals), "--rounds", str(job.rounds)]
    if initial is not None:
        args += ["--initial-weights", str(initial)]
    if job.dp:
        args += ["--noise-multiplier", str(NOISE_MULTIPLIER)]
    if job.secagg:
        from fedhealth.data.study_file import load_config  # light: pydantic, no Flower or torch
        from fedhealth.privacy.hospital_level import calibrated_secagg_params

        kw = calibrated_secagg_params(load_config(study)).workflow_kwargs()
        args += ["--secagg", "--num-shares", str(kw["num_shares"]),
                 "--reconstruction-threshold", str(kw["reconstruction_threshold"]),
                 "--max-weight", str(kw["max_weight"]), "--clipping-range", str(kw["clipping_range"]),
                 "--quantization-range", str(kw["quantization_range"])]
    return args


# ---------------------------------------------------------------- measuring one process tree


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
    """Samples the summed PSS of a process and every descendant in a background thread.

    A process seen once in the tree keeps counting while it lives (a daemon whose parent exited is
    re-parented out of the tree), and the ones still running after the job exits can be stopped.
    """

    def __init__(self, psutil: Any, pid: int) -> None:
        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.peak_bytes = 0
        self.seen: dict[int, Any] = {pid: self.root}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        with contextlib.suppress(self.psutil.Error):
            for p in self.root.children(recursive=True):
                self.seen.setdefault(p.pid, p)
        total = 0
        for p in list(self.seen.values()):
            try:
                total += p.memory_full_info().pss
            except self.psutil.Error:
                continue  # exited
        self.peak_bytes = max(self.peak_bytes, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_EVERY_S)

    def stop_leftovers(self, grace_s: float = 5.0) -> list[str]:
        """Stop processes of the tree still running after the job exited; their names, for a warning."""
        alive = [p for pid, p in self.seen.items() if pid != self.root.pid and p.is_running()]
        if not alive:
            return []
        _, alive = self.psutil.wait_procs(alive, timeout=grace_s)  # Ray's shutdown may still be finishing
        names = []
        for p in alive:
            with contextlib.suppress(self.psutil.Error):
                names.append(f"{p.name()}[{p.pid}]")
                p.kill()
        return names


@dataclass
class Run:
    side: str  # "flower" or "fedhealth"
    wall_s: float
    peak_pss_gib: float | None
    final: dict[str, float] = field(default_factory=dict)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def measure(cmd: list[str], env: dict[str, str], log: Path, stdout: Path, psutil: Any | None,
            timeout_s: float) -> tuple[int | None, float, float | None]:
    """Run `cmd` in its own session; (exit status or None on timeout, wall seconds, peak tree PSS GiB)."""
    with log.open("wb") as err, stdout.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
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
            if sampler is not None:
                sampler.stop()
    if rc is None:
        _kill_group(proc)
    if sampler is not None:
        left = sampler.stop_leftovers()
        if left:
            _log(f"warning: {cmd[1]} left {len(left)} process(es) running after it exited; stopped {', '.join(left)}")
    return rc, wall, (sampler.peak_bytes / 2**30 if sampler is not None else None)


def run_peer(job: Job, data_dir: Path, study: Path, initial: Path, work: Path, psutil: Any | None,
             timeout_s: float) -> Run:
    work.mkdir(parents=True)
    env = {**os.environ, **TELEMETRY_OFF, "PYTHONPATH": str(HERE)}  # the peer's own folder only: no fedhealth
    log, out = work / "stderr.log", work / "stdout.log"
    cmd = [sys.executable, str(PEER), *peer_args(job, data_dir, study, initial)]
    rc, wall, peak = measure(cmd, env, log, out, psutil, timeout_s)
    lines = [ln for ln in out.read_text(encoding="utf-8", errors="replace").splitlines() if ln.startswith("{")]
    if rc != 0 or not lines:
        why = f"timed out after {timeout_s:.0f} s" if rc is None else f"exited with status {rc}"
        raise BenchError(f"job {job.name}, Flower peer {why} (logs in {work}); last lines:\n{_tail(log)}\n{_tail(out)}")
    final = json.loads(lines[-1])
    return Run("flower", wall, peak,
               {"accuracy": final["accuracy"], "mean_hospital_auroc": final["mean_hospital_auroc"]})


def run_fedhealth(job: Job, study: Path, work: Path, psutil: Any | None, timeout_s: float) -> Run:
    work.mkdir(parents=True)
    run_dir = work / "run"
    env = {**os.environ, **TELEMETRY_OFF, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    log, out = work / "stderr.log", work / "stdout.log"
    cmd = [sys.executable, "-m", "fedhealth.cli", "simulate", "--config", str(study), "--out", str(run_dir)]
    rc, wall, peak = measure(cmd, env, log, out, psutil, timeout_s)
    summary_path = run_dir / "summary.json"
    if rc != 0 or not summary_path.is_file():
        why = f"timed out after {timeout_s:.0f} s" if rc is None else f"exited with status {rc}"
        raise BenchError(f"job {job.name}, fedhealth {why} (logs in {work}); last lines:\n{_tail(out)}\n{_tail(log)}")
    overall = json.loads(summary_path.read_text(encoding="utf-8"))["overall"]
    return Run("fedhealth", wall, peak, {"accuracy": float(overall["accuracy"]["federated"]),
                                         "mean_hospital_auroc": float(overall["mean_hospital_auroc"]["federated"])})


# ---------------------------------------------------------------- summary


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarise(job: Job, flower: list[Run], fed: list[Run]) -> dict[str, Any]:
    """Medians over repeats; ratios are fedhealth / Flower of the medians; the last runs' metrics compared."""
    sides: dict[str, Any] = {}
    for name, runs in (("flower", flower), ("fedhealth", fed)):
        sides[name] = {
            "wall_s": _r(_median([r.wall_s for r in runs])),
            "peak_pss_gib": _r(_median([r.peak_pss_gib for r in runs])),
            "runs_wall_s": [_r(r.wall_s) for r in runs],
            "runs_peak_pss_gib": [_r(r.peak_pss_gib) for r in runs],
            "final": {k: _r(v, 4) for k, v in runs[-1].final.items()},
        }
    gaps = {k: abs(flower[-1].final[k] - fed[-1].final[k]) for k in ("accuracy", "mean_hospital_auroc")}
    return {
        "hospitals": job.hospitals, "rounds": job.rounds, "dp": job.dp, "secagg": job.secagg,
        **sides,
        "time_ratio": _ratio(sides["fedhealth"]["wall_s"], sides["flower"]["wall_s"]),
        "memory_ratio": _ratio(sides["fedhealth"]["peak_pss_gib"], sides["flower"]["peak_pss_gib"]),
        "metric_gap": {k: _r(v, 4) for k, v in gaps.items()},
        "comparable": all(v <= TOLERANCE for v in gaps.values()),
    }


def _versions() -> dict[str, Any]:
    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{d: ver(d) for d in ("flwr", "torch", "opacus", "ray", "numpy")}}


def _git() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(status) if status is not None else None}


def bench(jobs: list[Job], repeats: int, backend: str | None, timeout_s: float, keep: bool) -> dict[str, Any]:
    psutil = _import_psutil()
    if psutil is None:
        _log("warning: psutil not found (nor Ray's copy): peak memory will be null")
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="fedhealth-bench-federation-"))
    try:
        data_dir = work / "data"
        write_data(data_dir, hospitals=max(j.hospitals for j in jobs))
        studies, initial = {}, {}
        for job in jobs:
            studies[job.name] = work / f"{job.name}.toml"
            studies[job.name].write_text(study_toml(job, data_dir, backend), encoding="utf-8")
            initial[job.name] = write_initial_weights(studies[job.name], work / f"{job.name}-initial.npz")
        flower: dict[str, list[Run]] = {j.name: [] for j in jobs}
        fed: dict[str, list[Run]] = {j.name: [] for j in jobs}
        for i in range(repeats):
            for job in jobs:
                tag = f"{job.name}-{i + 1}"
                for side in ("flower", "fedhealth"):
                    if side == "flower":
                        run = run_peer(job, data_dir, studies[job.name], initial[job.name], work / f"{tag}-flower",
                                       psutil, timeout_s)
                        flower[job.name].append(run)
                    else:
                        run = run_fedhealth(job, studies[job.name], work / f"{tag}-fedhealth", psutil, timeout_s)
                        fed[job.name].append(run)
                    _log(f"[{job.name}] {side} {i + 1}/{repeats}: {run.wall_s:.2f} s, peak PSS "
                         f"{run.peak_pss_gib if run.peak_pss_gib is not None else float('nan'):.2f} GiB, "
                         f"accuracy {run.final['accuracy']:.3f}, mean AUROC {run.final['mean_hospital_auroc']:.3f}")
    except BaseException:
        _log(f"work files kept in {work} (a run failed or was interrupted)")
        raise
    if keep:
        _log(f"work files kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    results = {j.name: summarise(j, flower[j.name], fed[j.name]) for j in jobs}
    time_ratios = [r["time_ratio"] for r in results.values() if r["time_ratio"] is not None]
    memory_ratios = [r["memory_ratio"] for r in results.values() if r["memory_ratio"] is not None]
    return {
        "bench": "federation",
        "git": _git(),
        "versions": _versions(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": {"start": [round(x, 2) for x in load_start],
                         "end": [round(x, 2) for x in os.getloadavg()]},
        "repeats": repeats,
        "fedhealth_backend": backend,
        "tolerance": TOLERANCE,
        "jobs": results,
        "ratios": {name: {"time": r["time_ratio"], "memory": r["memory_ratio"]} for name, r in results.items()},
        "time_ratio_max": max(time_ratios) if time_ratios else None,
        "memory_ratio_max": max(memory_ratios) if memory_ratios else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default=None,
                        help=f"comma-separated subset of {', '.join(j.name for j in JOBS)} (default: all five)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved peer/fedhealth pairs per job (3)")
    parser.add_argument("--quick", action="store_true",
                        help=f"development: {' and '.join(QUICK_JOBS)} only, 1 repeat unless --repeats is given")
    parser.add_argument("--fedhealth-backend", default=None,
                        help="written into the study as federation.backend (e.g. in-process, ray); default: unset")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the data, studies, logs and run directories")
    args = parser.parse_args(argv)
    by_name = {j.name: j for j in JOBS}
    names = [n.strip() for n in args.jobs.split(",") if n.strip()] if args.jobs else \
        list(QUICK_JOBS if args.quick else by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        parser.error(f"--jobs: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(by_name)}")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        report = bench([by_name[n] for n in names], repeats, args.fedhealth_backend, args.timeout, args.keep)
    except BenchError as err:
        _log(f"error: {err}")
        return 1
    except Exception:
        _log(f"error: the benchmark itself failed:\n{traceback.format_exc()}")
        return 1
    print(json.dumps(report), flush=True)
    different = [n for n, r in report["jobs"].items() if not r["comparable"]]
    if different:
        _log(f"error: {', '.join(different)}: fedhealth and the Flower peer ended more than {TOLERANCE} apart in "
             "accuracy or mean AUROC, so they did not do the same work; see metric_gap")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
