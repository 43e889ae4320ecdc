"""The hospital's side of secure aggregation: Flower's `secaggplus_mod`, and what must happen
before an update is masked.

Mods run outermost first: `dropout_mod` (tests only) -> `secure_aggregation_mod` (Flower's
SecAgg+) -> `audit_mod` (the hospital's audit trail) -> `update_mod` (what leaves the
hospital) -> `clipping_mod` (hospital-level DP) -> the client. So by the time SecAgg+ masks a
vector it is an update (new minus received weights) that is finite, of the agreed shape,
weighted within `max_weight`, clipped, and, in distributed hospital-level DP, already noised.
The record count goes only into the masked sum: the clear reply carries `num_examples = 0` and no `n_train`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app.message import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from fedhealth.config import StudyConfig
from fedhealth.federation.secagg_params import SecAggParams, derive_secagg_params
from fedhealth.federation.wire import (
    DECLINED_KEY,
    ROUND_KEY,
    SECURE_KEY,
    study_from_payload,
)
from fedhealth.seeding import derive_seed

log = logging.getLogger(__name__)

FIT_CONFIG = "fitins.config"
FIT_NUM_EXAMPLES = "fitres.num_examples"
AFTER_TRAINING = "after_training"  # a test-only dropout stage: trained (and charged), never sent
MALFORMED = "malformed_masked_vector"  # a test-only fault: the masked vector loses its last array
CLIPPED_KEY = "secagg_clipped"  # coordinates of the update beyond SecAgg+'s clipping range


class UpdateRefused(RuntimeError):
    """The hospital will not send this update (it would corrupt or overflow the masked sum)."""


class InjectedDropout(RuntimeError):
    """Raised by the test-only fault injector: this hospital vanishes here."""


_params_cache: dict[str, SecAggParams] = {}


def study_secagg_params(cfg: StudyConfig) -> SecAggParams:
    """The study's SecAgg+ parameters, derived once per process (a pure function of the config)."""
    key = cfg.fingerprint()
    if key not in _params_cache:
        _params_cache.clear()
        _params_cache[key] = derive_secagg_params(cfg)
    return _params_cache[key]


def secagg_stage(msg: Message) -> str | None:
    """The SecAgg+ stage a training message belongs to, or None for a plain training message."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    record = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if record is None else str(record.get(Key.STAGE))


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `secaggplus_mod` for SecAgg+ messages; plain training requests pass through, marked plain.

    The hospital, not the server, records whether a request is secure (`SECURE_KEY` in the fit
    config), so its site policy can refuse plain aggregation whatever the server claims.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    stage = secagg_stage(msg)
    if stage is None:
        if FIT_CONFIG in msg.content.config_records:
            msg.content.config_records[FIT_CONFIG][SECURE_KEY] = False
        return call_next(msg, ctxt)
    if stage == Stage.COLLECT_MASKED_VECTORS:
        config = msg.content.config_records[FIT_CONFIG]
        config[SECURE_KEY] = True
        # Flower's stochastic rounding draws from NumPy's global generator; seeding it per hospital and
        # round makes a secure run reproducible. The masks come from the protocol's own secrets.
        cfg = study_from_payload(dict(config))
        from fedhealth.federation.client import resolve_hospital

        np.random.seed(derive_seed(cfg.seed, "secagg-rounding", resolve_hospital(ctxt, cfg), int(config[ROUND_KEY]))
                       % 2**32)
    reply = secaggplus_mod(msg, ctxt, call_next)
    if stage == Stage.COLLECT_MASKED_VECTORS and not reply.has_error():
        reply.content.metric_records[FIT_NUM_EXAMPLES]["num_examples"] = 0  # the weight is in the masked sum
    return reply


def update_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Turn the client's new weights into the update that leaves the hospital, and check it first."""
    if msg.metadata.message_type != MessageType.TRAIN or FIT_CONFIG not in msg.content.config_records:
        return call_next(msg, ctxt)
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    received = parameters_to_ndarrays(fit_ins.parameters)
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    new = parameters_to_ndarrays(fit_res.parameters)
    cfg = study_from_payload(fit_ins.config)
    metrics = dict(fit_res.metrics)
    qffl = cfg.federation.strategy.name == "qfedavg"
    if DECLINED_KEY in metrics:
        update = [np.zeros_like(r) for r in received]  # weight 0: adds nothing to the masked sum
        if qffl:
            update.append(np.zeros(1, dtype=np.float32))
        num_examples = 0
    else:
        shapes = [tuple(r.shape) for r in received]
        if [tuple(n.shape) for n in new] != shapes:
            raise UpdateRefused(f"the trained model's parameter shapes {[tuple(n.shape) for n in new]} differ from "
                                f"the global model's {shapes}; not sending")
        update = [n - r for n, r in zip(new, received, strict=True)]
        if not all(np.all(np.isfinite(u)) for u in update):
            raise UpdateRefused("the update holds NaN or infinite values; not sending")
        num_examples = fit_res.num_examples
        if qffl:
            update = _qffl_terms(cfg, update, metrics, fit_ins.config)
        if fit_ins.config.get(SECURE_KEY):
            update = _prepare_for_masking(cfg, update, num_examples, metrics)
    fit_res = FitRes(status=fit_res.status, parameters=ndarrays_to_parameters(update),
                     num_examples=num_examples, metrics=metrics)
    reply.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    return reply


