"""The per-outcome losses (fedhealth/model/losses.py): what each computes, and that each is a sum of one term
per record, which DP-SGD's per-sample clipping needs for its guarantee. The discrete-time hazard model trains
under DP-SGD on the one-backward linear path exactly as on Opacus's per-sample gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedhealth.model import build_model
from fedhealth.model.losses import BINARY, LogisticHazard, interval_targets, survival_curve
from fedhealth.model.tabular import get_weights
from fedhealth.privacy.dp import dp_schedule, train_private, train_private_opacus

EDGES = np.array([0.0, 10.0, 20.0, 40.0])


def test_interval_targets_follow_the_stated_convention():
    time = np.array([5.0, 10.0, 12.0, 16.0, 3.0, 45.0, 45.0, 40.0])
    event = np.array([1, 1, 0, 0, 0, 1, 0, 0])
    got = interval_targets(time, event, EDGES)
    assert got.dtype == np.float32 and got.shape == (8, 2)
    np.testing.assert_array_equal(got, [
        [0, 1],   # event at 5: interval (0, 10]
        [0, 1],   # event at 10: intervals are (t_j, t_j+1], so still the first
        [0, 0],   # censored at 12, before the middle (15) of (10, 20]: survived only the first
        [1, 0],   # censored at 16, past the middle: survived (10, 20] too
        [-1, 0],  # censored at 3, before the first interval's middle: contributes nothing
        [2, 0],   # an event after the last edge: censored there, survived every interval
        [2, 0],
        [2, 0],   # censored exactly at the last edge: past its interval's middle
    ])


@pytest.mark.parametrize("time, event, edges, message", [
    ([1.0, -2.0], [1, 0], EDGES, "1 time.s. are not positive finite numbers .first at position 1."),
    ([1.0, float("nan")], [1, 0], EDGES, "not positive finite"),
    ([1.0, 2.0], [1, 2], EDGES, "1 event indicator.s. are not 0 or 1"),
    ([1.0, 2.0], [1, 0], [1.0, 5.0], "edges must start at 0"),
    ([1.0, 2.0], [1, 0], [0.0, 5.0, 5.0], "increase strictly"),
    ([1.0, 2.0], [1], EDGES, "of one length"),
])
def test_interval_targets_refuse_bad_input_without_quoting_it(time, event, edges, message):
    with pytest.raises(ValueError, match=message) as err:
        interval_targets(np.array(time), np.array(event), np.array(edges))
    assert "-2" not in str(err.value)  # a patient's value is never in the message


def test_logistic_hazard_is_the_discrete_time_likelihood():
    logits = torch.tensor([[0.3, -1.0, 0.5], [-0.2, 0.4, 1.1], [1.5, -0.7, 0.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([[1, 1], [2, 0], [0, 1], [-1, 0]], dtype=torch.float32)
    h = torch.sigmoid(logits).double()
    want = torch.stack([
        -(torch.log(1 - h[0, 0]) + torch.log(h[0, 1])),  # survived interval 0, event in 1
        -(torch.log(1 - h[1, 0]) + torch.log(1 - h[1, 1]) + torch.log(1 - h[1, 2])),  # survived all three
        -torch.log(h[2, 0]),  # event in the first interval
        torch.tensor(0.0, dtype=torch.float64),  # censored early: no term
    ])
    loss = LogisticHazard(3)
    torch.testing.assert_close(loss(logits, target, reduction="none").double(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss(logits, target, reduction="sum").double(), want.sum(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss(logits, target).double(), want.mean(), rtol=1e-6, atol=1e-6)
    # the survival curve is the product of the complements of the hazards
    np.testing.assert_allclose(survival_curve(logits)[1], torch.cumprod(1 - h[1], 0).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(records, 3\)"):
        loss(logits[:, :2], target)


def test_one_interval_with_every_record_in_it_is_binary_cross_entropy():
    rng = np.random.default_rng(0)
    logits = torch.as_tensor(rng.normal(size=(50, 1)), dtype=torch.float32)
    event = torch.as_tensor(rng.integers(0, 2, 50), dtype=torch.float32)
    target = torch.stack([torch.zeros(50), event], dim=1)
    torch.testing.assert_close(LogisticHazard(1)(logits, target), BINARY(logits[:, 0], event))


def test_each_record_only_moves_its_own_term():
    """The summed loss is the sum of the records' own losses, and a record's gradient with respect to the
    logits is zero outside its own row: the decomposition per-sample clipping relies on."""
    rng = np.random.default_rng(1)
    time = rng.uniform(0.5, 50, 30)
    target = torch.as_tensor(interval_targets(time, rng.integers(0, 2, 30), EDGES))
    logits = torch.as_tensor(rng.normal(size=(30, 3)), dtype=torch.float32).requires_grad_(True)
    loss = LogisticHazard(3)
    alone = sum(loss(logits[i:i + 1], target[i:i + 1], reduction="sum") for i in range(30))
    torch.testing.assert_close(loss(logits, target, reduction="sum"), alone)
    (grad,) = torch.autograd.grad(loss(logits[:, :], target, reduction="none")[7], logits)
    assert grad[7].abs().sum() > 0 and grad[torch.arange(30) != 7].abs().sum() == 0


@pytest.mark.parametrize("name, hidden", [("logreg", []), ("mlp", [16])])
def test_dp_sgd_on_the_hazard_model_takes_opacus_steps(name, hidden):
    """Same seeds, noise off (the two paths draw their noise in different shapes; tests/unit/test_dp_linear.py
    checks it): the linear path and Opacus's per-sample gradients clip each record's gradient of the hazard
    loss, over every interval's logit jointly, to the same norm, so two epochs of momentum SGD train the same
    model."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    time = rng.exponential(20.0, 300) + 0.01
    y = interval_targets(time, rng.integers(0, 2, 300), EDGES)
    out = []
    for f in (train_private, train_private_opacus):
        model = build_model(name, 6, hidden, seed=1, n_outputs=3)
        result, steps = f(model, x, y, epochs=2, schedule=dp_schedule(300, 32), learning_rate=0.1, momentum=0.9,
                          noise_multiplier=0.0, max_grad_norm=1.0, noise_seed=5, sampling_seed=6,
                          loss=LogisticHazard(3))
        out.append((get_weights(model), result, steps))
    (ours, r1, s1), (theirs, r2, s2) = out
    assert s1 == s2 and math.isfinite(r1.mean_loss) and r1.mean_loss == pytest.approx(r2.mean_loss, rel=1e-4)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_targets_the_hazard_loss_would_misread_are_refused_before_training():
    """Once, before any step (never per batch: a DP-SGD refusal must not depend on the sampled records), and
    with counts only."""
    from fedhealth.model.training import train

    x = np.zeros((4, 3), dtype=np.float32)
    loss = LogisticHazard(2)
    for bad, message in (([[2, 1], [0, 0], [1, 1], [0, 1]], "1 target.s. name an interval outside -1 .. 1"),
                         ([[0.5, 1], [0, 0], [1, 1], [0, 1]], "outside -1 .. 1"),
                         ([[float("nan"), 0], [0, 0], [1, 1], [0, 1]], "outside -1 .. 1"),
                         ([[-5, 0], [0, 0], [1, 1], [0, 1]], "outside -1 .. 1"),
                         ([[0, 0.6], [0, 0], [1, 1], [0, 1]], "1 event indicator.s. are not 0 or 1")):
        y = np.array(bad, dtype=np.float32)
        for fit in (lambda y=y: train(build_model("logreg", 3, [], seed=0, n_outputs=2), x, y, epochs=1,
                                  batch_size=2, learning_rate=0.1, loss=loss),
                    lambda y=y: train_private(build_model("logreg", 3, [], seed=0, n_outputs=2), x, y, epochs=1,
                                          schedule=dp_schedule(4, 2), learning_rate=0.1, momentum=0.0,
                                          noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=1, sampling_seed=2,
                                          loss=loss)):
            with pytest.raises(ValueError, match=message):
                fit()
    with pytest.raises(ValueError, match=r"\(records, 2\)"):
        loss.check_targets(np.zeros(4))
