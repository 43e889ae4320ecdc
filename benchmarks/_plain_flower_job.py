"""The benchmark's yardstick: a fedhealth study written as plain, hand-written Flower.

This is what a typical Flower user writes for FedAvg with federated evaluation every round: a
`NumPyClient` inside `ClientApp(client_fn)`, `ServerApp(server_fn=...)` returning Flower's own
`FedAvg`, and `run_simulation`. It deliberately shares fedhealth's data, model and training loop
(and the seeds derived from the study seed), so the only difference from `fedhealth` is the
federation layer itself: the wire payload, the observing strategy wrapper, the resumable workflow
and the run directory. `bench_federation.py` runs it in a fresh process, as it does fedhealth.

Used by `benchmarks/bench_federation.py`; not a public module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, Metrics, NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.simulation import run_simulation

from fedhealth.data.hospitals import input_width, load_hospital
from fedhealth.model import build_model, get_weights, set_weights
from fedhealth.model.training import evaluate, train
from fedhealth.seeding import derive_seed
from fedhealth.study.config import StudyConfig


@dataclass
class PlainRun:
    """What the plain server saw, so the benchmark can check the job really ran and time its rounds.

    Filled in the driver process: Flower runs the ServerApp in a thread of the process that calls
    `run_simulation`, so the strategy's callbacks can append here directly.
    """

    round_started: list[float] = field(default_factory=list)  # perf_counter at each round's configure_fit
    round_ended: list[float] = field(default_factory=list)  # perf_counter after each round's evaluation
    fit_results: list[int] = field(default_factory=list)  # hospitals whose update was aggregated, per round
    eval_results: list[int] = field(default_factory=list)  # hospitals that evaluated, per round
    train_seconds: list[float] = field(default_factory=list)  # sum over hospitals of local training, per round
    auroc_weighted: list[float] = field(default_factory=list)  # test-size-weighted AUROC, per round
    round_end_epochs: list[float] = field(default_factory=list)  # time.time() as each round ends

    @property
    def round_seconds(self) -> list[float]:
        return [end - start for start, end in zip(self.round_started, self.round_ended, strict=False)]


class PlainClient(NumPyClient):
    """One hospital, as a Flower tutorial would write it: fit and evaluate on its own split."""

    def __init__(self, cfg: StudyConfig, partition_id: int) -> None:
        self.cfg = cfg
        self.partition_id = partition_id
        self.split = load_hospital(cfg, partition_id)
        self.model = build_model(cfg.model.name, self.split.x_train.shape[1], cfg.model.hidden, seed=cfg.seed)

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        t = self.cfg.training
        result = train(
            self.model, self.split.x_train, self.split.y_train,
            epochs=t.local_epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
            momentum=t.momentum, weight_decay=t.weight_decay,
            seed=derive_seed(self.cfg.seed, "fit", self.partition_id, int(config["server_round"])),
        )
        return get_weights(self.model), len(self.split.y_train), {"train_seconds": result.seconds}

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        m = evaluate(self.model, self.split.x_test, self.split.y_test)
        return m.loss, m.n, {"auroc": m.auroc}


def _client_app(cfg: StudyConfig) -> ClientApp:
    def client_fn(context: Context):
        torch.set_num_threads(1)  # one CPU per simulated hospital, as fedhealth's client does
        return PlainClient(cfg, int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn)


def _server_app(cfg: StudyConfig, record: PlainRun) -> ServerApp:
    n = len(cfg.hospitals)
    init = build_model(cfg.model.name, input_width(cfg), cfg.model.hidden, seed=derive_seed(cfg.seed, "init"))

    def fit_config(server_round: int) -> dict[str, Scalar]:
        record.round_started.append(time.perf_counter())
        return {"server_round": server_round}

    def fit_metrics(results: list[tuple[int, Metrics]]) -> Metrics:
        record.fit_results.append(len(results))
        record.train_seconds.append(sum(float(m["train_seconds"]) for _, m in results))
        return {}

    def evaluate_metrics(results: list[tuple[int, Metrics]]) -> Metrics:
        record.eval_results.append(len(results))
        total = sum(num for num, _ in results)
        record.auroc_weighted.append(sum(num * float(m["auroc"]) for num, m in results) / total if total else 0.0)
        record.round_ended.append(time.perf_counter())
        record.round_end_epochs.append(time.time())
        return {}

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = FedAvg(
            fraction_fit=1.0, fraction_evaluate=1.0,
            min_fit_clients=n, min_evaluate_clients=n, min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(get_weights(init)),
            on_fit_config_fn=fit_config,
            fit_metrics_aggregation_fn=fit_metrics,
            evaluate_metrics_aggregation_fn=evaluate_metrics,
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=cfg.federation.rounds))

    return ServerApp(server_fn=server_fn)


def run(cfg: StudyConfig) -> PlainRun:
    """Run the study as plain Flower; raises if any round lost a hospital (FedAvg would carry on)."""
    record = PlainRun()
    backend_config = {  # exactly what fedhealth.experiments.simulate.run_federation passes (non-verbose)
        "client_resources": {"num_cpus": cfg.federation.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": False},
    }
    run_simulation(server_app=_server_app(cfg, record), client_app=_client_app(cfg),
                   num_supernodes=len(cfg.hospitals), backend_config=backend_config)
    n, rounds = len(cfg.hospitals), cfg.federation.rounds
    if record.fit_results != [n] * rounds or record.eval_results != [n] * rounds:
        raise RuntimeError(f"plain Flower job incomplete: expected {n} fit and {n} evaluate results in each of "
                           f"{rounds} rounds, got fit {record.fit_results}, evaluate {record.eval_results}")
    return record
