"""Run a simulated study end to end: federation on Flower's simulation engine, references, summary.

Order matters for honesty: the run directory and its resolved config exist before round 1, every
round is checkpointed as it completes, and the run is marked completed only after every planned
round has its checkpoint; anything else ends in a SimulationError and a `failed` state that
`--resume` can continue from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import numpy as np

from fedhealth.data.hospitals import load_hospital  # noqa: E402
from fedhealth.data.study_file import load_config
from fedhealth.errors import FederationError, RunInterrupted  # noqa: E402
from fedhealth.experiments import interrupts, references  # noqa: E402
from fedhealth.experiments.summary import build_summary  # noqa: E402
from fedhealth.runs import rundir  # noqa: E402
from fedhealth.study.config import StudyConfig, without_privacy  # noqa: E402

log = logging.getLogger(__name__)


class SimulationError(FederationError, RuntimeError):
    """The federation did not complete every planned round."""


class _DropRunSimulationDeprecation(logging.Filter):
    """`run_simulation` is Flower's in-process simulation API; its deprecation notice is noise for our users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation" not in record.getMessage()


def _quiet_flower(verbose: bool) -> None:
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if not any(isinstance(f, _DropRunSimulationDeprecation) for f in flwr_logger.filters):
        flwr_logger.addFilter(_DropRunSimulationDeprecation())


@contextmanager
def _flower_deprecations_silenced() -> Iterator[None]:
    """DeprecationWarnings silenced for the Flower and Ray calls inside only, never process-wide: importing
    `flwr.simulation` installs a process-wide "once" filter for them, so it is imported inside too, and that
    filter goes with ours when the block ends (the user's own filters come back as they were)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


_shared_depth = 0
_backends: list[Any] = []  # Flower's Ray backends of the federations running now (their actor pools)
_reaper = interrupts.Reaper()
GRACE_SECONDS = 2.0  # after a stop signal: for the hospitals' current task to end on its own
KILL_WAIT_SECONDS = 2.5  # after their workers are killed: for the federation's threads to end
FEDERATION_THREAD = "fedhealth-federation"


@contextmanager
def shared_ray() -> Iterator[None]:
    """Run every Ray federation inside on one Ray instance instead of starting and stopping Ray for each.

    Flower's Ray backend starts Ray when none is running and shuts it down after every federation:
    about 4.5 s to start and 1.5 s to stop on 2 cores (FLOWER-NOTES), paid again by each sibling of a
    sweep, each coalition of a contribution estimate and each federation of the test suite. Inside
    this context the backend still terminates its actors after each federation (nothing of one run
    survives into the next) but leaves Ray up; it is shut down when the outermost context exits, and
    whatever Ray process outlives `ray.shutdown` (raylet's agents, a worker a stop had to kill) is killed.
    In-process federations (`federation.backend = "in-process"`) never touch Ray: nothing is imported
    or started for them, here or at the end.
    """
    global _shared_depth
    _shared_depth += 1
    try:
        yield
    finally:
        _shared_depth -= 1
        if _shared_depth == 0:
            _unpatch_ray_backend()
            if "ray" in sys.modules:
                stop_ray()


_ray_patch: tuple[Any, Any, Any] | None = None  # (RayBackend, its terminate, its build) while patched


def _patch_ray_backend() -> None:
    """Inside `shared_ray`, before a Ray federation: its backend ends its actors but not Ray, and registers
    itself so that a stop finds the federation's actors."""
    global _ray_patch
    if _shared_depth == 0 or _ray_patch is not None:
        return
    with _flower_deprecations_silenced():
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    original, original_build = RayBackend.terminate, RayBackend.build

    def terminate_actors_only(self: RayBackend) -> None:
        if self.pool:
            self.pool.terminate_all_actors()

    def build_and_register(self: RayBackend, app_fn) -> None:
        original_build(self, app_fn)
        _backends.append(self)

    RayBackend.terminate, RayBackend.build = terminate_actors_only, build_and_register
    _ray_patch = (RayBackend, original, original_build)


def _unpatch_ray_backend() -> None:
    global _ray_patch
    if _ray_patch is not None:
        backend, terminate, build = _ray_patch
        backend.terminate, backend.build = terminate, build
        _ray_patch = None


def stop_ray() -> None:
    """`ray.shutdown()`, then kill what is left of this driver's Ray processes and stop the reaper."""
    import ray

    if ray.is_initialized():
        leftover = interrupts.ray_processes()
        try:
            ray.shutdown()
        finally:
            interrupts.kill({**leftover, **interrupts.ray_processes()})
    _reaper.stop()


def _start_ray(backend_config: dict[str, Any]) -> None:
    """Start Ray here, in the main thread, exactly as Flower's backend would (`RayBackend` inits it), and
    start the reaper beside it. Here because Ray starts its services with PR_SET_PDEATHSIG, which fires
    when the *thread* that started them ends: started from the federation's thread they would die with it.
    Ray's SIGTERM handler (exit at once, wherever the main thread is) is replaced by ours again."""
    import ray

    if ray.is_initialized():
        return
    with _flower_deprecations_silenced():
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    handler = signal.getsignal(signal.SIGTERM)
    try:
        RayBackend(backend_config)
    finally:
        signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)
    _reaper.start()


