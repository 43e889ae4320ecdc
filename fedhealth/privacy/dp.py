"""DP-SGD with Opacus: per-sample clipping, Poisson sampling, Gaussian noise.

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
from opacus.accountants.utils import get_noise_multiplier
from torch import nn

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


@opacus_quiet()
def calibrate_noise(target_epsilon: float, delta: float, q: float, steps: int) -> float:
    """Noise multiplier that spends at most `target_epsilon` (at `delta`) over `steps` steps at rate q."""
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=q,
                                      steps=steps, accountant="rdp", epsilon_tolerance=0.005))


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
                  noise_seed: int, sampling_seed: int) -> tuple[TrainResult, int]:
    """Train `model` in place with DP-SGD (Opacus); returns the result and the number of DP steps taken.

    Privacy meaning: each of the `epochs * schedule.steps_per_epoch` steps is the sampled Gaussian
    mechanism at rate `schedule.sample_rate` and noise multiplier `noise_multiplier` on per-record
    gradients clipped to `max_grad_norm`, which is exactly what the ledger charges. A step whose Poisson
    batch is empty adds the noise alone (Opacus's empty-batch path), as the accountant assumes.

    `noise_seed` and `sampling_seed` must come from the hospital's secret (`HospitalSecret.seed`): the
    noise is only noise to whoever cannot regenerate it. Opacus's building blocks are used directly
    (its per-sample gradients, DPOptimizer and Poisson sampler) so that the schedule is the public one
    of `dp_schedule`, not one derived from how many records the hospital holds.
    """
    from opacus.grad_sample.utils import wrap_model
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

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
    loss_fn = nn.BCEWithLogitsLoss()
    private_model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    steps, losses = 0, []
    for _ in range(epochs):
        losses = []
        for indices in sampler:
            optimizer.zero_grad(set_to_none=True)
            if indices:
                idx = torch.as_tensor(indices, dtype=torch.long)
                loss = loss_fn(private_model(xt[idx]), yt[idx])
                losses.append(float(loss.detach()))
                loss.backward()
                _zero_non_finite_samples(params)
            else:  # an empty Poisson batch: no gradient, the step adds the noise alone
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            optimizer.step()
            steps += 1
    mean = float(np.mean(losses)) if losses else math.nan
    return TrainResult(mean, steps, time.perf_counter() - start), steps
