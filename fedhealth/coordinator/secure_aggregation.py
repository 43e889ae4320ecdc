"""The server's side of secure aggregation: Flower's `SecAggPlusWorkflow`, made loud.

Flower's workflow ends a round that cannot complete (too many dropouts, a protocol error) by
logging "halted" and returning, and the study carries on as if the round had trained. Here:
- each stage's outcome is checked; a halted round is reported to the strategy with the stage, the
  hospitals still active, the threshold, and every error a hospital sent back, so the run
  directory records it as failed (and the run stops after too many in a row);
- a masked vector that is malformed (wrong number or shape of arrays, not integers, outside the
  modulus) is screened out before it touches the sum: to the protocol that hospital dropped, so the
  survivors' aggregate is still exact, and the rejection is recorded with its reason;
- an exception inside the protocol fails the round, not the study;
- before unmasking, an aggregate of fewer masked vectors than the study's minimum
  (`observer.min_contributors`, see `fedhealth.coordinator.app.min_contributors`) is refused and
  no unmask request is sent. A deviating coordinator can drop this check: each hospital's own
  check (`secagg_client`) is the one that holds; this one keeps an honest server from asking.
The cryptography, masking and unmasking are Flower's, untouched.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from flwr.app import Message, RecordDict
from flwr.common import FitRes, bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation import secaggplus_workflow as flower_secaggplus
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp.grid import Grid

from fedhealth.coordinator.grid_tap import GridTap
from fedhealth.coordinator.observed import short_error
from fedhealth.errors import AggregationError
from fedhealth.study.secagg import SecAggParams
from fedhealth.wire import HOSPITAL_KEY

log = logging.getLogger(__name__)


class AggregateRefused(AggregationError, RuntimeError):
    """The server will not unmask this round's aggregate (too few hospitals sent a masked vector)."""


class SecureRoundObserver(Protocol):
    min_contributors: int  # fewest masked vectors the server unmasks a sum of

    def masked_vector_rejected(self, index: int | None, reason: str) -> None: ...

    def secure_round_failed(self, reason: str, results: list[tuple[ClientProxy, FitRes]],
                            failures: list[BaseException]) -> None: ...

    def secure_stage_seconds(self, seconds: dict[str, float]) -> None: ...


def masked_vector_problem(content: RecordDict, shapes: list[tuple[int, ...]], modulus: int) -> str | None:
    """Why a stage-2 reply's masked vector (in its content) cannot enter the sum, or None.

    Flower adds masked vectors with NumPy broadcasting, so a wrongly shaped vector could be
    silently broadcast into the sum; one outside the modulus would shift it."""
    record = content.config_records.get(RECORD_KEY_CONFIGS)
    if record is None or Key.MASKED_PARAMETERS not in record:
        return "the reply carries no masked vector"
    raw = record[Key.MASKED_PARAMETERS]
    expected = [(1,), *shapes]  # the masked weight factor, then one array per parameter tensor
    if not isinstance(raw, list) or len(raw) != len(expected):
        return f"masked vector has {len(raw) if isinstance(raw, list) else 'no'} arrays, expected {len(expected)}"
    for i, (blob, shape) in enumerate(zip(raw, expected, strict=True)):
        try:
            arr = bytes_to_ndarray(blob)
        except Exception as err:  # noqa: BLE001 - any decoding failure is a malformed vector
            return f"masked array {i} does not decode ({type(err).__name__})"
        if tuple(arr.shape) != shape:
            return f"masked array {i} has shape {tuple(arr.shape)}, expected {shape}"
        if arr.dtype.kind not in "iu":
            return f"masked array {i} has dtype {arr.dtype}, expected integers"
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= modulus):
            return f"masked array {i} holds values outside [0, {modulus})"
    return None


def _hospital_of(msg: Message) -> int | None:
    try:
        index = compat.recorddict_to_fitres(msg.content, keep_input=True).metrics.get(HOSPITAL_KEY)
    except Exception:  # noqa: BLE001 - a reply too broken to name its hospital
        return None
    return None if index is None else int(index)


def masked_vector_screen(shapes: list[tuple[int, ...]], modulus: int, observer: SecureRoundObserver):
    """For a `GridTap`: drop malformed masked vectors from stage-2 replies, and report each one."""

    def screen(messages: list[Message], replies: list[Message]) -> list[Message] | None:
        record = messages[0].content.config_records.get(RECORD_KEY_CONFIGS) if messages else None
        if record is None or record.get(Key.STAGE) != Stage.COLLECT_MASKED_VECTORS:
            return None
        kept = []
        for reply in replies:
            problem = None if reply.has_error() else masked_vector_problem(reply.content, shapes, modulus)
            if problem:
                observer.masked_vector_rejected(_hospital_of(reply), f"malformed masked vector: {problem}")
                continue
            kept.append(reply)
        return kept

    return screen


class SecureAggregationWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow with parameters from `derive_secagg_params` and loud failures."""

    STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")

    def __init__(self, params: SecAggParams, shapes: list[tuple[int, ...]], observer: SecureRoundObserver) -> None:
        super().__init__(**params.workflow_kwargs())
        self.params = params
        self.shapes = shapes
        self.observer = observer

    def __call__(self, grid: Grid, context: LegacyContext) -> None:  # type: ignore[override]
        if not isinstance(context, LegacyContext):
            raise TypeError(f"expected a LegacyContext, got {type(context).__name__}")
        state = WorkflowState()
        screened = GridTap(grid, masked_vector_screen(self.shapes, self.params.modulus_range, self.observer))
        steps = (self.setup_stage, self.share_keys_stage, self.collect_masked_vectors_stage, self.unmask_stage)
        seconds: dict[str, float] = {}
        for name, step in zip(self.STAGES, steps, strict=True):
            started = time.perf_counter()
            try:
                ok = step(screened, context, state)  # type: ignore[arg-type]
            except AggregateRefused as refusal:
                ok, error, refused = False, None, str(refusal)
            except Exception as err:  # noqa: BLE001 - a protocol error fails this round, not the study
                log.exception("SecAgg+ %s stage raised", name)
                ok, error, refused = False, f"{type(err).__name__}: {err}", None
            else:
                error = refused = None
            seconds[name] = round(time.perf_counter() - started, 4)
            self.observer.secure_stage_seconds(seconds)
            if not ok:
                self._halted(name, state, error, refused)
                return
            if name == "share_keys":
                self._forget_hospitals_without_shared_keys(state)

    @staticmethod
    def _forget_hospitals_without_shared_keys(state: WorkflowState) -> None:
        """Flower 1.41 treats a hospital that vanished at setup or key sharing as "dead" at unmasking:
        it asks the survivors for shares of its key (they hold none: every survivor fails) and removes
        pairwise masks that no one added. Only hospitals whose keys were shared are part of any mask,
        so from here on the round is among those alone. Bookkeeping only; the cryptography is Flower's."""
        shared = set(state.active_node_ids)
        state.sampled_node_ids = shared
        state.nid_to_neighbours = {nid: nbrs & shared for nid, nbrs in state.nid_to_neighbours.items()
                                   if nid in shared}

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext,  # type: ignore[override]
                                     state: WorkflowState) -> bool:
        """Flower's stage, then the study's minimum: too few masked vectors fail the round with that
        reason (rather than Flower's threshold message), before any unmask request is sent."""
        ok = super().collect_masked_vectors_stage(grid, context, state)
        self._check_minimum(state)
        return ok

    def _check_minimum(self, state: WorkflowState) -> None:
        """AggregateRefused when fewer hospitals sent a masked vector than `observer.min_contributors`."""
        senders = len(state.active_node_ids)
        minimum = self.observer.min_contributors
        if senders < minimum:
            raise AggregateRefused(
                f"only {senders} hospital(s) contributed an update (sent a masked vector); the study releases no "
                f"aggregate of fewer than {minimum} (an aggregate of one is that hospital's update; hospital-level "
                "DP noise is calibrated to privacy.min_contributors); not unmasked, no unmask request sent")

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:  # type: ignore[override]
        """Flower's unmask stage, reconstructing each secret from exactly `threshold` shares.

        Flower hands every share it collected (up to `num_shares`) to Shamir reconstruction, whose
        pure-Python GF(2^128) interpolation costs grow with the square of the shares given; any
        `threshold` of them determine the same secret, and supplying more verifies nothing. With
        `num_shares` 15 and threshold 8 this halves the unmask stage. The reconstruction itself is
        Flower's `combine_shares`, swapped in only for the duration of this call.

        First, the study's minimum (`_check_minimum`), as after the collect stage."""
        self._check_minimum(state)
        threshold = state.threshold

        def combine_threshold_shares(share_list: list[bytes]) -> bytes:
            return combine_shares(share_list[:threshold])

        flower_secaggplus.combine_shares = combine_threshold_shares
        try:
            return super().unmask_stage(grid, context, state)
        finally:
            flower_secaggplus.combine_shares = combine_shares

    def _halted(self, stage: str, state: WorkflowState, error: str | None, refused: str | None = None) -> None:
        sampled = len(state.sampled_node_ids)
        active = len(state.active_node_ids)
        reason = refused or (
            f"SecAgg+ {stage} stage could not complete: {active} of {sampled} hospitals still active, "
            f"each neighbourhood of {state.num_shares or self.params.num_shares} needs "
            f"{state.threshold or self.params.reconstruction_threshold}")
        if error:
            reason += f"; protocol error: {error}"
        errors = sorted({short_error(str(getattr(f.args[0] if f.args else f, 'reason', f))) for f in state.failures})
        if errors:
            reason += f"; hospitals reported: {' | '.join(errors[:5])}"
        log.error("round not aggregated: %s", reason)
        results = getattr(state, "legacy_results", [])
        self.observer.secure_round_failed(reason, list(results), list(state.failures))
