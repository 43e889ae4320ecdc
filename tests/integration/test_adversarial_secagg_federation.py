"""A deviating coordinator against the hospitals' own SecAgg+ checks (issue 14, items 3 and 7).

The adversary is fedhealth's real ServerApp, run by Flower's simulation engine, with its SecAgg+
workflow replaced by `Adversary`: it records everything the hospitals send, skips every server-side
check before unmasking, sends the unmask requests it likes (Flower's message format, Flower's
stage order), and then unmasks whatever the replies allow with Flower's own cryptography
(Shamir reconstruction, PRG masks, ECDH pairwise keys). What it recovers is compared with the
target hospital's real update, recomputed in-process with the same seed and tied to the
federation by the hash in the hospital's audit log.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.compat.common import recorddict_compat as compat
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedhealth.coordinator.grid_tap import GridTap
from fedhealth.coordinator.secure_aggregation import SecureAggregationWorkflow
from fedhealth.data.study_file import load_config
from fedhealth.runs import rundir
from fedhealth.wire import HOSPITAL_KEY
from tests.support import federate, smoke

pytestmark = pytest.mark.slow


class Adversary(SecureAggregationWorkflow):
    """fedhealth's SecAgg+ workflow with the coordinator's checks removed and the unmask stage its own.

    `lists(state, senders, round)` returns the unmask request for each node it wants to ask: node id
    -> (active, dropped), or None for Flower's own lists (active = the senders among its neighbours).
    What it sees and recovers is kept per round in `seen[round]`."""

    seen: ClassVar[dict[Any, Any]] = {}

    @classmethod
    def reset(cls, lists: Any = None) -> None:
        cls.seen = {"lists": lists}

    @classmethod
    def round(cls, r: int) -> dict[str, Any]:
        return cls.seen.setdefault(r, {"masked": {}, "hospital": {}, "plain": [], "unmask_errors": [],
                                       "recovered": {}})

    def __call__(self, grid, context) -> None:  # type: ignore[override]
        super().__call__(GridTap(grid, self._record), context)

    def _check_threshold(self, state) -> bool:  # type: ignore[override]
        return True  # a deviating coordinator goes on to unmask however few hospitals are left

    def _check_minimum(self, state) -> None:
        """Nor does it keep the study's minimum (today's code has no such check: nothing to skip)."""

    @classmethod
    def _record(cls, messages: list[Message], replies: list[Message]) -> None:
        if not messages:
            return
        stage = messages[0].content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
        seen = cls.round(int(messages[0].metadata.group_id))
        for reply in replies:
            if reply.has_error():
                if stage == Stage.UNMASK:
                    seen["unmask_errors"].append(str(reply.error.reason))
                continue
            for name, arrays in reply.content.array_records.items():
                values = [a.numpy() for a in arrays.values()]
                if "fitres" in name and values:
                    seen["plain"].append(np.concatenate([v.ravel() for v in values]))
            record = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if stage == Stage.COLLECT_MASKED_VECTORS and record is not None and Key.MASKED_PARAMETERS in record:
                nid = reply.metadata.src_node_id
                seen["masked"][nid] = [bytes_to_ndarray(b) for b in record[Key.MASKED_PARAMETERS]]
                metrics = compat.recorddict_to_fitres(reply.content, keep_input=True).metrics
                if HOSPITAL_KEY in metrics:
                    seen["hospital"][nid] = int(metrics[HOSPITAL_KEY])

    def unmask_stage(self, grid, context, state) -> bool:  # type: ignore[override]
        current_round = int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        seen = self.round(current_round)
        senders = set(state.active_node_ids)
        dead = state.sampled_node_ids - senders
        lists = self.seen["lists"]
        requests = (lists(state, senders, current_round) if lists else None) or {
            nid: (sorted(state.nid_to_neighbours[nid] & senders), sorted(state.nid_to_neighbours[nid] & dead))
            for nid in senders}
        messages = [Message(content=RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({
            Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: list(active), Key.DEAD_NODE_ID_LIST: list(dropped)})}),
            dst_node_id=nid, message_type=MessageType.TRAIN, group_id=str(current_round))
            for nid, (active, dropped) in requests.items()]
        seeds: dict[int, list[bytes]] = {}
        keys: dict[int, list[bytes]] = {}
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            if reply.has_error():
                continue
            active, _ = requests[reply.metadata.src_node_id]
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            for i, (owner, share) in enumerate(zip(record[Key.NODE_ID_LIST], record[Key.SHARE_LIST], strict=True)):
                (seeds if i < len(active) else keys).setdefault(int(owner), []).append(share)
        t = state.threshold
        seed = {nid: combine_shares(s[:t]) for nid, s in seeds.items() if len(s) >= t}
        sk1 = {nid: combine_shares(s[:t]) for nid, s in keys.items() if len(s) >= t}
        masked = seen["masked"]
        for size in range(1, len(masked) + 1):
            for subset in itertools.combinations(sorted(masked), size):
                vector = _unmask(set(subset), masked, seed, sk1, state)
                if vector is not None:
                    seen["recovered"][frozenset(seen["hospital"].get(nid, -1) for nid in subset)] = vector
        return False  # the adversary keeps what it learned; the study records a failed round


def _unmask(subset: set[int], masked: dict[int, list[np.ndarray]], seed: dict[int, bytes],
            sk1: dict[int, bytes], state) -> np.ndarray | None:
    """The sum of `subset`'s updates, if the reconstructed secrets remove every mask on it."""
    if not subset <= set(seed):
        return None
    mod = state.mod_range
    vec = None
    for nid in subset:
        vec = masked[nid] if vec is None else parameters_addition(vec, masked[nid])
    shapes = get_parameters_shape(vec)
    for nid in subset:
        vec = parameters_subtraction(vec, pseudo_rand_gen(seed[nid], mod, shapes))
    for i in subset:
        for j in state.nid_to_neighbours[i] - subset - {i}:
            try:
                if j in sk1:
                    key = generate_shared_key(bytes_to_private_key(sk1[j]),
                                              bytes_to_public_key(state.nid_to_publickeys[i][0]))
                elif i in sk1:
                    key = generate_shared_key(bytes_to_private_key(sk1[i]),
                                              bytes_to_public_key(state.nid_to_publickeys[j][0]))
                else:
                    return None
            except Exception:  # noqa: BLE001 - a secret that did not reconstruct
                return None
            mask = pseudo_rand_gen(key, mod, shapes)
            vec = parameters_subtraction(vec, mask) if i > j else parameters_addition(vec, mask)
    vec = parameters_mod(vec, mod)
    _, arrays = factor_extract(vec)
    values = dequantize(arrays, state.clipping_range, state.quantization_range)
    return np.concatenate([(v - (len(subset) - 1) * state.clipping_range).ravel() for v in values])


