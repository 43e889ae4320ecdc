"""DP-SGD with Opacus: per-sample clipping, Poisson sampling, Gaussian noise.

The ledger, not Opacus's own accountant, is the record of what was spent (see ledger.py); this
module only trains, with exactly the (noise multiplier, sample rate, steps) the ledger charged.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants.utils import get_noise_multiplier
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedhealth.training import TrainResult

# Opacus warns on every step that its noise does not come from a cryptographically secure RNG
# (`secure_mode` needs torchcsprng, which is not installable here). The guarantee holds against
# an adversary who cannot predict PyTorch's generator; see the README's privacy section.
warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
warnings.filterwarnings("ignore", message=".*Optimal order is the.*")
# Opacus's per-sample hooks on a model whose inputs need no gradient: expected, harmless.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def steps_per_epoch(n_records: int, batch_size: int) -> int:
    """Opacus's DPDataLoader keeps the loader's length: ceil(n / batch size) steps per epoch."""
    return math.ceil(n_records / batch_size)


def sample_rate(n_records: int, batch_size: int) -> float:
    """Poisson sampling probability per record per step, exactly as Opacus sets it: 1 / steps per epoch."""
    return 1.0 / steps_per_epoch(n_records, batch_size)


def calibrate_noise(target_epsilon: float, delta: float, q: float, steps: int) -> float:
    """Noise multiplier that spends at most `target_epsilon` (at `delta`) over `steps` steps at rate q."""
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=q,
                                      steps=steps, accountant="rdp", epsilon_tolerance=0.005))


class _BatchFetchDataset(Dataset):
    """Tensors that DataLoader can fetch a whole batch of in one indexing operation.

    PyTorch calls `__getitems__` with all of a batch's indices when a dataset has it; with Opacus's
    Poisson batch sampler this replaces a per-record fetch and collate that cost as much as training.
    The sampling itself (and so the guarantee) is Opacus's, unchanged.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.y[idx]


def _already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def train_private(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                  learning_rate: float, momentum: float, noise_multiplier: float, max_grad_norm: float,
                  seed: int) -> tuple[TrainResult, int]:
    """Train `model` in place with DP-SGD; returns the result and the number of DP steps taken.

    Weights stay on the caller's module (Opacus wraps it; it does not copy), so `get_weights(model)`
    afterwards yields clean parameter names with no `_module.` prefix.
    """
    start = time.perf_counter()
    torch.manual_seed(seed % (2**63))
    data = _BatchFetchDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))
    loader = DataLoader(data, batch_size=batch_size, collate_fn=_already_batched)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    engine = PrivacyEngine(accountant="rdp")
    generator = torch.Generator().manual_seed(seed % (2**63))
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm, poisson_sampling=True, noise_generator=generator,
        grad_sample_mode="ew")
    loss_fn = nn.BCEWithLogitsLoss()
    private_model.train()
    steps, losses = 0, []
    for _ in range(epochs):
        losses = []
        for xb, yb in private_loader:
            private_optimizer.zero_grad(set_to_none=True)
            if len(xb) > 0:  # an empty Poisson batch still steps: Opacus adds the noise alone
                loss = loss_fn(private_model(xb), yb)
                losses.append(float(loss.detach()))
                loss.backward()
            private_optimizer.step()
            steps += 1
    (used_sigma, used_q, _), *rest = engine.accountant.history
    if rest or used_sigma != noise_multiplier or used_q != sample_rate(len(x), batch_size):
        raise RuntimeError(f"Opacus ran (sigma={used_sigma}, q={used_q}) but the ledger charged "
                           f"(sigma={noise_multiplier}, q={sample_rate(len(x), batch_size)})")
    mean = float(np.mean(losses)) if losses else math.nan
    return TrainResult(mean, steps, time.perf_counter() - start), steps
