"""The engine's message pump hands out exactly what Flower's per-node polling would, pass by pass.

`next_messages` replaces `[state.get_message_ins(node_id=n, limit=1) for n in nodes]` (Flower 1.41's
`add_messages_to_queue`) with one scan. The yardstick here is Flower's own `InMemoryLinkState.get_message_ins`,
run on an identical store: both must deliver the same messages in the same order, mark the same ones
delivered and drop the same expired ones, on every pass until the store is drained."""

from __future__ import annotations

import random
import threading
from types import SimpleNamespace

import pytest
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

from fedhealth.experiments.message_pump import next_messages


class _Store(InMemoryLinkState):
    """Flower's in-memory LinkState with only what message polling touches: the store, its lock and a
    validity check that drops the messages this test marks expired (Flower's own check drops expired
    ones and those of nodes outside the run's federation)."""

    def __init__(self, messages: dict[str, SimpleNamespace]) -> None:  # pylint: disable=super-init-not-called
        self.lock = threading.RLock()
        self.message_ins_store = messages
        self.checked: list[str] = []

    def _check_stored_messages(self, message_ids, run_id=None) -> None:
        for msg_id in message_ids:
            self.checked.append(msg_id)
            message = self.message_ins_store.get(msg_id)
            if message is not None and message.expired:
                del self.message_ins_store[msg_id]


def _messages(seed: int, nodes: list[int]) -> dict[str, SimpleNamespace]:
    rng = random.Random(seed)
    out = {}
    for i in range(rng.randint(0, 60)):
        dst = rng.choice(nodes + [999])  # 999: a node the engine does not serve
        delivered = "earlier" if rng.random() < 0.2 else ""
        out[f"m{i}"] = SimpleNamespace(metadata=SimpleNamespace(dst_node_id=dst, delivered_at=delivered, run_id=1),
                                       expired=rng.random() < 0.1, name=f"m{i}")
    return out


def _flower_pass(state: _Store, nodes: list[int]) -> list[str]:
    return [m.name for n in nodes for m in InMemoryLinkState.get_message_ins(state, node_id=n, limit=1)]


def _snapshot(state: _Store) -> dict[str, tuple[int, bool]]:
    """The live messages and which are delivered. Expired ones are left out: neither side ever delivers one,
    but Flower's scan for a node stops at that node's first message, so it drops an expired message only
    on a later scan that reaches it, where the pump drops it on the first pass."""
    return {k: (m.metadata.dst_node_id, m.metadata.delivered_at != "")
            for k, m in state.message_ins_store.items() if not m.expired}


@pytest.mark.parametrize("seed", range(40))
def test_every_pass_delivers_what_flowers_per_node_polling_delivers(seed):
    nodes = random.Random(seed).sample(range(1, 30), 12)
    ours, flowers = _Store(_messages(seed, nodes)), _Store(_messages(seed, nodes))
    for _ in range(70):  # more passes than messages: the store drains
        assert [m.name for m in next_messages(ours, nodes)] == _flower_pass(flowers, nodes)
        assert _snapshot(ours) == _snapshot(flowers)
    assert not [m for m in ours.message_ins_store.values()
                if m.metadata.delivered_at == "" and m.metadata.dst_node_id in nodes]


def test_one_pass_checks_each_stored_message_once():
    nodes = list(range(1, 101))
    state = _Store({f"m{n}": SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n, delivered_at="", run_id=1),
                                             expired=False, name=f"m{n}") for n in nodes})
    assert len(next_messages(state, nodes)) == 100
    assert len(state.checked) == 100  # Flower's per-node polling checks 5,050 here


def test_the_engine_uses_the_pump_once_installed():
    from flwr.server.superlink.fleet.vce import vce_api

    from fedhealth.experiments import message_pump

    message_pump.install()
    message_pump.install()
    assert vce_api.add_messages_to_queue is message_pump.pump_messages
