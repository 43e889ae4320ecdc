"""The benchmark's peer: the federation job written by hand, as an expert Flower 1.41 user writes it.

    python benchmarks/_flower_peer.py --data DIR --hospitals 5 --rounds 3 [--noise-multiplier 1.0]
        [--secagg --num-shares 5 --reconstruction-threshold 4 --max-weight 1500 --clipping-range 8
         --quantization-range 4194304]

It imports nothing from fedhealth, on purpose: `bench_federation.py` compares fedhealth against what a
skilled user gets from Flower alone, so nothing of fedhealth's (its data loading, model, loop, or speed-ups)
may leak into the yardstick. What makes it a tuned peer rather than a tutorial:

* `flwr.simulation.run_simulation` with FedAvg through the workflow API (`LegacyContext` +
  `DefaultWorkflow`), the API in which Flower 1.41 offers SecAgg+ (`SecAggPlusWorkflow` as the fit
  workflow, `secaggplus_mod` on the client), so the plain and the secure job differ only in that.
* One CPU per simulated client and one torch thread per ClientApp, so two clients train at once on two cores
  (Flower's default of two CPUs per client runs one at a time); telemetry off (offline it waits at exit).
* Each actor reads its hospital's CSV once and keeps it (`_hospital`): the simulation engine builds a
  fresh client for every message, and re-reading the file each time is the classic slow spot.
* DP-SGD is the common Flower + Opacus recipe: `PrivacyEngine().make_private(...)` on every fit (Poisson
  sampling, the given noise multiplier and clipping norm), reporting that round's epsilon.
* Every hospital is evaluated every round (`fraction_evaluate = 1`) on its test rows; AUROC is the rank
  (Mann-Whitney) statistic in numpy, so no client imports scikit-learn for one number.

The CSVs are the ones the benchmark writes for fedhealth (`f01`..`fNN`, `outcome` 0/1, `set` train/test), so
both train and test on exactly the same rows; `--initial-weights` lets both start from the same model, so their
final metrics can be compared. The last line on stdout is one JSON object with the final round's metrics;
everything else (Flower's own messages) goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before Flower is imported: it reads it at import

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.client import ClientApp, NumPyClient  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.common import Context, Metrics, NDArrays, Scalar, ndarrays_to_parameters  # noqa: E402
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from torch import nn  # noqa: E402

LABEL = "outcome"
SPLIT = "set"
HIDDEN = 32
LEARNING_RATE = 0.1
BATCH_SIZE = 64
LOCAL_EPOCHS = 1
MAX_GRAD_NORM = 1.0
DELTA = 1e-5
SEED = 42

# Opacus warns on every step that its RNG is not cryptographically secure (secure_mode needs torchcsprng);
# set here, at import, so it holds in every Ray actor too.
warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")


def hospital_file(data_dir: Path, index: int) -> Path:
    """The CSV of hospital `index` (0-based), as `bench_federation.write_data` names it."""
    return data_dir / f"h{index + 1:02d}.csv"


@cache
def _hospital(path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) of one hospital's CSV, read once per actor process."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    features = [i for i, name in enumerate(header) if name not in (LABEL, SPLIT)]
    label, split = header.index(LABEL), header.index(SPLIT)
    x = np.array([[float(r[i]) for i in features] for r in body], dtype=np.float32)
    y = np.array([float(r[label]) for r in body], dtype=np.float32)
    test = np.array([r[split] == "test" for r in body])
    as_t = torch.from_numpy
    return as_t(x[~test]), as_t(y[~test]), as_t(x[test]), as_t(y[test])


def build_model(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


def get_weights(model: nn.Module) -> NDArrays:
    return [v.detach().cpu().numpy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: NDArrays) -> None:
    keys = model.state_dict().keys()
    model.load_state_dict({k: torch.from_numpy(np.asarray(w)) for k, w in zip(keys, weights, strict=True)})


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half)."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    # average rank over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


class HospitalClient(NumPyClient):
    """One hospital: local SGD (or DP-SGD) on its training rows, evaluation on its test rows."""

    def __init__(self, path: str, partition: int, noise_multiplier: float | None) -> None:
        self.x_train, self.y_train, self.x_test, self.y_test = _hospital(path)
        self.partition = partition
        self.noise_multiplier = noise_multiplier
        self.model = build_model(self.x_train.shape[1])

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        round_ = int(config["server_round"])
        generator = torch.Generator().manual_seed(SEED * 1_000_003 + self.partition * 1009 + round_)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x_train, self.y_train),
                                             batch_size=BATCH_SIZE, shuffle=True, generator=generator)
        model: nn.Module = self.model
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
        metrics: dict[str, Scalar] = {}
        engine = None
        if self.noise_multiplier is not None:
            from opacus import PrivacyEngine

            engine = PrivacyEngine()
            model, optimizer, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader,
                noise_multiplier=self.noise_multiplier, max_grad_norm=MAX_GRAD_NORM)
        loss_fn = nn.BCEWithLogitsLoss()
        model.train()
        for _ in range(LOCAL_EPOCHS):
            for xb, yb in loader:
                if len(yb) == 0:  # Poisson sampling can draw an empty batch
                    continue
                optimizer.zero_grad()
                loss_fn(model(xb).squeeze(-1), yb).backward()
                optimizer.step()
        if engine is not None:
            metrics["epsilon"] = float(engine.get_epsilon(DELTA))
            model = model._module  # GradSampleModule wraps the model; its weights are the model's
        return get_weights(model), len(self.y_train), metrics

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        self.model.eval()
        with torch.no_grad():
            logits = self.model(self.x_test).squeeze(-1)
            loss = float(nn.functional.binary_cross_entropy_with_logits(logits, self.y_test))
        y, p = self.y_test.numpy(), torch.sigmoid(logits).numpy()
        accuracy = float(((p >= 0.5) == (y == 1)).mean())
        return loss, len(y), {"accuracy": accuracy, "auroc": auroc(y, p)}


def _weighted(results: list[tuple[int, Metrics]]) -> Metrics:
    total = sum(n for n, _ in results)
    keys = set().union(*(m.keys() for _, m in results)) if results else set()
    out: Metrics = {k: sum(n * float(m[k]) for n, m in results if k in m) / total for k in keys}
    out["clients"] = len(results)
    return out


def _unweighted_auroc(results: list[tuple[int, Metrics]]) -> Metrics:
    """Weighted accuracy, plus the plain mean of the hospitals' AUROC (as fedhealth's mean_hospital_auroc)."""
    out = _weighted(results)
    out["mean_hospital_auroc"] = float(np.mean([float(m["auroc"]) for _, m in results]))
    return out


def build_apps(args: argparse.Namespace, history: dict[str, Any]) -> tuple[ServerApp, ClientApp]:
    """The ServerApp and the ClientApp of the job; `history` receives the server's History when done."""
    n = args.hospitals
    data_dir = Path(args.data).resolve()
    width = int(_hospital(str(hospital_file(data_dir, 0)))[0].shape[1])
    if args.initial_weights:  # a given starting model (the benchmark gives fedhealth's round-0 model)
        with np.load(args.initial_weights) as npz:
            initial = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    else:
        torch.manual_seed(SEED)
        initial = get_weights(build_model(width))

    def client_fn(context: Context):
        torch.set_num_threads(1)
        partition = int(context.node_config["partition-id"])
        return HospitalClient(str(hospital_file(data_dir, partition)), partition,
                              args.noise_multiplier).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if args.secagg else None)
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0, fraction_evaluate=1.0,
            min_fit_clients=n, min_evaluate_clients=n, min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(initial),
            on_fit_config_fn=lambda r: {"server_round": r},
            fit_metrics_aggregation_fn=_weighted,
            evaluate_metrics_aggregation_fn=_unweighted_auroc,
        )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=args.rounds), strategy=strategy)
        fit_workflow = None
        if args.secagg:
            fit_workflow = SecAggPlusWorkflow(
                num_shares=args.num_shares, reconstruction_threshold=args.reconstruction_threshold,
                max_weight=args.max_weight, clipping_range=args.clipping_range,
                quantization_range=args.quantization_range)
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
        history["history"] = legacy.history

    return server_app, client_app