def _kill_actors() -> None:
    """`ray.kill` every actor of the running federations' pools, idle or busy (Ray then knows it was asked
    to, and the tasks they ran fail at once in the federation's threads)."""
    import ray

    for backend in list(_backends):
        pool = getattr(backend, "pool", None)
        if pool is None:
            continue
        for actor in [*pool.pool, *getattr(pool, "_future_to_actor", {}).values()]:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)


def _federation_running() -> bool:
    """A federation thread of this process is still alive (one that a stop could not end)."""
    return any(t.name == FEDERATION_THREAD and t.is_alive() for t in threading.enumerate())


def run_federation(cfg: StudyConfig, run_dir: Path,
                   on_round: Callable[[int, dict[str, Any]], None] | None = None, verbose: bool = False) -> None:
    """Flower's simulation engine: one virtual SuperNode per hospital, our ServerApp and ClientApp.

    From the main thread, SIGINT and SIGTERM stop it cleanly (see `fedhealth.experiments.interrupts`): the
    server records no further round, the hospitals' current tasks get `GRACE_SECONDS` to end (then their
    workers are killed), the run directory is marked `interrupted` and `RunInterrupted` is raised."""
    from fedhealth.coordinator.app import build_server_app
    from fedhealth.hospital.app import build_client_app

    _quiet_flower(verbose)
    on_ray = simulation_backend(cfg) == "ray"
    backend_config = {
        "client_resources": {"num_cpus": cfg.federation.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose},
    }
    # Flower's documented way onto a running cluster is Ray's own init argument. Without one, "local": a new
    # Ray of this process, never one that `ray start` left on the machine (which Ray would otherwise join)
    backend_config["init_args"]["address"] = cfg.federation.ray_address or "local"

    def federation(stop: threading.Event | None = None) -> None:
        with _flower_deprecations_silenced():
            from flwr.simulation import run_simulation

            from fedhealth.experiments import in_process, message_pump

            message_pump.install()
            with contextlib.nullcontext() if on_ray else in_process.selected():
                run_simulation(server_app=build_server_app(cfg, run_dir, on_round, stop=stop),
                               client_app=build_client_app(cfg, mode="simulation"),
                               num_supernodes=len(cfg.hospitals), backend_config=backend_config,
                               verbose_logging=verbose)

    if on_ray:
        _patch_ray_backend()
    if threading.current_thread() is threading.main_thread() and on_ray:
        with shared_ray(), interrupts.federation_stop() as request:
            _patch_ray_backend()
            _start_ray(backend_config)
            try:
                _run_until_stopped(federation, request, run_dir)
            finally:
                _backends.clear()
    elif threading.current_thread() is threading.main_thread():
        with interrupts.federation_stop() as request:
            _run_until_stopped(federation, request, run_dir, on_ray=False)
    else:  # no signal reaches this thread: the caller's own handling stands
        federation()
    done = rundir.last_completed_round(run_dir)
    if done < cfg.federation.rounds:
        raise SimulationError(f"{run_dir}: federation stopped after round {done} of {cfg.federation.rounds}; "
                              "see the log above, then `fedhealth simulate --resume` this directory")


