"""Run a simulated study end to end: federation on Flower's simulation engine, references, summary.

Order matters for honesty: the run directory and its resolved config exist before round 1, every
round is checkpointed as it completes, and the run is marked completed only after every planned
round has its checkpoint; anything else ends in a SimulationError and a `failed` state that
`--resume` can continue from.
"""

from __future__ import annotations

import logging
import os
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
from fedhealth.errors import FederationError  # noqa: E402
from fedhealth.experiments import references  # noqa: E402
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


@contextmanager
def shared_ray() -> Iterator[None]:
    """Run every federation inside on one Ray instance instead of starting and stopping Ray for each.

    Flower's Ray backend starts Ray when none is running and shuts it down after every federation:
    about 4.5 s to start and 1.5 s to stop on 2 cores (FLOWER-NOTES), paid again by each sibling of a
    sweep, each coalition of a contribution estimate and each federation of the test suite. Inside
    this context the backend still terminates its actors after each federation (nothing of one run
    survives into the next) but leaves Ray up; it is shut down when the outermost context exits.
    """
    global _shared_depth
    import ray

    with _flower_deprecations_silenced():
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    original = RayBackend.terminate

    def terminate_actors_only(self: RayBackend) -> None:
        if self.pool:
            self.pool.terminate_all_actors()

    _shared_depth += 1
    if _shared_depth == 1:
        RayBackend.terminate = terminate_actors_only
    try:
        yield
    finally:
        _shared_depth -= 1
        if _shared_depth == 0:
            RayBackend.terminate = original
            if ray.is_initialized():
                ray.shutdown()


def run_federation(cfg: StudyConfig, run_dir: Path,
                   on_round: Callable[[int, dict[str, Any]], None] | None = None, verbose: bool = False) -> None:
    """Flower's simulation engine: one virtual SuperNode per hospital, our ServerApp and ClientApp."""
    from fedhealth.coordinator.app import build_server_app
    from fedhealth.hospital.app import build_client_app

    _quiet_flower(verbose)
    backend_config = {
        "client_resources": {"num_cpus": cfg.federation.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose},
    }
    with _flower_deprecations_silenced():
        from flwr.simulation import run_simulation

        run_simulation(server_app=build_server_app(cfg, run_dir, on_round),
                       client_app=build_client_app(cfg, mode="simulation"), num_supernodes=len(cfg.hospitals),
                       backend_config=backend_config, verbose_logging=verbose)
    done = rundir.last_completed_round(run_dir)
    if done < cfg.federation.rounds:
        raise SimulationError(f"{run_dir}: federation stopped after round {done} of {cfg.federation.rounds}; "
                              "see the log above, then `fedhealth simulate --resume` this directory")


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
    """Run (or resume) the federation in `run_dir`, then the references; returns the summary."""
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
    except BaseException as err:
        rundir.mark_status(run_dir, "failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        if tracker is not None:
            tracker.close()
