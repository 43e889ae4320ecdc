"""q-FedAvg (q-FFL, Li, Sanjabi, Beirami and Smith, ICLR 2020) in a form secure aggregation can carry.

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
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import QFedAvg
from flwr.server.strategy.aggregate import aggregate_qffl

from fedhealth.model.qffl import SCALE_KEY, initial_scale


class QFairFedAvg(QFedAvg):
    """Flower's QFedAvg, fed with per-hospital q-FFL terms instead of one server-side loss.

    Each fit result holds [Delta..., [h]] (see `qffl_terms`); under SecAgg+ the only result is their
    mean, which gives the same step because q-FFL divides one sum by another.
    """

    def __init__(self, *, q_param: float, qffl_learning_rate: float, **kwargs) -> None:
        super().__init__(q_param=q_param, qffl_learning_rate=qffl_learning_rate, **kwargs)
        self.scale = initial_scale(q_param, qffl_learning_rate)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager
                      ) -> list[tuple[ClientProxy, FitIns]]:
        instructions = super().configure_fit(server_round, parameters, client_manager)
        for _, ins in instructions:
            ins.config[SCALE_KEY] = self.scale
        return instructions

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        if self.pre_weights is None:
            raise RuntimeError("q-FedAvg: aggregate_fit before configure_fit (no global model to step from)")
        terms = [parameters_to_ndarrays(res.parameters) for _, res in results]
        deltas = [t[:-1] for t in terms]
        hs = [float(t[-1][0]) for t in terms]
        if not all(math.isfinite(h) and h > 0 for h in hs):
            raise ValueError(f"q-FedAvg: every h must be positive and finite; got {hs}")
        new = aggregate_qffl(self.pre_weights, deltas, hs)
        new = [n.astype(p.dtype) for n, p in zip(new, self.pre_weights, strict=True)]
        self.scale *= float(np.mean(hs))  # next round's terms come out of order one again
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn([(res.num_examples, res.metrics) for _, res in results])
        return ndarrays_to_parameters(new), metrics
