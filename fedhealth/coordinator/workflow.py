"""Flower's default workflow, able to start at any round and to act when a round completes.

Flower's `DefaultWorkflow` always runs rounds 1..N. Resuming a study needs rounds k+1..N from a
checkpoint, and the run directory needs a hook after each round's fit *and* evaluation. The fit
step stays pluggable, so SecAgg+ (`SecAggPlusWorkflow`) drops in exactly as in Flower.
"""

from __future__ import annotations

import logging
import timeit
from collections.abc import Callable

from flwr.app import ConfigRecord
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.server.workflow.default_workflows import (
    DefaultWorkflow,
    default_init_params_workflow,
)
from flwr.serverapp.grid import Grid

log = logging.getLogger(__name__)

RoundEnd = Callable[[int, LegacyContext], None]


class StudyWorkflow(DefaultWorkflow):
    def __init__(self, first_round: int, on_round_end: RoundEnd, fit_workflow=None, evaluate_workflow=None) -> None:
        super().__init__(fit_workflow=fit_workflow, evaluate_workflow=evaluate_workflow)
        self.first_round = first_round
        self.on_round_end = on_round_end

    def __call__(self, grid: Grid, context: LegacyContext) -> None:  # type: ignore[override]
        if not isinstance(context, LegacyContext):
            raise TypeError(f"expected a LegacyContext, got {type(context).__name__}")
        thread, f_stop, c_done = start_update_client_manager_thread(grid, context.client_manager)
        try:
            c_done.wait()
            default_init_params_workflow(grid, context)
            cfg = ConfigRecord()
            cfg[Key.START_TIME] = timeit.default_timer()
            context.state.config_records[MAIN_CONFIGS_RECORD] = cfg
            for current_round in range(self.first_round, context.config.num_rounds + 1):
                cfg[Key.CURRENT_ROUND] = current_round
                self.fit_workflow(grid, context)
                self.evaluate_workflow(grid, context)
                self.on_round_end(current_round, context)
        finally:
            f_stop.set()
            thread.join()
