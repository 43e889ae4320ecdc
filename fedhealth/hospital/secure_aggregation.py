"""The hospital's side of secure aggregation: Flower's `secaggplus_mod`, what must happen before an
update is masked, and what the hospital checks before it helps unmask.

Mods run outermost first: `dropout_mod` (tests only) -> `secure_aggregation_mod` (Flower's
SecAgg+, wrapped in the hospital's own checks) -> `audit_mod` (the hospital's audit trail) ->
`update_mod` (what leaves the hospital) -> `clipping_mod` (hospital-level DP) -> the client. So by the
time SecAgg+ masks a vector it is an update (new minus received weights) that is finite, of the
agreed shape, weighted within `max_weight`, clipped, and, in distributed hospital-level DP, already
noised. The record count goes only into the masked sum: the clear reply carries `num_examples = 0`
and no `n_train`.

The hospital decides whether an aggregate is large enough; the server's own refusal (in
`secagg_server`) is a courtesy, this is the check that holds. With `minimum = hospital_minimum(...)`
(at least 3, the site policy's `min_hospitals`, and in distributed hospital-level DP the study's
`privacy.min_contributors`) the hospital:

- at setup, refuses a reconstruction threshold that is not a strict majority of the share count
  (below it a server could collect both secrets of one hospital from honest replies);
- at collect-masked-vectors, counts the participants it can verify itself: the distinct peers whose
  encrypted key shares it received (each decrypted with a key agreed with that peer's public key),
  plus itself. The setup stage's "sample number" is only the server's claim and is not used. It
  sends its masked vector only if that count reaches its minimum and the threshold t is at least
  minimum - 1 (so that, if it later refuses to help unmask, the t hospitals that could unmask its
  vector without it, with its own vector, already make an aggregate of its minimum);
- declines a round (not in `federation.participants`, its site policy, its privacy budget, or the
  checks above) by dropping out: an error reply, so the protocol treats it as a dropout, never a
  zero vector. The server is told only a category of reason (no path, count or value); the full
  reason stays in the hospital's log and audit trail;
- refuses an unmask request whose active and dropped lists overlap (Flower 1.41's client never checks
  this: both lists name a node whose private-mask seed *and* pairwise key would then be released,
  which strips every mask from that node's vector alone), that does not list it as active (it sent
  its vector), that names nodes it never exchanged keys with, or whose active list is below its
  minimum; a hospital that declined a round, or sent no masked vector, refuses every unmask request
  of that round.

What these checks do NOT prevent:
- A server that sends different hospitals inconsistent views. Every check is on one hospital's own
  request; Flower 1.41's SecAgg+ is the semi-honest variant, with no consistency-check round and no
  signatures, so a server can give each hospital a list that passes its checks and still combine the
  replies. With threshold t, a neighbourhood of k and a minimum m: to unmask the sum over a set S of
  hospitals the server needs, for each of the k - |S| others, t shares of its pairwise key from
  hospitals that list it dropped, and each hospital lists at most k - m as dropped. So such a
  combination needs (k - |S|) * t <= k * (k - m): never for k = 3 or 4 at m = 3, but at k = 5, t = 3,
  m = 3 a sum of two hospitals can be unmasked. One hospital's update alone (|S| = 1) stays out of
  reach whenever m >= (k + 1) / 2, t being a strict majority of k.
- Sybil nodes. Public keys are not bound to hospital identities (no PKI in Flower's SecAgg+): a
  server that generates key pairs for fake peers, and runs the protocol for them, inflates the count
  a hospital observes and answers unmask requests itself. In simulation every node is the server's
  to create. Deployment's SuperNode authentication limits who may connect, not which keys the
  SuperLink forwards.
- Other hospitals colluding with the server: a colluding hospital can hand over its shares without
  contributing a vector, so it counts as a contributor it is not.
- In a sparse SecAgg+ graph (more than 15 hospitals per round) a hospital sees only its
  neighbourhood, so its minimum is checked against at most `num_shares` peers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ConfigRecord, Error
from flwr.app.message import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common import recorddict_compat as compat

from fedhealth.errors import HospitalRefusedError, InjectedFault
from fedhealth.hospital.node_config import settings_of
from fedhealth.seeding import derive_seed
from fedhealth.study.config import StudyConfig
from fedhealth.study.policy import SitePolicy
from fedhealth.study.secagg import SECAGG_MINIMUM, SecAggParams
from fedhealth.wire import (
    DECLINED_KEY,
    HOSPITAL_KEY,
    ROUND_KEY,
    SECURE_KEY,
    public_decline_reason,
    study_from_payload,
)

log = logging.getLogger(__name__)

FIT_CONFIG = "fitins.config"
FIT_NUM_EXAMPLES = "fitres.num_examples"
AFTER_TRAINING = "after_training"  # a test-only dropout stage: trained (and charged), never sent
MALFORMED = "malformed_masked_vector"  # a test-only fault: the masked vector loses its last array
CLIPPED_KEY = "secagg_clipped"  # coordinates of the update beyond SecAgg+'s clipping range
GUARD_KEY = "fedhealth.secagg_guard"  # the hospital's own record of the round, in its node state


class UpdateRefused(HospitalRefusedError, RuntimeError):
    """The hospital will not send this update (it would corrupt or overflow the masked sum)."""


class InjectedDropout(InjectedFault, RuntimeError):
    """Raised by the test-only fault injector: this hospital vanishes here."""


class _Declined(HospitalRefusedError):
    """The hospital declines the round (raised through Flower's mod to stop it masking anything)."""


_params_cache: dict[str, SecAggParams] = {}


def study_secagg_params(cfg: StudyConfig) -> SecAggParams:
    """The study's SecAgg+ parameters, derived once per process (a pure function of the config)."""
    key = cfg.fingerprint()
    if key not in _params_cache:
        _params_cache.clear()
        from fedhealth.privacy.hospital_level import calibrated_secagg_params

        _params_cache[key] = calibrated_secagg_params(cfg)
    return _params_cache[key]


def minimum_aggregate(policy: SitePolicy | None) -> int:
    """Fewest hospitals, itself included, an aggregate holding this hospital's update may have.

    At least 3 whatever the policy says: in a secure aggregate of 2 each hospital reads the other's
    update by subtracting its own. A hospital without a policy uses 3."""
    return max(SECAGG_MINIMUM, policy.min_hospitals if policy is not None else SECAGG_MINIMUM)


def hospital_minimum(cfg: StudyConfig, policy: SitePolicy | None) -> int:
    """The minimum this hospital enforces: `minimum_aggregate(policy)`, and in distributed
    hospital-level DP the study's `privacy.min_contributors`, which its noise share was sized for
    (fewer contributors would carry less than the announced noise)."""
    least = minimum_aggregate(policy)
    if cfg.privacy.mode == "hospital" and cfg.privacy.hospital_noise == "distributed":
        from fedhealth.study.hospital_dp import min_contributors

        least = max(least, min_contributors(cfg))
    return least


def own_policy(ctxt: Context, cfg: StudyConfig, index: int) -> SitePolicy | None:
    """The hospital's site policy: its own file (node config `policy-file`), else (simulation) the
    study's inline one. Never the server's wish."""
    policy_file = settings_of(ctxt).policy_file
    return SitePolicy.from_file(policy_file) if policy_file else cfg.hospitals[index].policy


def secagg_stage(msg: Message) -> str | None:
    """The SecAgg+ stage a training message belongs to, or None for a plain training message."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    record = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if record is None else str(record.get(Key.STAGE))


def _refuse(msg: Message, reason: str) -> Message:
    """An error reply: to Flower's workflow this hospital dropped out of the stage."""
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def _guard(ctxt: Context) -> ConfigRecord:
    if GUARD_KEY not in ctxt.state.config_records:
        ctxt.state.config_records[GUARD_KEY] = ConfigRecord({"sent": False, "declined": False})
    return ctxt.state.config_records[GUARD_KEY]


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `secaggplus_mod` inside the hospital's own checks (see the module docstring); plain
    training requests pass through, marked plain.

    The hospital, not the server, records whether a request is secure (`SECURE_KEY` in the fit
    config), so its site policy can refuse plain aggregation whatever the server claims."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    stage = secagg_stage(msg)
    if stage is None:
        if FIT_CONFIG in msg.content.config_records:
            msg.content.config_records[FIT_CONFIG][SECURE_KEY] = False
        return call_next(msg, ctxt)
    if stage == Stage.SETUP:
        return _setup(msg, ctxt, call_next)
    if stage == Stage.COLLECT_MASKED_VECTORS:
        return _collect(msg, ctxt, call_next)
    if stage == Stage.UNMASK:
        return _unmask(msg, ctxt, call_next)
    return secaggplus_mod(msg, ctxt, call_next)


def _setup(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    ctxt.state.config_records[GUARD_KEY] = ConfigRecord({"sent": False, "declined": False})
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    threshold, shares = configs.get(Key.THRESHOLD), configs.get(Key.SHARE_NUMBER)
    if isinstance(threshold, int) and isinstance(shares, int) and 2 * threshold <= shares:
        reason = (f"refusing SecAgg+ setup: reconstruction threshold {threshold} is not a strict majority of "
                  f"{shares} shares (a server lying about dropouts could unmask one hospital's update); the "
                  f"coordinator must use at least {shares // 2 + 1}")
        log.warning("%s", reason)
        return _refuse(msg, reason)
    return secaggplus_mod(msg, ctxt, call_next)


def _collect(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    config = msg.content.config_records[FIT_CONFIG]
    config[SECURE_KEY] = True
    cfg = study_from_payload(dict(config))
    from fedhealth.hospital.identity import resolve_hospital

    index = resolve_hospital(ctxt, cfg)
    server_round = int(config[ROUND_KEY])
    guard = _guard(ctxt)
    guard["sent"], guard["declined"] = False, True  # until the masked vector is on its way
    minimum = hospital_minimum(cfg, own_policy(ctxt, cfg, index))
    me = int(msg.metadata.dst_node_id)
    sources = msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.SOURCE_LIST, [])
    peers = sorted({int(s) for s in sources} - {me})  # each forwarded a share encrypted for this hospital
    observed = len(peers) + 1
    flower_state = ctxt.state.config_records.get(RECORD_KEY_STATE, ConfigRecord())
    threshold = int(flower_state.get("threshold", 0))
    problem = None
    if observed < minimum:
        problem = (f"too few hospitals: {observed} took part in the SecAgg+ key exchange with this hospital "
                   f"(itself included), its minimum aggregate is {minimum}")
    elif threshold < minimum - 1:
        problem = (f"the round's reconstruction threshold {threshold} would let {threshold} other hospitals unmask "
                   f"this hospital's update in an aggregate of {threshold + 1}, below its minimum {minimum}; the "
                   f"coordinator must set federation.secure_aggregation.reconstruction_threshold >= {minimum - 1}")
    if problem:
        return _decline_untrained(msg, ctxt, cfg, index, f"hospital {cfg.hospitals[index].name}: {problem}; "
                                                         f"declining round {server_round}")
    # Flower's stochastic rounding draws from NumPy's global generator; seeding it per hospital and
    # round makes a secure run reproducible. The masks come from the protocol's own secrets.
    np.random.seed(derive_seed(cfg.seed, "secagg-rounding", index, server_round) % 2**32)

    def train_then_check(inner: Message, c: Context) -> Message:
        reply = call_next(inner, c)
        if not reply.has_error():
            metrics = reply.content.config_records.get("fitres.metrics", {})
            if DECLINED_KEY in metrics:
                raise _Declined(str(metrics[DECLINED_KEY]))
        return reply

    try:
        reply = secaggplus_mod(msg, ctxt, train_then_check)
    except _Declined as declined:
        log.warning("hospital %s declined round %d: %s", cfg.hospitals[index].name, server_round, declined)
        return _refuse(msg, public_decline_reason(index, str(declined)))
    if not reply.has_error():
        reply.content.metric_records[FIT_NUM_EXAMPLES]["num_examples"] = 0  # the weight is in the masked sum
        guard = _guard(ctxt)
        guard["sent"], guard["declined"] = True, False
        guard["minimum"], guard["peers"], guard["node"] = minimum, peers, me
    return reply


def _decline_untrained(msg: Message, ctxt: Context, cfg: StudyConfig, index: int, reason: str) -> Message:
    """Decline before training: the audit trail records the decline as for any other, and nothing is
    computed, charged or masked."""
    from fedhealth.hospital.audit_mod import audit_mod

    log.warning("%s", reason)
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)

    def declined(m: Message, _: Context) -> Message:
        res = FitRes(status=Status(code=Code.OK, message="declined"), parameters=fit_ins.parameters,
                     num_examples=0, metrics={HOSPITAL_KEY: index, DECLINED_KEY: reason})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=m)

    audit_mod(msg, ctxt, declined)
    return _refuse(msg, public_decline_reason(index, reason))