@pytest.fixture
def adversary(monkeypatch):
    import fedhealth.coordinator.app as server

    monkeypatch.setattr(server, "SecureAggregationWorkflow", Adversary)
    Adversary.reset()
    return Adversary


def _run(cfg, path: Path) -> Path:
    """Run the federation. A study in which the attack left nothing to aggregate fails (NothingAggregated):
    that is the outcome these tests want, and what they check is what the server holds."""
    from fedhealth.coordinator.app import NothingAggregated

    try:
        return federate(cfg, path)
    except NothingAggregated:
        assert not any(r["hospitals_aggregated"] for r in rundir.read_jsonl(path / rundir.ROUNDS_FILE))
    return path


def _update(cfg, index: int, run_dir: Path, server_round: int = 1) -> np.ndarray:
    """Hospital `index`'s update in a round that started from the initial model, recomputed in-process
    (same seed), checked against the hash its audit log recorded for what it handed to SecAgg+."""
    import torch

    from fedhealth.hospital.app import HospitalClient
    from fedhealth.model.initial import initial_weights
    from fedhealth.privacy.audit import hash_arrays
    from fedhealth.wire import SECURE_KEY, study_payload

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the simulated hospital
    try:
        start = initial_weights(cfg)
        new, _, _ = HospitalClient(index).fit(start, {**study_payload(cfg, server_round, ""), SECURE_KEY: True})
    finally:
        torch.set_num_threads(threads)
    update = [np.asarray(n) - s for n, s in zip(new, start, strict=True)]
    entries = [json.loads(line) for line in
               (run_dir / "audit" / f"{cfg.hospitals[index].name}.jsonl").read_text().splitlines()]
    (sent,) = [e for e in entries if e["round"] == server_round]
    assert sent["update_sha256"] == hash_arrays(update), "the recomputed update is not the one sent"
    return np.concatenate([u.ravel() for u in update])


def _leak(seen: dict[str, Any], target: int, update: np.ndarray) -> float:
    """The largest |correlation| with the target's update of anything the server holds or recovered
    in the round that involves the target (a plain update, its masked vector, an unmasked sum with it)."""
    candidates = [*seen["plain"]]
    candidates += [np.concatenate([a.ravel() for a in v[1:]]).astype(float)
                   for nid, v in seen["masked"].items() if seen["hospital"].get(nid) == target]
    candidates += [v for names, v in seen["recovered"].items() if target in names]
    return max([abs(float(np.corrcoef(c, update)[0, 1])) for c in candidates if c.size == update.size and c.std()],
               default=0.0)


def _smoke(*overrides: str):
    # an MLP: with a few hundred coordinates, chance correlations stay far below the 0.2 the tests allow
    return smoke("federation.rounds=1", "model.name=mlp", "references.local_only=false", "references.pooled=false",
                 *overrides)


def _four(tmp_path: Path, *overrides: str, policy: dict[int, str] | None = None):
    policy = policy or {}
    text = ('name = "four"\nseed = 11\n[model]\nname = "mlp"\n[federation]\nrounds = 1\n'
            '[references]\nlocal_only = false\npooled = false\nnon_private_federation = false\n' + "".join(
                f'[[hospitals]]\nname = "h{i}"\ntier = "secondary"\nregion = "north"\nrecords = {300 + 100 * i}\n'
                + (f"policy = {{ {policy[i]} }}\n" if i in policy else "") for i in range(4)))
    path = tmp_path / "four.toml"
    path.write_text(text)
    return load_config(path, list(overrides))


