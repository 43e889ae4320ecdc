"""Plain PyTorch train and evaluate loops: no Flower in here.

The same functions train a hospital's update inside the ClientApp and the local-only and pooled
reference models, so the three are compared on equal terms (same optimiser, epochs, batch size).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedhealth.metrics.classification import BinaryMetrics, binary_metrics
from fedhealth.model.losses import BINARY, OutcomeLoss


@dataclass(frozen=True)
class TrainResult:
    mean_loss: float  # mean per-record loss over the last epoch's batches (binary cross-entropy by default)
    steps: int  # optimiser steps taken
    seconds: float  # wall time of the loop


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    proximal_mu: float = 0.0,
    anchor: Sequence[np.ndarray] | None = None,
    loss: OutcomeLoss = BINARY,
) -> TrainResult:
    """SGD with momentum on `loss` (binary cross-entropy by default; `fedhealth.model.losses`), shuffled by
    `seed` so results are reproducible. `y`: the loss's targets (the labels, or `interval_targets`).

    With `proximal_mu > 0` and `anchor` (the global weights received), adds FedProx's term
    mu/2 * ||w - w_global||^2, which keeps heterogeneous hospitals from drifting apart.
    """
    loss.check_targets(y)
    start = time.perf_counter()
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    n = len(xt)
    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    opt = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    params = list(model.parameters())
    anchors = [torch.as_tensor(a) for a in anchor] if (proximal_mu > 0 and anchor is not None) else None
    model.train()
    steps, last_losses = 0, []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        last_losses = []
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            opt.zero_grad(set_to_none=True)
            batch_loss = loss(model(xt[idx]), yt[idx])
            if anchors is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
                batch_loss = batch_loss + 0.5 * proximal_mu * prox
            batch_loss.backward()
            opt.step()
            steps += 1
            last_losses.append(float(batch_loss.detach()))
    return TrainResult(float(np.mean(last_losses)) if last_losses else float("nan"), steps,
                       time.perf_counter() - start)


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """The model's raw outputs for each record (float64: (n,) for one logit, (n, K) for K)."""
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    out = [model(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """Predicted probability of the outcome for each record (float64, shape (n,))."""
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    out = [torch.sigmoid(model(xt[i : i + batch_size])) for i in range(0, len(xt), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


@torch.no_grad()
def mean_loss(model: nn.Module, x: np.ndarray, y: np.ndarray, loss: OutcomeLoss = BINARY,
              batch_size: int = 65_536) -> float:
    """The mean per-record `loss` of `model` on (x, y): q-FedAvg's weighting, a time-to-event test loss."""
    model.eval()
    if len(x) == 0:
        return float("nan")
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    total = sum(float(loss(model(xt[i : i + batch_size]), yt[i : i + batch_size], reduction="sum"))
                for i in range(0, len(xt), batch_size))
    return total / len(xt)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> BinaryMetrics:
    """Discrimination and calibration of `model` on one held-out set."""
    return binary_metrics(y, predict_proba(model, x))
