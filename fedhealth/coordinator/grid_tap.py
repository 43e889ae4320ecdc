"""A Flower Grid that shows every exchange (messages sent, replies received) to a function.

One small proxy serves three jobs: the SecAgg+ workflow screens malformed masked vectors out of
the replies, the benchmark counts bytes, and the tests check what the server ever holds. The
function returns the replies to keep, or None to keep them all; everything else is the Grid's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp.grid import Grid

OnExchange = Callable[[list[Message], list[Message]], "list[Message] | None"]


class GridProxy:
    """A Grid wrapped by one of fedhealth's proxies: everything but what the proxy changes is the wrapped
    Grid's, reads and settings alike (the Grid's `pull_interval` set through any number of proxies reaches
    Flower's Grid). The proxy's own attributes start with `_`."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._grid, name, value)


class GridTap(GridProxy):
    def __init__(self, grid: Grid, on_exchange: OnExchange) -> None:
        super().__init__(grid)
        self._on_exchange = on_exchange

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        kept = self._on_exchange(messages, replies)
        return replies if kept is None else kept
