"""Models by name, the weight wire format, and the plain training loop."""

import numpy as np
import pytest
import torch

from fedhealth.coordinator.observed import update_problem
from fedhealth.model import build_model, get_weights, set_weights
from fedhealth.model.training import evaluate, train


def _data(n=2000, d=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    logit = x[:, 0] * 2 - x[:, 1]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return x, y


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_build_by_name_and_weights_round_trip(name):
    model = build_model(name, 10, [8], seed=3)
    weights = get_weights(model)
    assert all(w.dtype == np.float32 for w in weights)
    other = build_model(name, 10, [8], seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(weights, get_weights(other), strict=True))
    set_weights(other, weights)
    assert all(np.array_equal(a, b) for a, b in zip(weights, get_weights(other), strict=True))
    same = build_model(name, 10, [8], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(weights, get_weights(same), strict=True))


def test_unknown_model_and_bad_shapes():
    with pytest.raises(ValueError, match="choose one of logreg, mlp"):
        build_model("resnet", 10)
    model = build_model("logreg", 10)
    with pytest.raises(ValueError, match="expected 2 parameter arrays"):
        set_weights(model, [np.zeros((1, 10), np.float32)])
    with pytest.raises(ValueError, match=r"linear.weight: expected shape \(1, 10\)"):
        set_weights(model, [np.zeros((1, 9), np.float32), np.zeros(1, np.float32)])


def test_training_learns_and_is_reproducible():
    x, y = _data()
    runs = []
    for _ in range(2):
        model = build_model("mlp", 10, [16], seed=0)
        before = evaluate(model, x, y)
        result = train(model, x, y, epochs=3, batch_size=64, learning_rate=0.05, seed=11)
        after = evaluate(model, x, y)
        assert after.loss < before.loss and after.auroc > 0.8
        assert result.steps == 3 * int(np.ceil(2000 / 64))
        runs.append(get_weights(model))
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


def test_fedprox_term_keeps_weights_near_anchor():
    x, y = _data()
    anchor = get_weights(build_model("logreg", 10, seed=0))

    def drift(mu):
        model = build_model("logreg", 10, seed=0)
        train(model, x, y, epochs=2, batch_size=64, learning_rate=0.05, seed=1, proximal_mu=mu, anchor=anchor)
        return sum(float(np.sum((a - b) ** 2)) for a, b in zip(get_weights(model), anchor, strict=True))

    assert drift(5.0) < 0.5 * drift(0.0)


def test_update_checks_catch_nan_shape_and_count():
    shapes = [(1, 3), (1,)]
    good = [np.zeros((1, 3), np.float32), np.zeros(1, np.float32)]
    assert update_problem(good, shapes) is None
    assert "NaN or infinite" in update_problem([good[0], np.array([np.nan], np.float32)], shapes)
    assert "expected shape (1, 3)" in update_problem([np.zeros((1, 4)), good[1]], shapes)
    assert "expected 2 parameter arrays" in update_problem(good[:1], shapes)
    torch.manual_seed(0)
