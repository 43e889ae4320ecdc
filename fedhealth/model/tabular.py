"""Logistic regression and a small MLP for tabular records.

Both output one logit per record, or `n_outputs` logits per record for a loss that needs more
(`fedhealth.model.losses.LogisticHazard`: one per interval). No BatchNorm: per-sample gradients (Opacus
DP-SGD) need layers whose output for one record does not depend on the others in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

MODEL_NAMES = ("logreg", "mlp")


class LogisticRegression(nn.Module):
    def __init__(self, n_inputs: int, n_outputs: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(n_inputs, n_outputs)
        self.squeeze = n_outputs == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out.squeeze(-1) if self.squeeze else out


class MLP(nn.Module):
    def __init__(self, n_inputs: int, hidden: Sequence[int], n_outputs: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)
        self.squeeze = n_outputs == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.squeeze(-1) if self.squeeze else out


def build_model(name: str, n_inputs: int, hidden: Sequence[int] = (32, 16), seed: int = 0,
                n_outputs: int = 1) -> nn.Module:
    """Build a model by name with weights initialised from `seed`, so every party starts identically;
    `n_outputs` logits per record (1: one, squeezed, for the binary outcome)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model: nn.Module = (LogisticRegression(n_inputs, n_outputs) if name == "logreg"
                            else MLP(n_inputs, hidden, n_outputs))
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without Opacus's `_module.` wrapper prefix, so aggregation never sees it."""
    return {k.removeprefix("_module."): v for k, v in model.state_dict().items()}


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Parameters as float32 NumPy arrays in the model's canonical order (the wire format)."""
    return [v.detach().cpu().numpy().astype(np.float32, copy=True) for v in _plain_state(model).values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load wire-format weights; a wrong count or shape is an error naming the parameter."""
    target = model._module if hasattr(model, "_module") else model  # Opacus GradSampleModule
    keys = list(target.state_dict().keys())
    if len(weights) != len(keys):
        raise ValueError(f"expected {len(keys)} parameter arrays, got {len(weights)}")
    state = {}
    for key, w in zip(keys, weights, strict=True):
        expected = tuple(target.state_dict()[key].shape)
        if tuple(w.shape) != expected:
            raise ValueError(f"parameter {key}: expected shape {expected}, got {tuple(w.shape)}")
        state[key] = torch.as_tensor(np.asarray(w, dtype=np.float32))
    target.load_state_dict(state, strict=True)
