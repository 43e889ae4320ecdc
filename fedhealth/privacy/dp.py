"""DP-SGD: per-record clipping, Poisson sampling, Gaussian noise (docs/privacy.md, How DP-SGD runs).

Models made of `nn.Linear` layers (both of fedhealth's) train in one backward pass per step with the
per-record norms taken from each layer's input and output gradient; any other model on Opacus's
per-sample gradients and DPOptimizer. Opacus's RDP accountant calibrates the noise.

The ledger, not Opacus's own accountant, is the record of what was spent (see ledger.py); this
module only trains, with exactly the (noise multiplier, sample rate, steps) the ledger charged, and with
randomness from the hospital's secret (see secret.py).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedhealth.model.losses import BINARY, OutcomeLoss, couples_records
from fedhealth.model.training import TrainResult


@contextlib.contextmanager
def opacus_quiet() -> Iterator[None]:
    """Opacus's expected warnings silenced while DP-SGD trains or the accountant runs, and only then (no
    process-wide filter):
    - on every step, that its noise does not come from a cryptographically secure RNG (`secure_mode` needs
      torchcsprng, not installable here): the generator is seeded from the hospital's own 256-bit secret
      (`fedhealth.privacy.secret`), so the guarantee holds against anyone who does not hold that secret
      (docs/privacy.md);
    - that the best RDP order is the largest alpha tried (the bound is then slightly loose, never too low);
    - per-sample hooks on a model whose inputs need no gradient: expected, harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
        warnings.filterwarnings("ignore", message=".*Optimal order is the.*")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


@dataclass(frozen=True)
class DPSchedule:
    """How DP-SGD samples one hospital's records: the figures the ledger charges and Opacus runs.

    Derived from the hospital's *declared* training-set size (public: it is in the study config the
    coordinator holds), never from the records it actually has, so nothing that leaves the hospital
    (epsilon, sample rate, steps, the update's noise scale) depends on its private record count.
    """

    public_records: int  # the declared training-set size the schedule is derived from
    steps_per_epoch: int  # Poisson-sampled DP-SGD steps per local epoch
    sample_rate: float  # probability that one record enters one step's batch

    @property
    def expected_batch_size(self) -> float:
        """The divisor of the summed clipped gradients (and the noise): public, like the rest."""
        return self.public_records * self.sample_rate


def dp_schedule(public_records: int, batch_size: int) -> DPSchedule:
    """The sampling schedule for a declared training-set size: ceil(n / batch) steps at rate 1 / that.

    Every record is expected in one batch per epoch; the steps are counted as integers, so the steps
    charged are exactly the steps taken (Opacus's own loader computes int(1/q), which floating point
    makes one fewer than ceil(n/b) for about 7.8 % of sizes)."""
    if public_records < 1 or batch_size < 1:
        raise ValueError(f"DP-SGD needs at least one record and a batch of at least one "
                         f"(got {public_records} records, batch {batch_size})")
    steps = math.ceil(public_records / batch_size)
    return DPSchedule(public_records, steps, 1.0 / steps)


def steps_per_epoch(n_records: int, batch_size: int) -> int:
    """DP-SGD steps per epoch for `n_records` declared training records (see `dp_schedule`)."""
    return dp_schedule(n_records, batch_size).steps_per_epoch


def sample_rate(n_records: int, batch_size: int) -> float:
    """Poisson sampling probability per record per step for `n_records` declared records (see `dp_schedule`)."""
    return dp_schedule(n_records, batch_size).sample_rate


def calibrate_noise(target_epsilon: float, delta: float, q: float, steps: int) -> float:
    """Noise multiplier that spends at most `target_epsilon` (at `delta`) over `steps` steps at rate q, by
    Opacus's RDP accountant (`fedhealth.privacy.rdp.calibrate`)."""
    from fedhealth.privacy.rdp import calibrate

    return calibrate(target_epsilon, delta, q, steps)