def _drops(*items: tuple[str, str, int]) -> str:
    return "testing.dropouts=[" + ", ".join(f'{{hospital = "{h}", stage = "{s}", rounds = [{r}]}}'
                                            for h, s, r in items) + "]"


def test_a_lone_participant_sends_nothing_usable(tmp_path, adversary):
    """(a) federation.participants = [X]: the others decline. The coordinator skips its own minimum and
    tells every hospital that everyone is active, hoping the decliners' shares unmask X's vector."""
    cfg = _smoke('federation.participants=["village-clinic"]')
    adversary.reset(lambda state, senders, r: {nid: (sorted(state.sampled_node_ids), [])
                                               for nid in state.sampled_node_ids})
    run_dir = _run(cfg, tmp_path / "run")
    seen = adversary.round(1)
    leak = _leak(seen, 2, _update(cfg, 2, run_dir))
    assert leak < 0.2, f"the coordinator holds data correlating {leak:.11f} with village-clinic's update"
    assert not seen["recovered"]
    assert seen["unmask_errors"], "the hospitals should have refused to unmask"


def test_a_hospital_minimum_above_the_study_minimum_holds_after_dropouts(tmp_path, adversary):
    """(b) Four hospitals, h0's policy needs 4. Round 1: h3 trains and vanishes before sending; three
    masked vectors meet the study's minimum of 3, so the coordinator unmasks (Flower's own lists): h0
    must refuse, and with threshold 3 the two others cannot unmask anything of h0's without it.
    Round 2: h3 vanishes during key sharing, so h0 sees only 3 hospitals and declines before training;
    the coordinator asks the two who sent to unmask their sum, and they refuse too."""
    cfg = _four(tmp_path, "federation.rounds=2", "federation.secure_aggregation.max_consecutive_failures=5",
                _drops(("h3", "after_training", 1), ("h3", "share_keys", 2)), policy={0: "min_hospitals = 4"})
    run_dir = _run(cfg, tmp_path / "run")
    first, second = adversary.round(1), adversary.round(2)
    leak = _leak(first, 0, _update(cfg, 0, run_dir))
    assert leak < 0.2, f"the coordinator holds data correlating {leak:.4f} with h0's update"
    assert not [names for names in first["recovered"] if 0 in names], sorted(map(sorted, first["recovered"]))
    # the server reads the category only; the hospital's minimum (4) stays in its own log
    assert any("fewer contributors than its minimum" in e and "4" not in e for e in first["unmask_errors"]), \
        first["unmask_errors"]

    assert 0 not in second["hospital"].values() and not second["recovered"]
    audit = [json.loads(line) for line in (run_dir / "audit" / "h0.jsonl").read_text().splitlines()]
    assert audit[1]["round"] == 2 and audit[1]["update_sha256"] is None
    assert "too few hospitals: 3 took part" in audit[1]["decision"]  # the full reason stays at the hospital
    rounds = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    assert {"hospital_index": 0, "epsilon": None,
            "reason": "too few hospitals in the round for its minimum aggregate"} in rounds[1]["declined"]


def test_unmask_requests_with_overlapping_lists_or_too_few_active_are_refused(tmp_path, adversary):
    """(c) Round 1, everyone sends; the coordinator names village-clinic both active and dropped in every
    unmask request, asking for both its secrets (private-mask seed and pairwise-mask key), which together
    strip every mask from its vector alone. (d) Round 2, village-clinic trains and vanishes; the
    coordinator drops its own minimum of 3 and asks the two survivors to unmask their sum (Flower's own
    lists): an aggregate of two."""
    cfg = _smoke("federation.rounds=2", "federation.secure_aggregation.max_consecutive_failures=5",
                 _drops(("village-clinic", "after_training", 2)))

    def both(state, senders, r):
        if r != 1:
            return None
        target = next(nid for nid, index in adversary.round(1)["hospital"].items() if index == 2)
        return {nid: (sorted(senders), [target]) for nid in senders}

    adversary.reset(both)
    run_dir = _run(cfg, tmp_path / "run")
    first, second = adversary.round(1), adversary.round(2)
    leak = _leak(first, 2, _update(cfg, 2, run_dir, 1))
    alone = frozenset({2}) in first["recovered"]
    assert not alone and leak < 0.2, f"village-clinic's update recovered alone: {alone}, correlation {leak:.11f}"
    assert len(first["unmask_errors"]) == 3
    assert all("both active and dropped" in e for e in first["unmask_errors"]), first["unmask_errors"]

    leak = _leak(second, 0, _update(cfg, 0, run_dir, 2))
    assert not second["recovered"] and leak < 0.2, \
        f"recovered {sorted(map(sorted, second['recovered']))}, correlation with city-tertiary {leak:.4f}"
    assert len(second["unmask_errors"]) == 2
    assert all("fewer" in e and "minimum" in e for e in second["unmask_errors"]), second["unmask_errors"]
