"""PromptGrid keeps Flower's send_and_receive contract (every reply, or what came before the timeout)
while pulling every fraction of a second rather than every 3 s. Run on a virtual clock: no real waiting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedhealth.coordinator import prompt_grid
from fedhealth.coordinator.prompt_grid import PromptGrid


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(prompt_grid, "time", fake)
    return fake


class ScriptedGrid:
    """The reply to message i becomes available `delays[i]` seconds after the push."""

    def __init__(self, clock: Clock, delays: list[float]) -> None:
        self.clock, self.delays, self.pulls = clock, delays, 0

    def push_messages(self, messages):
        self.pushed_at = self.clock.now
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        waited = self.clock.now - self.pushed_at
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"))
                for i, d in enumerate(self.delays) if d <= waited and f"m{i}" in message_ids]

    def get_node_ids(self):
        return [1, 2, 3]


def _ids(replies) -> list[str]:
    return sorted(r.metadata.reply_to_message_id for r in replies)


def test_every_reply_is_returned_once_within_one_interval_of_its_arrival(clock):
    grid = PromptGrid(ScriptedGrid(clock, [0.0, 0.3, 0.65]), interval=0.2)
    assert _ids(grid.send_and_receive(["a", "b", "c"], timeout=None)) == ["m0", "m1", "m2"]
    assert clock.sleeps and max(clock.sleeps) <= 0.2
    assert 0.65 <= clock.now < 0.65 + 0.2 + 1e-9  # Flower's own Grid: 3 s sleeps, so 6 s here


def test_the_timeout_returns_what_came_before_it(clock):
    grid = PromptGrid(ScriptedGrid(clock, [0.0, 30.0]), interval=0.2)
    assert _ids(grid.send_and_receive(["a", "b"], timeout=1.0)) == ["m0"]
    assert clock.now == pytest.approx(1.0)  # the last sleep is cut to the deadline


def test_replies_already_there_need_no_wait(clock):
    inner = ScriptedGrid(clock, [0.0, 0.0])
    assert _ids(PromptGrid(inner).send_and_receive(["a", "b"], timeout=5.0)) == ["m0", "m1"]
    assert inner.pulls == 1 and clock.sleeps == []


def test_everything_else_is_the_grids_own(clock):
    assert PromptGrid(ScriptedGrid(clock, [])).get_node_ids() == [1, 2, 3]