def _zero_non_finite_samples(params: list[nn.Parameter]) -> None:
    """Zero every per-sample gradient that holds a NaN or an infinity, before clipping.

    Why: Opacus clips by `C / (norm + 1e-6)`, which for an infinite norm is 0, and 0 x inf is NaN; a
    server that crafts weights so that one record's gradient overflows would then see the hospital fail
    (or send NaN) exactly when that record was sampled: an uncharged, un-noised bit about one record.
    A zeroed row contributes nothing, well within the clipping bound, so the guarantee is unchanged."""
    rows = None
    for p in params:
        g = getattr(p, "grad_sample", None)
        if g is None or len(g) == 0:
            continue
        finite = torch.isfinite(g.reshape(len(g), -1)).all(dim=1)
        rows = finite if rows is None else rows & finite
    if rows is None or bool(rows.all()):
        return
    for p in params:
        if getattr(p, "grad_sample", None) is not None and len(p.grad_sample):
            p.grad_sample[~rows] = 0.0


@opacus_quiet()
def train_private(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, schedule: DPSchedule,
                  learning_rate: float, momentum: float, noise_multiplier: float, max_grad_norm: float,
                  noise_seed: int, sampling_seed: int, loss: OutcomeLoss = BINARY) -> tuple[TrainResult, int]:
    """Train `model` in place with DP-SGD; returns the result and the number of DP steps taken.

    Privacy meaning: each of the `epochs * schedule.steps_per_epoch` steps is the sampled Gaussian
    mechanism at rate `schedule.sample_rate` and noise multiplier `noise_multiplier` on per-record
    gradients clipped to `max_grad_norm` (jointly over every parameter), which is exactly what the ledger
    charges. A step whose Poisson batch is empty adds the noise alone (Opacus's empty-batch path), as the
    accountant assumes.

    `noise_seed` and `sampling_seed` must come from the hospital's secret (`HospitalSecret.seed`): the
    noise is only noise to whoever cannot regenerate it.

    A model whose every trainable parameter sits in an `nn.Linear` on (records, features) inputs (both
    fedhealth models) trains on the one-backward linear path (`_train_linear`), which computes the same
    clipped sum as Opacus without per-sample gradients; any other model on Opacus's per-sample gradients
    (`train_private_opacus`). Both draw the same batches and the same noise from the same seeds.

    `loss` (binary cross-entropy by default) must be a sum of one term per record, as every loss of
    `fedhealth.model.losses` but Cox's partial likelihood is: per-sample clipping bounds a record's influence
    only then, so a loss that couples records is refused here, before any step (the study config refuses it
    first: `fedhealth.study.config.COX_WITH_RECORD_DP`).
    """
    _refuse_coupled(loss)
    loss.check_targets(y)  # once, before any step: a refusal never depends on the sampled batches
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    linears = _linear_layers(model, xt)
    if linears is None:
        return train_private_opacus(model, x, y, epochs=epochs, schedule=schedule, learning_rate=learning_rate,
                                    momentum=momentum, noise_multiplier=noise_multiplier,
                                    max_grad_norm=max_grad_norm, noise_seed=noise_seed, sampling_seed=sampling_seed,
                                    loss=loss)
    return _train_linear(model, linears, xt, yt, epochs=epochs, schedule=schedule, learning_rate=learning_rate,
                         momentum=momentum, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                         noise_seed=noise_seed, sampling_seed=sampling_seed, loss=loss)


def _refuse_coupled(loss: OutcomeLoss) -> None:
    """Refuse a loss whose terms couple records (a Cox partial likelihood) before any step: clipping a record's
    own term's gradient would not bound its influence, so the DP guarantee would not hold."""
    if couples_records(loss):
        from fedhealth.study.config import COX_WITH_RECORD_DP

        raise ValueError(COX_WITH_RECORD_DP)


