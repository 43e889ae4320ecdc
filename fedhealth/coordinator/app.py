"""The server side: build the ServerApp that runs a study into a run directory.

The server holds no patient data. It sends the study config and global weights, aggregates what
comes back with Flower's strategy, and writes metrics and checkpoints after every round.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.common import Context, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp.grid import Grid

from fedhealth.coordinator.attendance import NodeNames, StudyClientManager
from fedhealth.coordinator.observed import ObservedStrategy
from fedhealth.coordinator.prompt_grid import PromptGrid
from fedhealth.coordinator.recorder import RoundCallback, RunRecorder
from fedhealth.coordinator.reply_deadline import ReplyDeadline
from fedhealth.coordinator.secure_aggregation import SecureAggregationWorkflow
from fedhealth.coordinator.stoppable import StoppableGrid, check_stop
from fedhealth.coordinator.strategies import build_strategy, is_qffl, optimizer_state, restore_optimizer_state
from fedhealth.coordinator.workflow import StudyWorkflow
from fedhealth.data.study_file import load_config
from fedhealth.errors import AggregationError, RunInterrupted
from fedhealth.model.initial import initial_weights
from fedhealth.privacy.hospital_level import calibrated_secagg_params
from fedhealth.runs import rundir
from fedhealth.study.config import StudyConfig
from fedhealth.wire import study_payload

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
log = logging.getLogger(__name__)
Finisher = Callable[[StudyConfig, Path, dict[str, float]], Any]


def min_contributors(cfg: StudyConfig) -> int:
    """Fewest hospitals whose updates the server releases an aggregate of (it refuses a round below
    this before unmasking, or in plain aggregation before aggregating).

    Under SecAgg+ at least 3 (`fedhealth.study.secagg.SECAGG_MINIMUM`): with 2, each hospital reads the other's
    update from the sum, and an aggregate of one *is* that hospital's update. In hospital-level DP the
    study's `privacy.min_contributors`, the fixed count its noise is calibrated to (validated to be at
    least 3 under SecAgg+). Each hospital enforces its own minimum as well, and that is the check
    that holds against a deviating server. Plain aggregation outside hospital-level DP keeps 1: a
    hospital refuses plain aggregation by its policy."""
    from fedhealth.study.secagg import SECAGG_MINIMUM

    floor = SECAGG_MINIMUM if cfg.federation.secure_aggregation.enabled else 1
    if cfg.privacy.mode == "hospital":
        from fedhealth.study.hospital_dp import min_contributors as noise_contributors

        return max(floor, noise_contributors(cfg))
    return floor


def run_study(grid: Grid, context: Context, cfg: StudyConfig, run_dir: Path,
              on_round: RoundCallback | None = None) -> None:
    """Run (or continue) the study's rounds; the run directory must already hold its config.

    A simulation's driver that may be asked to stop passes a `StoppableGrid`: once its stop is set, the next
    exchange with the hospitals raises `RunInterrupted` and a round not yet recorded stays unrecorded, so the
    run directory ends at its last completed round."""
    stop: threading.Event | None = getattr(grid, "fedhealth_stop", None)
    node_names: NodeNames | None = None
    if hasattr(grid, "pull_interval"):
        # Simulation's in-memory Grid polls for replies every 0.1 s; SecAgg+ needs four exchanges per
        # round, so the wait alone would dominate a small study's round.
        grid.pull_interval = 0.01
    else:  # deployment's Grid sleeps 3 s between pulls for replies
        grid = PromptGrid(grid)
        node_names = registered_names(grid)
    grid = ReplyDeadline(grid, cfg.federation.reply_timeout, node_names)  # no exchange waits for ever
    last = rundir.last_completed_round(run_dir)
    if last:
        weights, opt_state = rundir.load_weights(rundir.checkpoint_path(run_dir, last))
        log.info("resuming %s after round %d", run_dir, last)
    elif cfg.describe is not None:  # a cohort description: the "model" is the zero vector of its layout
        from fedhealth.statistics.study import description_terms

        weights, opt_state = [np.zeros(description_terms(cfg).length, dtype=np.float64)], {}
    else:
        weights, opt_state = initial_weights(cfg), {}
    shapes = [tuple(w.shape) for w in weights]
    for name in (rundir.METRICS_FILE, rundir.ROUNDS_FILE):
        rundir.truncate_jsonl_after_round(run_dir / name, last)

    ledger_dir = str((run_dir / rundir.PRIVACY_DIR).resolve())
    inner = build_strategy(cfg, weights, lambda r: study_payload(cfg, r, ledger_dir),
                           lambda r: study_payload(cfg, r, ledger_dir))
    restore_optimizer_state(inner, opt_state)
    raw = is_qffl(inner)
    if raw:
        shapes = [*shapes, (1,)]  # q-FedAvg: hospitals send Delta per array, then h
    recorder = RunRecorder(run_dir, cfg, on_round)
    fit_workflow = None
    if cfg.federation.secure_aggregation.enabled:
        params = calibrated_secagg_params(cfg)
        rundir.write_json(run_dir / rundir.SECAGG_FILE, params.as_dict())
        log.info("SecAgg+: %s", params.as_dict())
        strategy = ObservedStrategy(inner, recorder, shapes, secure=True, min_contributors=min_contributors(cfg),
                                    raw_updates=raw)
        fit_workflow = SecureAggregationWorkflow(params, shapes, strategy)
    else:
        log.warning("secure aggregation is off (federation.secure_aggregation.enabled = false): "
                    "the server sees every hospital's update")
        strategy = ObservedStrategy(inner, recorder, shapes, min_contributors=min_contributors(cfg), raw_updates=raw)

    def round_end(server_round: int, ctx: LegacyContext) -> None:
        check_stop(stop)  # replies cut short by the stop (hospitals killed mid-round) are no round to record
        params = compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        recorder.complete_round(server_round, parameters_to_ndarrays(params), optimizer_state(inner))

    n = len(cfg.hospitals)
    attendance = StudyClientManager(n, cfg.federation.min_hospitals or n, cfg.federation.wait_for_hospitals,
                                    hospitals=[h.name for h in cfg.hospitals] if node_names else None,
                                    node_names=node_names)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.federation.rounds),
                           strategy=strategy, client_manager=attendance)
    StudyWorkflow(first_round=last + 1, on_round_end=round_end, fit_workflow=fit_workflow)(grid, legacy)
    require_an_aggregate(run_dir)


def registered_names(grid: Grid | PromptGrid) -> NodeNames:
    """How to ask the SuperLink the name each connected node was registered under (`flwr supernode register
    --name`; Flower's NodeInfo carries it to the ServerApp): attendance.py sends nothing to a node whose name is
    not one of the study's hospitals."""
    def names() -> dict[int, str]:
        return {int(node.node_id): str(node.name) for node in grid.get_nodes()}

    return names


class NothingAggregated(AggregationError, RuntimeError):
    """Every round ended without a single hospital's update in the aggregate: there is no federated model."""


def require_an_aggregate(run_dir: Path) -> None:
    """Fail a study in which no round aggregated any hospital: its "final model" would be the initial one,
    and a report would call it federated. The rounds file says why each hospital declined."""
    rows = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    if rows and not any(r.get("hospitals_aggregated") for r in rows):
        reasons = sorted({d.get("reason", "") for r in rows for d in r.get("declined", [])})
        detail = f"; hospitals said: {' | '.join(reasons[:3])}" if reasons else ""
        raise NothingAggregated(f"no round of {len(rows)} aggregated any hospital's update, so there is no "
                                f"federated model{detail}. See {rundir.ROUNDS_FILE} in {run_dir}")


def build_server_app(cfg: StudyConfig | None = None, run_dir: Path | None = None,
                     on_round: RoundCallback | None = None, finish: Finisher | None = None,
                     stop: threading.Event | None = None,
                     finish_description: Callable[[StudyConfig, Path], Any] | None = None) -> ServerApp:
    """A ServerApp for one study. Without arguments (as under `flwr run`), the study comes from the run
    config keys `config` (a TOML path relative to the project) and `out` (run directory); `resume=true`
    continues `out` from its last checkpoint (after a SuperLink restart, say) instead of refusing it.

    `finish(study, run_dir, seconds)`, when given and the run config says `references=true`, writes the
    final model, references and summary after the last round (`server/app.py` passes the simulation's);
    otherwise the run directory is marked completed as it stands.

    `stop` (simulation, with `cfg` and `run_dir`): the driver's stop request (see `run_study`). A stop ends the
    ServerApp quietly; the driver that asked for it records the run as interrupted.

    A cohort description instead of training (`fedhealth describe`; docs/cohort-statistics.md): the run config
    `describe=true`, with `epsilon`, `bins` and `min_cell` as `fedhealth describe` takes them (`epsilon` 0, the
    app's default: exact, which deployed hospitals decline). After its one round
    `finish_description(study, run_dir)` writes Table 1 from the unmasked sum (`server/app.py` passes the one
    of `fedhealth.experiments.describe`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if cfg is not None and run_dir is not None:
            try:
                # the stop wraps Flower's own Grid, innermost, so every proxy a caller puts around the
                # Grid it is given (the SecAgg+ screen, a benchmark's or a test's tap) sees each exchange
                run_study(StoppableGrid(grid, stop) if stop is not None else grid, context, cfg, run_dir,
                          on_round)
            except RunInterrupted:
                if stop is None or not stop.is_set():
                    raise
                log.info("stopped on the driver's request after round %d", rundir.last_completed_round(run_dir))
            return
        project = Path(__file__).resolve().parents[2]
        config_path = Path(str(context.run_config.get("config", "configs/smoke.toml")))
        if not config_path.is_absolute():
            config_path = project / config_path
        study = load_config(config_path)
        if _truthy(context.run_config.get("describe", False)):
            from fedhealth.study.config import description_of

            rc = context.run_config
            epsilon = float(rc.get("epsilon", 0.0))  # the app's default 0: exact
            study = description_of(study, epsilon=epsilon if epsilon > 0 else None,
                                   bins=int(rc["bins"]) if "bins" in rc else None,
                                   min_cell=int(rc["min_cell"]) if "min_cell" in rc else None)
        out = str(context.run_config.get("out", "")) or None
        if _truthy(context.run_config.get("resume", False)):
            if out is None:
                raise rundir.RunDirError("resume=true needs out=<the run directory to continue>")
            target = rundir.reopen_run_dir(Path(out), study)
            log.warning("fedhealth run directory: %s (resuming after round %d)", Path(out).resolve(),
                        rundir.last_completed_round(target))
        else:
            target = rundir.create_run_dir(
                study, Path(out) if out else None,
                resume_hint="to continue it, submit again with --run-config \"... resume=true\"; "
                            "for a new run, choose another out")
            log.warning("fedhealth run directory: %s", target.resolve())
        started = time.perf_counter()
        try:
            with rundir.failed_on_signal(target):
                run_study(grid, context, study, target, on_round)
            if study.describe is not None:
                if finish_description is None:
                    raise ValueError("this ServerApp was built without finish_description: it cannot write a "
                                     "description's Table 1 (server/app.py passes it)")
                finish_description(study, target)
                rundir.mark_completed(target)
            elif context.run_config.get("references", True) and finish is not None:
                # Simulation only: the synthetic hospitals are regenerated there from the seed.
                finish(study, target, {"federation": time.perf_counter() - started})
            else:
                rundir.mark_completed(target)
        except BaseException as err:
            # `flwr run` may still exit 0: the run directory must say the study failed, and why. A stop by
            # signal was already recorded with its reason; Flower's exit that follows must not overwrite it.
            if rundir.read_state(target).get("stopped_by") is None:
                rundir.mark_status(target, "failed", error=f"{type(err).__name__}: {err}")
            raise

    return app


def _truthy(value: object) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes")
