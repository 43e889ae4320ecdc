"""The one-backward DP-SGD path for linear models against Opacus: same batches, same clipped sums, same
steps, the seeded noise at the right scale, noise-only steps for empty batches, and the fall-back to
Opacus's per-sample gradients for any other model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedhealth.model import build_model
from fedhealth.model.tabular import get_weights
from fedhealth.privacy.dp import (
    _linear_layers,
    clipped_sum,
    dp_schedule,
    poisson_batches,
    train_private,
    train_private_opacus,
)


def _data(n: int, d: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * scale).astype(np.float32)
    return x, (x[:, 0] + rng.normal(size=n) > 0).astype(np.float32)


@pytest.mark.parametrize("n, batch, block", [(50, 1, 1 << 22), (60, 7, 60), (4500, 64, 4500 * 5), (333, 512, 1)])
def test_poisson_batches_are_opacus_samplers_draws_over_several_epochs(n, batch, block):
    """The same index lists as Opacus's UniformWithReplacementSampler with the same generator, epoch after
    epoch, whatever the block size (block 1: one step per draw)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    s = dp_schedule(n, batch)
    ours, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=s.sample_rate, generator=theirs,
                                            steps=s.steps_per_epoch)
    for _ in range(3):
        got = [b.tolist() for b in poisson_batches(n, s, ours, block_elements=block)]
        assert got == list(sampler)
    assert torch.equal(torch.rand(3, generator=ours), torch.rand(3, generator=theirs))  # the streams stay aligned


def _opacus_clipped(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float):
    """Opacus's per-sample gradients (hooks) and DPOptimizer's clipped sum for one batch."""
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=c,
                      expected_batch_size=len(x), loss_reduction="sum")
    nn.functional.binary_cross_entropy_with_logits(gsm(x), y, reduction="sum").backward()
    samples = [p.grad_sample.reshape(len(x), -1) for p in model.parameters()]
    norms = torch.cat(samples, dim=1).norm(dim=1)
    opt.clip_and_accumulate()
    summed = [p.summed_grad.clone() for p in model.parameters()]
    gsm._close()
    return norms, summed


def _ours(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float):
    linears = _linear_layers(model, x)
    assert linears is not None
    seen: list = []
    hooks = [m.register_forward_hook(lambda _m, i, o: seen.append((i[0], o))) for m in linears]
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), y, reduction="sum")
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(loss, [o for _, o in seen])
    out = {p: torch.empty_like(p) for p in model.parameters()}
    norms = clipped_sum([(m, a, g) for m, (a, _), g in zip(linears, seen, grads, strict=True)], c, out)
    return norms, [out[p] for p in model.parameters()]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