RAY_FROM_HOSPITALS = 100
"""With `federation.backend = "auto"`, federations of this many hospitals or more run on Ray (given more than
one core): measured on 2 cores (docs/results.md, "SecAgg+ as hospitals grow"), Ray's second actor outweighs
its start-up from about here; below it, the in-process backend's missing start-up cost wins."""


def simulation_backend(cfg: StudyConfig) -> str:
    """The backend a simulation of `cfg` runs on: `federation.backend`, with "auto" resolved.

    "auto" is Ray when a `ray_address` names a cluster, or when the study has `RAY_FROM_HOSPITALS` hospitals
    or more and this machine has several cores; "in-process" otherwise. Both give the same model bit for bit
    (tests/integration/test_simulate_federation.py), so the choice is one of speed only."""
    chosen = cfg.federation.backend
    if chosen != "auto":
        return chosen
    if cfg.federation.ray_address is not None:
        return "ray"
    several_cores = (os.cpu_count() or 1) > 1
    return "ray" if several_cores and len(cfg.hospitals) >= RAY_FROM_HOSPITALS else "in-process"


def _run_until_stopped(federation: Callable[[threading.Event], None], request: interrupts.StopRequest,
                       run_dir: Path, on_ray: bool = True) -> None:
    """Run `federation` in a thread while this (main) thread waits, ready for a stop signal."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            federation(request.event)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, raised there
            failure.append(err)

    thread = threading.Thread(target=target, name=FEDERATION_THREAD, daemon=True)
    if not request.event.is_set():  # a signal during Ray's start: no federation at all
        thread.start()
    while thread.is_alive() and not request.event.is_set():
        thread.join(0.1)
    if request.event.is_set():
        if on_ray:
            _wind_down(thread, request)
        else:
            _wait_for_task(thread, request)
        name = request.signal_name
        rundir.mark_status(run_dir, "interrupted", released=not thread.is_alive(), stopped_by=name)
        raise RunInterrupted(_stopped(run_dir, name), name)
    if failure:
        raise failure[0]


def _stopped(run_dir: Path, name: str) -> str:
    """What an interrupted run's message says: the signal, where the run stands, how to continue it."""
    where = rundir.describe_state(run_dir).replace(f"interrupted by {name}", f"stopped by {name}", 1)
    return f"{run_dir}: {where}; continue with: fedhealth simulate --resume {run_dir}"


def _wind_down(thread: threading.Thread, request: interrupts.StopRequest) -> None:
    """The server stops at its next exchange with the hospitals; give their current tasks `GRACE_SECONDS` to
    end on their own (a DP release charged is then also stored, so a resumed round re-sends it at no new
    cost), then kill the Ray workers that still run one (a second signal skips the wait)."""
    deadline = time.monotonic() + GRACE_SECONDS
    while thread.is_alive() and time.monotonic() < deadline and not request.forced.is_set():
        thread.join(0.1)
    if thread.is_alive():
        logging.getLogger("flwr").setLevel(logging.CRITICAL)  # each killed actor would be logged as an error
        _kill_actors()
        thread.join(1.0)
    if thread.is_alive():  # ray.kill did not end them (a worker stuck in native code): kill the processes
        interrupts.kill(interrupts.ray_workers(), grace=0)
        thread.join(KILL_WAIT_SECONDS)
    if thread.is_alive():
        log.error("the federation did not stop after its Ray workers were killed; Ray is shut down under it")


def _wait_for_task(thread: threading.Thread, request: interrupts.StopRequest) -> None:
    """In-process hospitals are threads of this process, which nothing can kill safely: the server stops at
    its next exchange, and the hospital's current task (one local training or evaluation) runs to its end,
    so that a DP release charged is also stored. A second signal stops the wait; the run is then recorded
    as not released (its thread still runs until the process exits)."""
    while thread.is_alive() and not request.forced.is_set():
        thread.join(0.1)


