"""A deployment Grid that notices replies within a fraction of a second instead of up to 3 s later.

Flower's deployment Grid (`HttpGrid.send_and_receive`) sleeps a fixed 3 s between pulls for replies. A
SecAgg+ round is four exchanges plus an evaluation, so on a small study that sleep alone is several
seconds of every round spent waiting for replies that have already arrived. This proxy does the same
push-then-pull with Flower's own `push_messages` / `pull_messages`, pulling every `interval` seconds;
everything else is the Grid's own. The simulation Grid already polls every 0.1 s (and is tuned in
`run_study`), so only grids without a `pull_interval` are wrapped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp.grid import Grid

PULL_INTERVAL = 0.2  # seconds: one small request to the SuperLink per interval while a round waits


class PromptGrid:
    def __init__(self, grid: Grid, interval: float = PULL_INTERVAL) -> None:
        self._grid = grid
        self.interval = interval

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's contract: push, then pull until every reply is in or `timeout` seconds have passed."""
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while True:
            received = list(self._grid.pull_messages(pending))
            replies.extend(received)
            pending.difference_update(m.metadata.reply_to_message_id for m in received)
            if not pending:
                return replies
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return replies
                time.sleep(min(self.interval, left))
            else:
                time.sleep(self.interval)