def _qffl_terms(cfg: StudyConfig, update: list[np.ndarray], metrics: dict, config: dict) -> list[np.ndarray]:
    from fedhealth.federation.qffl import LOSS_KEY, SCALE_KEY, qffl_terms

    s = cfg.federation.strategy
    if LOSS_KEY not in metrics or SCALE_KEY not in config:
        raise UpdateRefused(f"q-FedAvg needs the hospital's loss ({LOSS_KEY}) and the server's {SCALE_KEY}; "
                            "one is missing, not sending")
    terms = qffl_terms(update, float(metrics[LOSS_KEY]), s.q, s.qffl_learning_rate,
                       float(config[SCALE_KEY]))
    if config.get(SECURE_KEY):
        bound = study_secagg_params(cfg).clipping_range
        if float(terms[-1][0]) > bound:
            # Clipping h would shrink the denominator and lengthen everyone's step: refuse instead.
            raise UpdateRefused(f"q-FedAvg term h = {float(terms[-1][0]):.3g} exceeds the SecAgg+ clipping range "
                                f"{bound:g}; not sending. Raise federation.secure_aggregation.update_bound")
    return terms


def _prepare_for_masking(cfg: StudyConfig, update: list[np.ndarray], weight: int,
                         metrics: dict) -> list[np.ndarray]:
    params = study_secagg_params(cfg)
    if weight > params.max_weight:
        raise UpdateRefused(
            f"weight {weight} (training records) exceeds the study's SecAgg+ max_weight {params.max_weight}: "
            "the masked sum would overflow; not sending. Set federation.secure_aggregation.max_weight to at "
            f"least {weight}")
    if params.noise_std_per_hospital > 0:
        # Distributed DP: this hospital's share of the Gaussian noise, from OS entropy (never from a
        # seed the server could know), added before masking so no one sees the un-noised update.
        rng = np.random.default_rng()
        update = [u + rng.normal(0.0, params.noise_std_per_hospital, u.shape).astype(u.dtype) for u in update]
    ratio = weight / params.max_weight
    clipped = int(sum(np.count_nonzero(np.abs(u) * ratio > params.clipping_range) for u in update))
    if clipped:
        log.warning("%d update coordinates exceed the SecAgg+ clipping range %g and are clipped; raise "
                    "federation.secure_aggregation.update_bound", clipped, params.clipping_range)
    metrics[CLIPPED_KEY] = clipped
    return update


def dropout_mod(faults: Iterable[tuple[int, str, tuple[int, ...]]]) -> Mod:
    """Test-only: hospital `index` vanishes at `stage` in `rounds` (all rounds when empty).

    Vanishing is an exception, which Flower turns into an error reply: to the server the hospital
    is gone, as a crashed or disconnected site is. `after_training` trains (and charges the
    privacy ledger) and then vanishes before its masked vector is sent. In plain aggregation the
    training request counts as `collect_masked_vectors`.
    """
    plan = [(int(i), str(s), tuple(r)) for i, s, r in faults]

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        from fedhealth.federation.client import hospital_index

        index = hospital_index(ctxt)
        stage = secagg_stage(msg) or Stage.COLLECT_MASKED_VECTORS
        try:
            current_round = int(msg.metadata.group_id)
        except ValueError:
            current_round = 0
        for i, s, rounds in plan:
            if i != index or (rounds and current_round not in rounds):
                continue
            if s == stage:
                raise InjectedDropout(f"hospital {index} vanished at SecAgg+ stage {s!r} in round "
                                      f"{current_round} (testing.dropouts)")
            if s == AFTER_TRAINING and stage == Stage.COLLECT_MASKED_VECTORS:
                call_next(msg, ctxt)
                raise InjectedDropout(f"hospital {index} trained and vanished before sending its masked "
                                      f"vector in round {current_round} (testing.dropouts)")
            if s == MALFORMED and stage == Stage.COLLECT_MASKED_VECTORS:
                reply = call_next(msg, ctxt)
                if not reply.has_error():
                    record = reply.content.config_records[RECORD_KEY_CONFIGS]
                    record[Key.MASKED_PARAMETERS] = list(record[Key.MASKED_PARAMETERS])[:-1]
                return reply
        return call_next(msg, ctxt)

    return mod
