"""Shapley and leave-one-out estimators on small games whose values are known exactly."""

import numpy as np
import pytest

from fedhealth.metrics.shapley import exact_shapley, leave_one_out, sampled_shapley

PLAYERS = ["a", "b", "c", "d"]


def additive(s):  # each player brings a fixed amount: Shapley = LOO = that amount
    worth = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 0.0}
    return sum(worth[p] for p in s)


def symmetric_with_null(s):  # a, b, c interchangeable with diminishing returns; d adds nothing
    k = len(s - {"d"})
    return 1 - 0.5 ** k


def counting(calls):
    def value(s):
        calls.append(s)
        return symmetric_with_null(s)
    return value


def test_additive_game():
    exact = exact_shapley(PLAYERS, additive)
    assert {p: e.value for p, e in exact.items()} == pytest.approx({"a": 1, "b": 2, "c": 3, "d": 0})
    assert leave_one_out(PLAYERS, additive) == pytest.approx({"a": 1, "b": 2, "c": 3, "d": 0})
    sampled = sampled_shapley(PLAYERS, additive, 5, np.random.default_rng(0))
    assert {p: e.value for p, e in sampled.items()} == pytest.approx({"a": 1, "b": 2, "c": 3, "d": 0})
    assert all(e.stderr == pytest.approx(0.0) for e in sampled.values())  # no spread in an additive game


def test_symmetric_players_share_equally_and_the_null_player_gets_nothing():
    exact = exact_shapley(PLAYERS, symmetric_with_null)
    assert exact["a"].value == pytest.approx(exact["b"].value) == pytest.approx(exact["c"].value)
    assert exact["d"].value == pytest.approx(0.0)
    assert sum(e.value for e in exact.values()) == pytest.approx(symmetric_with_null(frozenset(PLAYERS)))  # efficiency
    assert leave_one_out(PLAYERS, symmetric_with_null)["d"] == pytest.approx(0.0)


def test_sampled_shapley_is_within_its_stated_error_and_efficient():
    exact = exact_shapley(PLAYERS, symmetric_with_null)
    sampled = sampled_shapley(PLAYERS, symmetric_with_null, 400, np.random.default_rng(1))
    for p in PLAYERS:
        assert abs(sampled[p].value - exact[p].value) <= 4 * sampled[p].stderr + 1e-12
    assert sampled["d"].value == 0.0 and sampled["d"].stderr == 0.0
    assert sum(e.value for e in sampled.values()) == pytest.approx(symmetric_with_null(frozenset(PLAYERS)))


def test_evaluations_are_coalitions_the_caller_can_cache():
    calls: list = []
    sampled_shapley(PLAYERS, counting(calls), 3, np.random.default_rng(2))
    assert len(calls) == 3 * (len(PLAYERS) + 1)
    assert len(set(calls)) < len(calls)  # the empty and grand coalitions recur in every permutation