def poisson_batches(n_records: int, schedule: DPSchedule, generator: torch.Generator,
                    block_elements: int = 1 << 22) -> Iterator[torch.Tensor]:
    """One epoch of Poisson batches: each record in each step's batch with probability `sample_rate`,
    for exactly `schedule.steps_per_epoch` steps (empty batches included).

    The same draws, in the same order, as Opacus's `UniformWithReplacementSampler` with this generator (one
    uniform per record per step, kept below the rate), but drawn for many steps in one call and split,
    instead of one call and a Python list per step; at most `block_elements` uniforms are held at once."""
    rows = max(1, block_elements // max(n_records, 1))
    left = schedule.steps_per_epoch
    while left > 0:
        k = min(rows, left)
        mask = torch.rand((k, n_records), generator=generator) < schedule.sample_rate
        yield from torch.split(mask.nonzero()[:, 1], mask.sum(dim=1).tolist())
        left -= k


def _linear_layers(model: nn.Module, xt: torch.Tensor) -> list[nn.Linear] | None:
    """The model's `nn.Linear` layers in call order, when the linear path computes its per-record
    gradients exactly; None (use Opacus's per-sample gradients) otherwise.

    Exact when: every trainable parameter is the weight or bias of an `nn.Linear` (the class itself, not a
    subclass that may compute something else), each such layer trains all its parameters, no parameter is
    shared, and a forward pass on two records (the first, twice) calls each layer once, on a (records,
    features) input, and returns one logit (or one row of logits) per record. Anything else between the
    layers (ReLU, squeeze) holds no parameter and acts on each record alone, so the backward pass carries each
    record's gradient separately."""
    params = [p for p in model.parameters() if p.requires_grad]
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    owned = [p for m in linears for p in m.parameters(recurse=False)]
    if (not params or not len(xt) or any(not p.requires_grad for p in owned)
            or len({id(p) for p in owned}) != len(owned) or {id(p) for p in params} != {id(p) for p in owned}):
        return None
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor, int, int]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0], out, inp[0]._version,
                                                                         out._version))) for m in linears]
    try:
        with torch.no_grad():
            logits = model(xt[:1].expand(2, -1))
    finally:
        for h in hooks:
            h.remove()
    if (logits.dim() not in (1, 2) or len(logits) != 2
            or sorted(id(c[0]) for c in calls) != sorted(id(m) for m in linears)
            or any(a.dim() != 2 or len(a) != 2 or out.dim() != 2 for _, a, out, _, _ in calls)
            # changed in place after the layer (an in-place ReLU): the output gradient autograd gives is
            # then the gradient after that change, not the layer's
            or any(a._version != va or out._version != vo for _, a, out, va, vo in calls)):
        return None
    if not _rows_independent(model, linears, xt.shape[1], xt.dtype):
        return None
    return [c[0] for c in calls]


def _rows_independent(model: nn.Module, linears: list[nn.Linear], width: int, dtype: torch.dtype) -> bool:
    """Whether the model treats each record alone: each layer's input and output rows, and the model's output
    rows, for three distinct probe records in one batch equal those of each record on its own. A model that
    mixes records (centring over the batch, a roll, a transpose) would let one record move the others' terms,
    and the clipped sum would not bound a record's influence. The probe is a fixed draw, never a record."""
    probe = torch.randn(3, width, generator=torch.Generator().manual_seed(0)).to(dtype)

    def rows(x: torch.Tensor) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, inp, out: seen.extend((inp[0], out))) for m in linears]
        try:
            with torch.no_grad():
                seen.append(model(x))
        finally:
            for h in hooks:
                h.remove()
        return seen

    together = rows(probe)
    for i in range(3):
        alone = rows(probe[i:i + 1])
        if len(alone) != len(together) or any(
                t.shape[0] != 3 or a.shape[0] != 1 or not torch.allclose(t[i], a[0], rtol=1e-5, atol=1e-6)
                for t, a in zip(together, alone, strict=True)):
            return False
    return True