@pytest.mark.parametrize("name, hidden", [("logreg", []), ("mlp", [32, 16]), ("mlp", [4]), ("mlp", [8, 8, 8])])
def test_clipped_sums_and_norms_match_opacus_per_sample_gradients(dtype, tol, name, hidden):
    """On random batches (sizes 1 to 97, inputs small and large so that some records are clipped and some
    not), each record's gradient norm and the sum of clipped gradients equal Opacus's, computed from its
    per-sample gradients, to 1e-6 in float32 (1e-10 in float64)."""
    rng = np.random.default_rng(len(hidden) * 10 + (dtype == torch.float32))
    for trial in range(6):
        n, d = int(rng.integers(1, 98)), int(rng.integers(1, 30))
        x, y = _data(n, d, trial, scale=float(rng.choice([0.1, 1.0, 10.0])))
        xt, yt = torch.as_tensor(x, dtype=dtype), torch.as_tensor(y, dtype=dtype)
        c = float(rng.choice([0.05, 1.0, 5.0]))
        ours_model = build_model(name, d, hidden, seed=trial).to(dtype)
        theirs_model = build_model(name, d, hidden, seed=trial).to(dtype)
        norms, summed = _ours(ours_model, xt, yt, c)
        ref_norms, ref_summed = _opacus_clipped(theirs_model, xt, yt, c)
        torch.testing.assert_close(norms, ref_norms, rtol=tol, atol=tol)
        for got, want in zip(summed, ref_summed, strict=True):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_a_record_with_a_non_finite_gradient_is_left_out_of_the_clipped_sum():
    model = build_model("mlp", 4, [5], seed=0)
    x, y = _data(9, 4, 1)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    bad = xt.clone()
    bad[3, 1] = float("inf")
    norms, summed = _ours(model, bad, yt, 1.0)
    keep = torch.arange(9) != 3
    _, without = _ours(model, xt[keep], yt[keep], 1.0)
    assert norms[3] == 0 and bool(torch.isfinite(norms).all())
    for got, want in zip(summed, without, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def _train_both(name: str, hidden: list[int], n: int, declared: int, batch: int, sigma: float, epochs: int = 2,
                momentum: float = 0.9):
    x, y = _data(n, 6, n)
    out = []
    for f in (train_private, train_private_opacus):
        model = build_model(name, 6, hidden, seed=1)
        result, steps = f(model, x, y, epochs=epochs, schedule=dp_schedule(declared, batch), learning_rate=0.1,
                          momentum=momentum, noise_multiplier=sigma, max_grad_norm=1.0, noise_seed=5,
                          sampling_seed=6)
        out.append((model, result, steps))
    return out


@pytest.mark.parametrize("name, hidden", [("logreg", []), ("mlp", [32, 16])])
@pytest.mark.parametrize("n, declared, batch", [(500, 500, 50), (50, 50, 1), (40, 300, 64)])
def test_without_noise_the_linear_path_takes_opacus_steps(name, hidden, n, declared, batch):
    """With the noise off, every step (clipping, the divisor, momentum SGD, empty batches, a hospital
    smaller than declared) lands where Opacus's DPOptimizer lands, over two epochs."""
    (ours, r1, s1), (theirs, r2, s2) = _train_both(name, hidden, n, declared, batch, sigma=0.0)
    assert s1 == s2 == r1.steps == 2 * dp_schedule(declared, batch).steps_per_epoch
    assert r1.mean_loss == pytest.approx(r2.mean_loss, rel=1e-5)
    for a, b in zip(get_weights(ours), get_weights(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_noise_is_the_seeded_gaussian_times_the_clipping_norm_over_the_expected_batch():
    """One step, no momentum: the noised weights minus the noise-free ones are -lr x N(0, (sigma C)^2) / b
    with N drawn, as one vector in parameter order, from the generator seeded with noise_seed."""
    x, y = _data(64, 6, 3)
    weights = []
    for sigma in (0.0, 1.7):
        model = build_model("mlp", 6, [32, 16], seed=0)
        train_private(model, x, y, epochs=1, schedule=dp_schedule(64, 64), learning_rate=0.5, momentum=0.0,
                      noise_multiplier=sigma, max_grad_norm=2.0, noise_seed=11, sampling_seed=12)
        weights.append(np.concatenate([w.ravel() for w in get_weights(model)]))
    noise = torch.normal(0.0, 1.7 * 2.0, size=(len(weights[0]),), generator=torch.Generator().manual_seed(11))
    np.testing.assert_allclose(weights[1] - weights[0], -0.5 * noise.numpy() / 64, rtol=0, atol=1e-5)


def test_empty_poisson_batches_take_a_noise_only_step():
    """One record, declared 100 at batch 1 (rate 0.01): with a sampling seed whose 100 batches are all
    empty, the weights move by exactly the 100 noise draws, scaled by -lr / expected batch."""
    s = dp_schedule(100, 1)
    seed = next(k for k in range(200)
                if not any(len(b) for b in poisson_batches(1, s, torch.Generator().manual_seed(k))))
    x, y = _data(1, 3, 0)
    model = build_model("logreg", 3, [], seed=0)
    before = np.concatenate([w.ravel() for w in get_weights(model)])
    result, steps = train_private(model, x, y, epochs=1, schedule=s, learning_rate=0.1, momentum=0.0,
                                  noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=4, sampling_seed=seed)
    assert steps == 100 and np.isnan(result.mean_loss)
    gen = torch.Generator().manual_seed(4)
    drawn = sum(torch.normal(0.0, 1.0, size=(4,), generator=gen) for _ in range(100))
    after = np.concatenate([w.ravel() for w in get_weights(model)])
    np.testing.assert_allclose(after - before, -0.1 * drawn.numpy() / s.expected_batch_size, atol=1e-5)


def test_the_callers_own_parameter_tensors_hold_the_trained_weights():
    model = build_model("mlp", 6, [4], seed=0)
    tensors = [p.data for p in model.parameters()]  # aliases of the caller's tensors
    before = [t.clone() for t in tensors]
    x, y = _data(200, 6, 2)
    train_private(model, x, y, epochs=1, schedule=dp_schedule(200, 20), learning_rate=0.1, momentum=0.9,
                  noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=1, sampling_seed=2)
    assert all(p.data_ptr() == t.data_ptr() for p, t in zip(model.parameters(), tensors, strict=True))
    assert all(p.data.untyped_storage().nbytes() == p.numel() * 4 for p in model.parameters())  # no shared buffer
    assert not any(torch.equal(t, b) for t, b in zip(tensors, before, strict=True))
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


class _Scaled(nn.Linear):
    """A Linear subclass that computes something else: its gradients are not the linear path's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * x)


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.layer(x))).squeeze(-1)


class _Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x)).squeeze(-1)


class _Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)
        self.body.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(-1)


@pytest.mark.parametrize("make", [lambda: nn.Sequential(_Scaled(3, 1), nn.Flatten(0)), _Twice, _Normed, _Frozen,
                                  lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 1),
                                                        nn.Flatten(0))],
                         ids=["linear-subclass", "layer-called-twice", "layernorm", "frozen-bias", "in-place-relu"])
def test_any_other_model_trains_on_opacus_per_sample_gradients(make):
    x, y = _data(100, 3, 5)
    assert _linear_layers(make(), torch.as_tensor(x)) is None
    torch.manual_seed(0)
    ours = make()
    theirs = make()
    theirs.load_state_dict(ours.state_dict())
    kw = dict(epochs=1, schedule=dp_schedule(100, 10), learning_rate=0.1, momentum=0.9, noise_multiplier=1.0,
              max_grad_norm=1.0, noise_seed=3, sampling_seed=4)
    train_private(ours, x, y, **kw)
    train_private_opacus(theirs, x, y, **kw)
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_both_fedhealth_models_take_the_linear_path():
    x = torch.zeros(5, 7)
    assert _linear_layers(build_model("logreg", 7, [], seed=0), x) is not None
    assert len(_linear_layers(build_model("mlp", 7, [32, 16], seed=0), x) or []) == 3
    # several logits per record (a hazard per interval): per-record gradients are still g_i a_i^T, exact
    assert _linear_layers(build_model("mlp", 7, [8], seed=0, n_outputs=4), x) is not None
    assert _linear_layers(nn.Sequential(nn.Linear(7, 2), nn.Unflatten(1, (1, 2))), x) is None  # not (records, out)

    class Mixing(nn.Module):  # one record's output depends on the others': per-record clipping would not bound it
        def __init__(self, mix):
            super().__init__()
            self.linear, self.mix = nn.Linear(7, 3), mix

        def forward(self, t):
            return self.mix(self.linear(t))

    for mix in (lambda o: o - o.mean(0), lambda o: o.roll(1, 0), lambda o: o.t().reshape(o.shape)):
        assert _linear_layers(Mixing(mix), torch.randn(5, 7)) is None
    assert _linear_layers(Mixing(lambda o: 2 * o), torch.randn(5, 7)) is not None  # per record: accepted
    assert _linear_layers(nn.Sequential(nn.Linear(7, 1), nn.Flatten(0)), x[:0]) is None  # no record to probe