def final_metrics(history: Any, rounds: int, hospitals: int) -> dict[str, Any]:
    """The last round's distributed evaluation; raises if a round lost a hospital (FedAvg would carry on)."""
    evaluated = history.metrics_distributed.get("clients", [])
    if [int(c) for _, c in evaluated] != [hospitals] * rounds:
        raise RuntimeError(f"expected {hospitals} evaluated hospitals in each of {rounds} rounds, got {evaluated}")
    fitted = history.metrics_distributed_fit.get("clients", [])
    if [int(c) for _, c in fitted] != [hospitals] * rounds:
        raise RuntimeError(f"expected {hospitals} trained hospitals in each of {rounds} rounds, got {fitted}")
    last = {k: float(v[-1][1]) for k, v in history.metrics_distributed.items() if v}
    out = {"rounds": rounds, "hospitals": hospitals, "loss": float(history.losses_distributed[-1][1]),
           "accuracy": last["accuracy"], "auroc_weighted": last["auroc"],
           "mean_hospital_auroc": last["mean_hospital_auroc"]}
    eps = history.metrics_distributed_fit.get("epsilon")
    if eps:
        out["epsilon_last_round"] = float(eps[-1][1])
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of h01.csv, h02.csv, ... (bench_federation.write_data)")
    p.add_argument("--hospitals", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--noise-multiplier", type=float, default=None, help="record-level DP-SGD with this sigma")
    p.add_argument("--initial-weights", default=None,
                   help="the round-0 model as an .npz of arrays arr_0, arr_1, ... (default: seeded torch init)")
    p.add_argument("--secagg", action="store_true", help="SecAgg+ (SecAggPlusWorkflow + secaggplus_mod)")
    p.add_argument("--num-shares", type=int, default=None)
    p.add_argument("--reconstruction-threshold", type=int, default=None)
    p.add_argument("--max-weight", type=float, default=1000.0)
    p.add_argument("--clipping-range", type=float, default=8.0)
    p.add_argument("--quantization-range", type=int, default=2**22)
    args = p.parse_args(argv)
    if args.secagg and (args.num_shares is None or args.reconstruction_threshold is None):
        p.error("--secagg needs --num-shares and --reconstruction-threshold (an odd share count: see "
                "shared FLOWER-NOTES on even counts)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    history: dict[str, Any] = {}
    server_app, client_app = build_apps(args, history)
    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                      "init_args": {"logging_level": logging.ERROR, "log_to_driver": False}}
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.hospitals,
                   backend_config=backend_config)
    if "history" not in history:
        raise RuntimeError("the ServerApp did not finish (no history): see Flower's log above")
    print(json.dumps(final_metrics(history["history"], args.rounds, args.hospitals)), flush=True)
    return 0


if __name__ == "__main__":
    # Import this file under its own name, so the ClientApp's functions pickle by reference and each Ray
    # actor keeps one `_hospital` cache (the benchmark puts benchmarks/ on PYTHONPATH for the actors).
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _flower_peer

    sys.exit(_flower_peer.main())
