"""Flower's simulation engine hands out the server's messages in one scan of the LinkState per pass.

Flower 1.41's engine (`flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`) polls every 0.1 s
and, on each pass, asks the LinkState for one undelivered message per virtual node:
`state.get_message_ins(node_id, limit=1)` for each node in turn. The in-memory LinkState answers each call
by scanning and re-validating every stored message under its lock, so one pass costs nodes × messages
checks: at 300 hospitals, about 90,000 checks ten times a second, holding the lock and the GIL that the
ClientApps and the ServerApp need (docs/results.md, "SecAgg+ as hospitals grow").

`pump_messages` is the same loop with the same result per pass (every stored message validated and the
expired ones dropped, then at most one undelivered message per node, the first in store order, marked
delivered and queued in the engine's node order), found in one scan of the store. (Flower drops an expired
message when a node's scan reaches it, which can be a pass later; neither ever delivers one.) It is installed in
place of Flower's function for both simulation backends; nothing else of the engine changes. A LinkState
other than Flower's in-memory one (which the simulation engine always uses) gets Flower's per-node calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from queue import Queue
from typing import Any

from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

__all__ = ["install", "next_messages", "pump_messages"]

POLL_SECONDS = 0.1  # Flower's own interval between passes


def next_messages(state: Any, nodes: Iterable[int]) -> list[Message]:
    """One pass: at most one undelivered message per node, in `nodes` order, each marked delivered.

    The same messages that `[state.get_message_ins(node_id=n, limit=1) for n in nodes]` returns, and the
    same effect on the store, with one scan instead of one per node."""
    order = list(nodes)
    if not isinstance(state, InMemoryLinkState):
        return [m for n in order for m in state.get_message_ins(node_id=n, limit=1)]
    wanted = set(order)
    first: dict[int, Message] = {}
    with state.lock:
        ids = list(state.message_ins_store.keys())
        state._check_stored_messages(set(ids))  # pylint: disable=protected-access
        for msg_id in ids:
            message = state.message_ins_store.get(msg_id)
            if message is None or message.metadata.delivered_at != "":
                continue
            node = message.metadata.dst_node_id
            if node in wanted and node not in first:
                first[node] = message
        delivered_at = now().isoformat()
        for message in first.values():
            message.metadata.delivered_at = delivered_at
    return [first[n] for n in order if n in first]


def pump_messages(state: Any, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
    """Drop-in for Flower's `add_messages_to_queue`: queue each pass's messages until `f_stop` is set."""
    while not f_stop.is_set():
        for message in next_messages(state, nodes_mapping.keys()):
            queue.put(message)
        f_stop.wait(POLL_SECONDS)


_lock = threading.Lock()


def install() -> None:
    """Make Flower's simulation engine use `pump_messages` (idempotent; for every later federation)."""
    with _lock:
        if vce_api.add_messages_to_queue is not pump_messages:
            vce_api.add_messages_to_queue = pump_messages