def _unmask(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    guard = _guard(ctxt)
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    active = [int(n) for n in configs.get(Key.ACTIVE_NODE_ID_LIST, [])]
    dropped = [int(n) for n in configs.get(Key.DEAD_NODE_ID_LIST, [])]
    problem, category = None, ""
    if guard.get("declined") or not guard.get("sent"):
        problem = "this hospital declined or sent no masked vector in this round, so it helps unmask nothing"
        category = "it declined or sent nothing this round"
    else:
        me, minimum = int(guard["node"]), int(guard["minimum"])
        known = set(guard.get("peers", [])) | {me}
        overlap = sorted(set(active) & set(dropped))
        if overlap:
            problem = (f"nodes {overlap} are listed both active and dropped: that would release both secrets of "
                       "each (its private-mask seed and its pairwise-mask key), unmasking its update alone")
            category = "nodes listed both active and dropped"
        elif me not in active:
            problem = "this hospital sent its masked vector but is not in the active list"
            category = "it is not in the active list"
        elif not set(active) | set(dropped) <= known:
            problem = (f"nodes {sorted(set(active) | set(dropped) - known)} never exchanged keys with this "
                       "hospital in this round")
            category = "nodes that never exchanged keys with it"
        elif len(set(active)) < minimum:
            problem = (f"the aggregate would hold {len(set(active))} hospitals, fewer than this hospital's "
                       f"minimum {minimum}")
            category = "fewer contributors than its minimum aggregate"
    if problem:
        # The detail (node ids, its minimum) stays in the hospital's log; the server reads the category only.
        log.warning("refusing to unmask: %s", problem)
        return _refuse(msg, f"refusing to unmask: {category}")
    guard["sent"] = False  # one unmask reply per round (Flower's stage order also enforces it)
    return secaggplus_mod(msg, ctxt, call_next)


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
        # Plain aggregation skips a declined result; under SecAgg+ `secure_aggregation_mod` turns the
        # decline into a dropout before anything is masked, so this zero vector is never sent there.
        update = [np.zeros_like(r) for r in received]
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
    from fedhealth.model.qffl import LOSS_KEY, SCALE_KEY, qffl_terms

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
        from fedhealth.hospital.identity import hospital_index

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
