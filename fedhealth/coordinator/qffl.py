"""q-FedAvg's server side: `QFairFedAvg`, Flower's `QFedAvg` fed with the terms each hospital computes on its
own records and sends masked (`fedhealth.model.qffl` explains the method, why Flower's `QFedAvg` cannot be
used as it stands, and what it reveals). The server receives the mean of [Delta_k..., [h_k]], applies
Flower's `aggregate_qffl` to it, and sends each round the `scale` the hospitals divide their terms by.
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
