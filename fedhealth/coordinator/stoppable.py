"""A Grid that gives up waiting for replies as soon as the driver asks the study to stop.

Flower's `send_and_receive` waits for every reply (or its timeout) before it returns, so a server told to
stop in the middle of a round would sit until the hospitals finished training. This Grid pushes the
messages itself and polls for the replies, checking the stop request between polls; once it is set, the
next send or poll raises `RunInterrupted`, which leaves the round unrecorded: nothing of it reaches the
run directory, so `--resume` runs that round again from the last checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp.grid import Grid

from fedhealth.coordinator.grid_tap import GridProxy
from fedhealth.errors import RunInterrupted


def check_stop(stop: threading.Event | None) -> None:
    """Raise `RunInterrupted` when the driver has asked the study to stop."""
    if stop is not None and stop.is_set():
        raise RunInterrupted("the driver asked the study to stop")


class StoppableGrid(GridProxy):
    def __init__(self, grid: Grid, stop: threading.Event, poll_interval: float = 0.01) -> None:
        super().__init__(grid)
        self._stop = stop
        self._poll = poll_interval

    @property
    def fedhealth_stop(self) -> threading.Event:
        """The driver's stop request; `run_study` finds it through any proxy put around this Grid."""
        return self._stop

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        check_stop(self._stop)
        waiting = set(self._grid.push_messages(list(messages)))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting and (deadline is None or time.monotonic() < deadline):
            got = list(self._grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if waiting:
                self._stop.wait(float(getattr(self._grid, "pull_interval", self._poll)))
            check_stop(self._stop)
        return replies
