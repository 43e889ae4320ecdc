"""Strategies are Flower's own, chosen by name; FedAdam's server state survives a checkpoint."""

import numpy as np
import pytest
from flwr.server.strategy import FedAdam, FedAvg, FedProx

from fedhealth.coordinator.strategies import build_strategy, optimizer_state, restore_optimizer_state
from fedhealth.data.study_file import load_config
from fedhealth.model.initial import initial_weights
from fedhealth.runs import rundir
from tests.support import SMOKE


@pytest.mark.parametrize("name, cls", [("fedavg", FedAvg), ("fedprox", FedProx), ("fedadam", FedAdam)])
def test_strategy_by_name(name, cls):
    cfg = load_config(SMOKE, [f"federation.strategy.name={name}"])
    strategy = build_strategy(cfg, initial_weights(cfg), lambda r: {}, lambda r: {})
    assert type(strategy) is cls
    if name == "fedprox":
        assert strategy.proximal_mu == cfg.federation.strategy.proximal_mu


def test_fedadam_moments_round_trip_through_a_checkpoint(tmp_path):
    cfg = load_config(SMOKE, ["federation.strategy.name=fedadam"])
    weights = initial_weights(cfg)
    strategy = build_strategy(cfg, weights, lambda r: {}, lambda r: {})
    assert optimizer_state(strategy) == {}  # nothing to save before the first aggregation
    rng = np.random.default_rng(0)
    strategy.m_t = [rng.normal(size=w.shape).astype(np.float32) for w in weights]
    strategy.v_t = [rng.random(size=w.shape).astype(np.float32) for w in weights]
    path = tmp_path / "round_0001.npz"
    rundir.save_weights(path, weights, optimizer_state(strategy))
    loaded, state = rundir.load_weights(path)
    fresh = build_strategy(cfg, loaded, lambda r: {}, lambda r: {})
    restore_optimizer_state(fresh, state)
    for a, b in zip(fresh.m_t, strategy.m_t, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh.v_t, strategy.v_t, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(loaded, weights, strict=True):
        np.testing.assert_array_equal(a, b)