@torch.no_grad()
def clipped_sum(layers: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]], max_grad_norm: float,
                out: dict[nn.Parameter, torch.Tensor]) -> torch.Tensor:
    """Sum over records of each record's gradient clipped to `max_grad_norm` (L2, over every parameter
    jointly), written into `out[p]` for each parameter; returns each record's gradient norm (before
    clipping; 0 for a zeroed record).

    `layers` holds, for each `nn.Linear`, its input `a` (records x in) and the gradient `g` of the summed
    loss with respect to its output (records x out). A record's gradient of that layer is then the outer
    product g_i a_i^T (weight) and g_i (bias), so its squared norm is |g_i|^2 (|a_i|^2 + 1) and the clipped
    sum is (c * g)^T a with c_i = min(1, C / (norm_i + 1e-6)), Opacus's clipping factor: the "ghost norm"
    of Opacus's fast gradient clipping, with the clipped sum taken directly instead of by a second backward
    pass. A record whose gradient holds a NaN or an infinity (or whose norm overflows) is zeroed, as
    `_zero_non_finite_samples` does on the Opacus path: see there for why."""
    sq = None
    for layer, a, g in layers:  # in place: each step is a few dozen small operations, each allocation counts
        term = torch.linalg.vecdot(a, a)
        if layer.bias is not None:
            term.add_(1.0)
        term.mul_(torch.linalg.vecdot(g, g))
        sq = term if sq is None else sq.add_(term)
    assert sq is not None
    # Every entry is >= 0 or NaN, so the sum is finite exactly when every entry is (or it overflows, a
    # false alarm the careful branch below handles right): one reduction, not a check per record.
    if not math.isfinite(sq.sum().item()):
        keep = torch.isfinite(sq)
        sq = torch.where(keep, sq, 0.0)
        layers = [(layer, torch.where(keep[:, None], a, 0.0), torch.where(keep[:, None], g, 0.0))
                  for layer, a, g in layers]
    norms = sq.sqrt_()
    # C / (norm + 1e-6) as PyTorch computes a float over a tensor (the reciprocal, times C), without the
    # Python-level operator that costs more than the arithmetic here
    coef = norms.add(1e-6).reciprocal_().mul_(max_grad_norm).clamp_(max=1.0).unsqueeze_(1)
    for layer, a, g in layers:
        scaled = g * coef
        torch.mm(scaled.t(), a, out=out[layer.weight])
        if layer.bias is not None:
            torch.sum(scaled, dim=0, out=out[layer.bias])
    return norms


