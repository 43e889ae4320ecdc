"""Every exchange with the hospitals ends: a Grid whose waits without a timeout get the study's own.

Flower's default workflow asks for evaluations (and, without SecAgg+, for training) with
`grid.send_and_receive(messages)` and no timeout, and Flower's Grids then wait for every reply for ever. A
hospital whose SuperNode is up but whose ClientApp never answers (its process gone, its machine stalled)
would hang the whole study, the other hospitals' rounds with it. SecAgg+ bounds each of its stages itself
(`federation.secure_aggregation.timeout`); this proxy gives every other exchange
`federation.reply_timeout`. A hospital silent for longer is left out of that exchange, as Flower leaves out a
reply that came too late, and the server says which nodes it stopped waiting for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp.grid import Grid

log = logging.getLogger(__name__)


class ReplyDeadline:
    """`grid`, with `seconds` as the timeout of any `send_and_receive` called without one. `node_names`
    (deployment: node id -> registered name) lets the warning name the silent hospitals."""

    def __init__(self, grid: Grid, seconds: float, node_names: Callable[[], dict[int, str]] | None = None) -> None:
        self._grid = grid
        self.seconds = seconds
        self._node_names = node_names

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        wait = self.seconds if timeout is None else timeout
        replies = list(self._grid.send_and_receive(messages, timeout=wait))
        if timeout is None and len(replies) < len(messages):
            answered = {m.metadata.src_node_id for m in replies}
            silent = sorted({m.metadata.dst_node_id for m in messages} - answered)
            names = self._node_names() if self._node_names is not None else {}
            log.warning("%d of %d hospitals sent no reply within federation.reply_timeout = %g s (%s); this "
                        "exchange goes on without them", len(silent), len(messages), wait,
                        ", ".join(names.get(n) or f"node {n}" for n in silent))
        return replies
