"""q-FedAvg (q-FFL, Li, Sanjabi, Beirami and Smith, ICLR 2020) in a form secure aggregation can carry: the
hospital's terms (the server's strategy is `fedhealth.coordinator.qffl`).

Why not Flower's `QFedAvg` as it stands: in flwr 1.41 it weighs every hospital by one *server-side*
loss (`evaluate_fn`), which our server cannot compute (it holds no records), and which is the same
for every hospital, so the "fair" re-weighting towards badly served hospitals never happens. And it
needs each hospital's update in the clear, which SecAgg+ hides.

q-FFL only ever needs two *sums* over hospitals, so each hospital computes its own terms and the
masked sum does the rest. With F_k the hospital's training loss at the received global model
(mean binary cross-entropy), u_k its update (new minus received weights), L = 1/lr the Lipschitz
estimate and q >= 0:

    Delta_k = F_k^q * (-u_k)                                  (Flower's Delta_k times lr)
    h_k     = q * F_k^(q-1) * ||u_k||^2 / lr + F_k^q          (Flower's h_k times lr)
    w_new   = w - sum_k Delta_k / sum_k h_k

Scaling every Delta_k and h_k by the same constant leaves w_new unchanged, so the hospitals divide
both by a `scale` the server sends each round (the previous round's mean h): what is masked stays of
order one and inside SecAgg+'s clipping range. A hospital sends [Delta_k..., [h_k]] with weight 1; the
server receives their mean and applies Flower's own `aggregate_qffl` to it. q = 0 gives the
unweighted mean of updates; larger q pulls the model towards the hospitals it serves worst.

Privacy: F_k is computed on the hospital's records without noise, so q-FedAvg is refused with
differential privacy (see `fedhealth.study.config`); under plain SecAgg+ the server learns the sums only.
"""

from __future__ import annotations

import math

import numpy as np

SCALE_KEY = "qffl_scale"
LOSS_KEY = "qffl_loss"


def initial_scale(q: float, learning_rate: float) -> float:
    """Round 1's scale, before any h has been seen: h_k = F^q + q F^(q-1) ||u||^2 / lr, with F of
    order one (a fresh model's cross-entropy is ln 2) and ||u||^2 of order one."""
    return 1.0 + q / learning_rate


def qffl_terms(update: list[np.ndarray], loss: float, q: float, learning_rate: float, scale: float
               ) -> list[np.ndarray]:
    """The arrays a hospital sends: Delta_k (one per parameter array) then h_k as a length-1 array,
    all divided by `scale`. `loss` is the hospital's training loss at the received model."""
    if not (math.isfinite(loss) and loss >= 0):
        raise ValueError(f"q-FedAvg needs a finite, non-negative training loss; got {loss}")
    f = loss + 1e-10  # as Flower's QFedAvg: keeps F^(q-1) finite for a perfect fit
    weight = f ** q
    norm2 = float(sum(np.sum(np.square(u, dtype=np.float64)) for u in update))
    h = q * f ** (q - 1) * norm2 / learning_rate + weight
    deltas = [(-weight / scale * u).astype(u.dtype) for u in update]
    return [*deltas, np.array([h / scale], dtype=np.float32)]