def _train_linear(model: nn.Module, linears: list[nn.Linear], xt: torch.Tensor, yt: torch.Tensor, *, epochs: int,
                  schedule: DPSchedule, learning_rate: float, momentum: float, noise_multiplier: float,
                  max_grad_norm: float, noise_seed: int, sampling_seed: int,
                  loss: OutcomeLoss = BINARY) -> tuple[TrainResult, int]:
    """DP-SGD for a model of `nn.Linear` layers (see `_linear_layers`) in one backward pass per step.

    Each step: the Poisson batch's summed loss, its gradient with respect to each layer's output
    (autograd, one pass, no parameter gradient), each record's clipped gradient summed (`clipped_sum`),
    Gaussian noise of std `noise_multiplier * max_grad_norm` added, the sum divided by the expected batch
    size, and one SGD step: Opacus's DPOptimizer's arithmetic, in its order, with its noise drawn from the
    same generator. Why not Opacus's own classes: per-sample gradients, its hooks and its optimizer's
    per-parameter bookkeeping cost several plain epochs per epoch on a model this small, dominated by
    per-operation overhead; so the parameters are trained as one flat vector (the model's parameters
    viewing into it while it trains, its own tensors updated when it ends) and each step is a fixed handful
    of tensor operations. The noise is one draw for the flat vector rather than one per parameter: the same
    distribution from the same generator, in fewer calls."""
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.zeros_like(flat)
    noise = torch.empty_like(flat)
    param_views: list[torch.Tensor] = []
    grad_views: dict[nn.Parameter, torch.Tensor] = {}
    offset = 0
    for p in params:
        param_views.append(flat[offset:offset + p.numel()].view_as(p))
        grad_views[p] = grad[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    originals = [p.data for p in params]
    vector = nn.Parameter(flat)
    vector.grad = grad
    optimizer = torch.optim.SGD([vector], lr=learning_rate, momentum=momentum)
    sampling = torch.Generator().manual_seed(sampling_seed % 2**64)
    noise_gen = torch.Generator().manual_seed(noise_seed % 2**64)
    std = noise_multiplier * max_grad_norm
    divisor = schedule.expected_batch_size
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda _m, inp, out: seen.append((inp[0], out))) for m in linears]
    steps, losses = 0, []
    try:
        for p, view in zip(params, param_views, strict=True):
            p.data = view
        model.train()
        for _ in range(epochs):
            losses = []
            for idx in poisson_batches(len(xt), schedule, sampling):
                if len(idx):
                    seen.clear()
                    logits = model(xt.index_select(0, idx))
                    summed = loss(logits, yt.index_select(0, idx), reduction="sum")
                    losses.append(summed.item() / len(idx))
                    outputs = torch.autograd.grad(summed, [out for _, out in seen])
                    clipped_sum([(m, a, g) for m, (a, _), g in zip(linears, seen, outputs, strict=True)],
                                max_grad_norm, grad_views)
                else:  # an empty Poisson batch: no gradient, the step adds the noise alone
                    grad.zero_()
                torch.normal(0.0, std, size=noise.shape, generator=noise_gen, out=noise)
                grad.add_(noise).div_(divisor)
                optimizer.step()
                steps += 1
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for p, original in zip(params, originals, strict=True):
                original.copy_(p.data)
                p.data = original
                p.grad = grad_views[p].clone()  # the last step's noised gradient, as Opacus's path leaves it
    mean = float(np.mean(losses)) if losses else math.nan
    return TrainResult(mean, steps, time.perf_counter() - start), steps


@opacus_quiet()
def train_private_opacus(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, schedule: DPSchedule,
                  learning_rate: float, momentum: float, noise_multiplier: float, max_grad_norm: float,
                  noise_seed: int, sampling_seed: int, loss: OutcomeLoss = BINARY) -> tuple[TrainResult, int]:
    """DP-SGD on Opacus's per-sample gradients (expanded weights), DPOptimizer and Poisson sampler: the
    path for a model with a parametrised layer other than `nn.Linear`, and the reference the linear path
    (`train_private`) is tested against. Same arguments, result and privacy meaning as `train_private`.

    Opacus's building blocks are used directly rather than `PrivacyEngine`, so that the schedule is the
    public one of `dp_schedule`, not one derived from how many records the hospital holds.
    """
    from opacus.grad_sample.utils import wrap_model
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    _refuse_coupled(loss)
    start = time.perf_counter()
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    sampler = UniformWithReplacementSampler(
        num_samples=len(xt), sample_rate=schedule.sample_rate,
        generator=torch.Generator().manual_seed(sampling_seed % 2**64), steps=schedule.steps_per_epoch)
    private_model = wrap_model(model, grad_sample_mode="ew", batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum),
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=schedule.expected_batch_size, loss_reduction="mean",
        generator=torch.Generator().manual_seed(noise_seed % 2**64))
    private_model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    steps, losses = 0, []
    for _ in range(epochs):
        losses = []
        for indices in sampler:
            optimizer.zero_grad(set_to_none=True)
            if indices:
                idx = torch.as_tensor(indices, dtype=torch.long)
                batch_loss = loss(private_model(xt[idx]), yt[idx])
                losses.append(float(batch_loss.detach()))
                batch_loss.backward()
                _zero_non_finite_samples(params)
            else:  # an empty Poisson batch: no gradient, the step adds the noise alone
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            optimizer.step()
            steps += 1
    mean = float(np.mean(losses)) if losses else math.nan
    return TrainResult(mean, steps, time.perf_counter() - start), steps
