"""ReplyDeadline: an exchange Flower's workflow starts without a timeout (evaluation, plain training) gets the
study's `federation.reply_timeout`, so a silent hospital cannot hang the study; the server names who was
silent. An exchange with its own timeout (each SecAgg+ stage) keeps it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from fedhealth.coordinator.reply_deadline import ReplyDeadline
from fedhealth.study.config import FederationConfig


def _message(dst: int) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=dst))


class SilentNodesGrid:
    """Flower's Grid contract: the replies that came before `timeout`; `silent` nodes never answer. A call
    without a timeout would wait for ever, which this fake refuses to do."""

    def __init__(self, silent: set[int]) -> None:
        self.silent = silent
        self.timeouts: list[float | None] = []
        self.pull_interval = 0.1

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        assert timeout is not None, "would wait for ever for the silent nodes"
        return [SimpleNamespace(metadata=SimpleNamespace(src_node_id=m.metadata.dst_node_id))
                for m in messages if m.metadata.dst_node_id not in self.silent]


def test_an_exchange_without_a_timeout_gets_the_studys_and_the_silent_hospitals_are_named(caplog):
    inner = SilentNodesGrid(silent={12})
    grid = ReplyDeadline(inner, 42.0, node_names=lambda: {11: "cleveland", 12: "hungary"})
    with caplog.at_level(logging.WARNING, logger="fedhealth.coordinator.reply_deadline"):
        replies = list(grid.send_and_receive([_message(11), _message(12)]))
    assert inner.timeouts == [42.0]
    assert [r.metadata.src_node_id for r in replies] == [11]
    assert "1 of 2 hospitals sent no reply within federation.reply_timeout = 42 s (hungary)" in caplog.text


def test_an_exchange_with_its_own_timeout_keeps_it_and_nothing_is_said_when_all_reply(caplog):
    inner = SilentNodesGrid(silent=set())
    grid = ReplyDeadline(inner, 42.0)
    with caplog.at_level(logging.WARNING):
        assert len(list(grid.send_and_receive([_message(1), _message(2)], timeout=7.5))) == 2
        assert len(list(grid.send_and_receive([_message(1)]))) == 1
    assert inner.timeouts == [7.5, 42.0]
    assert "no reply" not in caplog.text


def test_a_silent_node_without_a_registered_name_is_named_by_its_id(caplog):
    grid = ReplyDeadline(SilentNodesGrid(silent={5}), 1.0)
    with caplog.at_level(logging.WARNING):
        assert list(grid.send_and_receive([_message(5)])) == []
    assert "(node 5)" in caplog.text


def test_the_grid_s_other_attributes_are_its_own():
    inner = SilentNodesGrid(silent=set())
    assert ReplyDeadline(inner, 1.0).pull_interval == 0.1


def test_the_reply_timeout_defaults_to_ten_minutes_and_is_checked():
    assert FederationConfig().reply_timeout == 600.0
    with pytest.raises(ValidationError, match="reply_timeout"):
        FederationConfig.model_validate({"reply_timeout": 1e9})