def privacy_summary(cfg: StudyConfig, run_dir: Path) -> dict[str, Any]:
    """Epsilon spent vs cap per hospital, from the ledgers as each hospital accepts them; who declined
    rounds, when and why.

    A ledger is read through the hospital's own verification (`ledger_standing`): one the hospital refused
    (altered) is reported as refused, with no epsilon, never with the figure the file holds; one that cannot
    be read (truncated) is reported as unreadable, naming the file. Neither fails the summary."""
    from fedhealth.privacy.ledger import ledger_standing

    declined: dict[int, list[dict[str, Any]]] = {}
    trained: dict[int, list[int]] = {}
    for row in rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE):
        for d in row.get("declined", []):
            declined.setdefault(d["hospital_index"], []).append({"round": row["round"], "reason": d["reason"]})
        for i in row.get("hospitals_trained", []):
            trained.setdefault(i, []).append(row["round"])
    hospitals = []
    for i, h in enumerate(cfg.hospitals):
        path = rundir.hospital_file(run_dir, rundir.PRIVACY_DIR, h.name, ".json")
        standing = ledger_standing(path, h.name, cfg.privacy_delta())
        stops = declined.get(i, [])
        accepted = standing.status in ("accepted", "absent")
        hospitals.append({  # the cap is the one the hospital enforced, as its ledger recorded it
            "name": h.name, "ledger": standing.status, "ledger_problem": standing.problem,
            "epsilon": standing.epsilon if accepted else None,
            "cap": standing.cap if standing.cap is not None else cfg.epsilon_cap(i),
            # an untrusted ledger says nothing: the rounds are the coordinator's own record of who trained
            "rounds_trained": list(standing.rounds) if accepted else trained.get(i, []),
            "stopped_at_round": stops[0]["round"] if stops else None,
            "stop_reason": stops[0]["reason"] if stops else None,
        })
    return {"mode": "record", "unit": "one patient record at one hospital", "accountant": "rdp",
            "delta": cfg.privacy_delta(), "max_grad_norm": cfg.privacy.max_grad_norm, "hospitals": hospitals}


def hospital_privacy_summary(cfg: StudyConfig, run_dir: Path) -> dict[str, Any]:
    """One epsilon for the study: what the released models reveal about any one hospital's participation."""
    from fedhealth.privacy.hospital_level import hospital_epsilon, hospital_noise

    rounds = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    return {"mode": "hospital", "unit": "one hospital's whole data set", "accountant": "rdp",
            "noise": ("server-side Gaussian after client-side clipping (Flower), added after SecAgg+ unmasking"
                      if cfg.privacy.hospital_noise == "central" else
                      "distributed: each hospital adds its share of the Gaussian noise before SecAgg+ masking"),
            "delta": cfg.privacy_delta(),
            "noise_multiplier": hospital_noise(cfg), "clipping_norm": cfg.privacy.clipping_norm,
            "epsilon": hospital_epsilon(cfg, len(rounds)), "rounds": len(rounds)}


def run_sibling(sibling: StudyConfig, run_dir: Path) -> list[np.ndarray]:
    """Run a sibling federation (a `fedhealth.study.config.variant` of a study) in a new run directory
    and return its final global model: the one way sweeps, strategy comparisons and Shapley coalitions
    run theirs. The caller scores it on the original study's splits (`fedhealth.experiments.sweep.score`)."""
    target = rundir.create_run_dir(sibling, run_dir)
    run_federation(sibling, target)
    weights, _ = rundir.load_weights(rundir.checkpoint_path(target, sibling.federation.rounds))
    rundir.mark_completed(target)
    return weights


SIBLING_DIR = rundir.SIBLING_DIR


