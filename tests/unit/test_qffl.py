"""q-FedAvg: the hospitals' q-FFL terms give the paper's step, through SecAgg+'s mean as through the clear.
The same in a real federation: tests/integration/test_qffl_federation.py."""

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fedhealth.coordinator.qffl import QFairFedAvg
from fedhealth.coordinator.strategies import build_strategy, optimizer_state, restore_optimizer_state
from fedhealth.data.study_file import load_config
from fedhealth.model.initial import initial_weights
from fedhealth.model.qffl import initial_scale, qffl_terms
from fedhealth.runs import rundir
from fedhealth.study.config import ConfigError
from tests.support import QFFL, SMOKE


def _res(arrays):
    return None, FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(arrays), num_examples=1,
                        metrics={})


def _paper_step(w, updates, losses, q, lr):
    """Li et al. (2020), Algorithm 2, written out: Delta w_k = L (w - w_k), L = 1/lr."""
    L = 1.0 / lr
    num = [np.zeros_like(a, dtype=np.float64) for a in w]
    den = 0.0
    for u, f in zip(updates, losses, strict=True):
        dw = [-L * a for a in u]
        norm2 = sum(float(np.sum(a.astype(np.float64) ** 2)) for a in dw)
        num = [n + f ** q * a for n, a in zip(num, dw, strict=True)]
        den += q * f ** (q - 1) * norm2 + L * f ** q
    return [a - n / den for a, n in zip(w, num, strict=True)]


def _problem(seed=0, hospitals=4):
    rng = np.random.default_rng(seed)
    w = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    updates = [[rng.normal(scale=0.3, size=a.shape).astype(np.float32) for a in w] for _ in range(hospitals)]
    losses = list(rng.uniform(0.2, 1.5, size=hospitals))
    return w, updates, losses


def _strategy(w, q, lr):
    s = QFairFedAvg(q_param=q, qffl_learning_rate=lr)
    s.pre_weights = w
    return s


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 3.0])
def test_clear_and_secure_steps_both_equal_the_papers_step(q):
    lr = 2.0
    w, updates, losses = _problem()
    expected = _paper_step(w, updates, losses, q, lr)
    scale = 3.7
    terms = [qffl_terms(u, f, q, lr, scale) for u, f in zip(updates, losses, strict=True)]
    from flwr.common import parameters_to_ndarrays

    clear, _ = _strategy(w, q, lr).aggregate_fit(1, [_res(t) for t in terms], [])
    # SecAgg+ hands the server only the mean of the terms (every weight is 1)
    mean = [np.mean([t[i] for t in terms], axis=0) for i in range(len(terms[0]))]
    secure, _ = _strategy(w, q, lr).aggregate_fit(1, [_res(mean)], [])
    for got in (parameters_to_ndarrays(clear), parameters_to_ndarrays(secure)):
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(expected, w, strict=True))
    assert moved > 1e-3  # the step is not trivially zero


def test_q_zero_is_the_unweighted_mean_of_updates():
    w, updates, losses = _problem(1)
    terms = [qffl_terms(u, f, 0.0, 1.0, 1.0) for u, f in zip(updates, losses, strict=True)]
    from flwr.common import parameters_to_ndarrays

    got = parameters_to_ndarrays(_strategy(w, 0.0, 1.0).aggregate_fit(1, [_res(t) for t in terms], [])[0])
    for i, a in enumerate(w):
        np.testing.assert_allclose(got[i], a + np.mean([u[i] for u in updates], axis=0), rtol=1e-5, atol=1e-6)


def test_higher_loss_pulls_harder_as_q_grows():
    w = [np.zeros(2, dtype=np.float32)]
    updates = [[np.array([1.0, 0.0], dtype=np.float32)], [np.array([0.0, 1.0], dtype=np.float32)]]
    losses = [0.2, 1.0]  # the second hospital is served worst
    from flwr.common import parameters_to_ndarrays

    tilt = []
    for q in (0.0, 1.0, 3.0):
        terms = [qffl_terms(u, f, q, 100.0, 1.0) for u, f in zip(updates, losses, strict=True)]
        new = parameters_to_ndarrays(_strategy(w, q, 100.0).aggregate_fit(1, [_res(t) for t in terms], [])[0])[0]
        tilt.append(new[1] / new[0])
    assert tilt[0] == pytest.approx(1.0, rel=1e-5) and tilt[0] < tilt[1] < tilt[2]


def test_the_scale_follows_the_mean_h_and_survives_a_checkpoint(tmp_path):
    cfg = load_config(SMOKE, [QFFL, "federation.strategy.q=2"])
    weights = initial_weights(cfg)
    strategy = build_strategy(cfg, weights, lambda r: {}, lambda r: {})
    assert isinstance(strategy, QFairFedAvg)
    assert strategy.scale == initial_scale(2.0, cfg.federation.strategy.qffl_learning_rate)
    strategy.pre_weights = weights
    terms = [[np.zeros_like(a) for a in weights] + [np.array([h], dtype=np.float32)] for h in (0.5, 1.5)]
    strategy.aggregate_fit(1, [_res(t) for t in terms], [])
    assert strategy.scale == pytest.approx(initial_scale(2.0, 10.0) * 1.0)
    path = tmp_path / "round_0001.npz"
    rundir.save_weights(path, weights, optimizer_state(strategy))
    fresh = build_strategy(cfg, weights, lambda r: {}, lambda r: {})
    fresh.scale = -1.0
    restore_optimizer_state(fresh, rundir.load_weights(path)[1])
    assert fresh.scale == pytest.approx(strategy.scale)


def test_nonpositive_h_and_bad_loss_are_refused():
    w, updates, _ = _problem(2, 2)
    with pytest.raises(ValueError, match="finite, non-negative training loss"):
        qffl_terms(updates[0], float("nan"), 1.0, 1.0, 1.0)
    bad = [[np.zeros_like(a) for a in w] + [np.array([0.0], dtype=np.float32)]]
    with pytest.raises(ValueError, match="positive and finite"):
        _strategy(w, 1.0, 1.0).aggregate_fit(1, [_res(b) for b in bad], [])


@pytest.mark.parametrize("mode", ["record", "hospital"])
def test_qfedavg_is_refused_with_differential_privacy(mode):
    with pytest.raises(ConfigError, match="qfedavg is not supported with differential privacy"):
        load_config(SMOKE, [QFFL, f'privacy.mode="{mode}"', "privacy.target_epsilon=4"])