def finish(cfg: StudyConfig, run_dir: Path, seconds: dict[str, float]) -> dict[str, Any]:
    """Train the references on the same splits, write the final model, references and summary."""
    from fedhealth.model.initial import initial_weights

    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    final, _ = rundir.load_weights(rundir.checkpoint_path(run_dir, cfg.federation.rounds))
    rundir.save_weights(run_dir / rundir.MODEL_FILE, final)
    init = initial_weights(cfg)
    preds = {"federated": references.federated(cfg, splits, final)}
    sibling = run_dir / SIBLING_DIR
    if (sibling / rundir.CONFIG_FILE).exists():
        no_dp = load_config(sibling / rundir.CONFIG_FILE)
        weights, _ = rundir.load_weights(rundir.checkpoint_path(sibling, no_dp.federation.rounds))
        preds["federated_no_dp"] = references.federated(cfg, splits, weights)
    t0 = time.perf_counter()
    if cfg.references.local_only:
        preds["local_only"] = references.local_only(cfg, splits, init)
    if cfg.references.pooled:
        preds["pooled"] = references.pooled(cfg, splits, init)
    seconds = {**seconds, "references": time.perf_counter() - t0}
    extra: dict[str, Any] = {"seconds": seconds}
    if cfg.privacy.mode == "record":
        extra["privacy"] = privacy_summary(cfg, run_dir)
    elif cfg.privacy.mode == "hospital":
        extra["privacy"] = hospital_privacy_summary(cfg, run_dir)
    summary = build_summary(cfg, splits, preds, extra)
    rundir.write_json(run_dir / rundir.SUMMARY_FILE, summary)
    rundir.mark_completed(run_dir)
    return summary


def _run_sibling_without_dp(cfg: StudyConfig, run_dir: Path, verbose: bool) -> None:
    """Same hospitals, seed and splits, DP off: the difference in AUROC is what privacy cost."""
    no_dp = without_privacy(cfg)
    sibling = run_dir / SIBLING_DIR
    if not (sibling / rundir.CONFIG_FILE).exists():
        rundir.create_run_dir(no_dp, sibling)
    if rundir.last_completed_round(sibling) < no_dp.federation.rounds:
        log.warning("running the same federation without DP to measure the utility cost of privacy")
        run_federation(no_dp, sibling, None, verbose)
    rundir.mark_completed(sibling)


def simulate(cfg: StudyConfig, run_dir: Path, on_round: Callable[[int, dict[str, Any]], None] | None = None,
             verbose: bool = False) -> dict[str, Any]:
    """Run (or resume) the federation in `run_dir`, then the references; returns the summary. SIGINT or
    SIGTERM at any point marks the run `interrupted` and raises `RunInterrupted`."""
    with interrupts.stop_signals():  # SIGTERM too ends in RunInterrupted, between federations as well
        return _simulate(cfg, run_dir, on_round, verbose)


def _simulate(cfg: StudyConfig, run_dir: Path, on_round: Callable[[int, dict[str, Any]], None] | None,
              verbose: bool) -> dict[str, Any]:
    from fedhealth.runs.tracking import open_tracker, round_metrics, summary_metrics

    t0 = time.perf_counter()
    tracker = None
    try:
        tracker = open_tracker(cfg, run_dir)
        hook = on_round
        if tracker is not None:
            def hook(server_round: int, info: dict[str, Any]) -> None:
                tracker.log_round(server_round, round_metrics(run_dir, server_round, info))
                if on_round is not None:
                    on_round(server_round, info)
        if rundir.last_completed_round(run_dir) < cfg.federation.rounds:
            run_federation(cfg, run_dir, hook, verbose)
        if cfg.privacy.mode != "none" and cfg.references.non_private_federation:
            _run_sibling_without_dp(cfg, run_dir, verbose)
        t1 = time.perf_counter()
        summary = finish(cfg, run_dir, {"federation": t1 - t0})
        if tracker is not None:
            tracker.log_summary(summary_metrics(summary))
        return summary
    except KeyboardInterrupt as err:  # RunInterrupted from a federation or between them, or a plain Ctrl-C
        name = getattr(err, "signal_name", "SIGINT")
        rundir.mark_status(run_dir, "interrupted", released=not _federation_running(), stopped_by=name)
        raise RunInterrupted(_stopped(run_dir, name), name) from None  # this run, not a sibling inside it
    except BaseException as err:
        rundir.mark_status(run_dir, "failed", released=not _federation_running(),
                           error=f"{type(err).__name__}: {err}")
        raise
    finally:
        if tracker is not None:
            tracker.close()
