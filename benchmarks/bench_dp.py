"""DP-SGD cost and the privacy-utility table; prints one JSON line.

    .venv/bin/python benchmarks/bench_dp.py               epoch time with and without DP (about a minute)
    .venv/bin/python benchmarks/bench_dp.py --utility     also federated AUROC at epsilon 1, 3, 8 and without DP
                                                       on configs/default.toml (several minutes per epsilon)

Epoch time: one local epoch on a realistic hospital (the default study's 6,000-record secondary hospital,
4,500 training records), batch 64, one torch thread (as each simulated hospital has), for the default MLP
and for logistic regression, and the same two as discrete-time hazard models (time-to-event: one logit per
interval, 10 intervals, `fedhealth.model.losses.LogisticHazard`; `mlp_hazard`, `logreg_hazard`), measured
side by side and interleaved in this process, each call timed from
the outside (setup included), in wall seconds and in the training thread's CPU seconds:
- plain: plain SGD (fedhealth.model.training.train);
- dp_new: our DP-SGD (fedhealth.privacy.dp.train_private: the linear path, one backward pass per step,
  each record's gradient norm from its layer inputs and output gradients, the clipped sum in one product);
- dp_old: the path before it (fedhealth.privacy.dp.train_private_opacus: Opacus's expanded-weights
  per-sample gradients, DPOptimizer, Opacus's Poisson sampler), still the path for other models;
- opacus_hooks: Opacus's textbook path (PrivacyEngine.make_private, hook-based per-sample gradients,
  its Poisson DataLoader);
and, for the MLP, the whole private release a hospital makes (fedhealth.privacy.round.train_with_budget:
the DP-SGD epoch plus the hospital's secret, the release key, the locked and fsync'ed ledger charge with its
RDP accounting, and the stored update). Medians of `--repeats` runs each (a first, uncounted pass warms up;
the order of the paths alternates from pass to pass).
Every DP path: per-record clipping of all parameters jointly to 1.0, Poisson sampling at the schedule's
rate for exactly its steps, Gaussian noise of std sigma x 1.0 on the clipped sum divided by the expected
batch size, noise and sampling from seeded generators: the same guarantee.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedhealth.data.hospitals import load_hospital  # noqa: E402
from fedhealth.data.study_file import load_config  # noqa: E402
from fedhealth.model import build_model  # noqa: E402
from fedhealth.model.losses import BINARY, LogisticHazard, interval_targets  # noqa: E402
from fedhealth.model.training import train  # noqa: E402
from fedhealth.privacy.dp import train_private, train_private_opacus  # noqa: E402
from fedhealth.privacy.round import noise_for, schedule_for, train_with_budget  # noqa: E402


def opacus_hooks_epoch(model, x: np.ndarray, y: np.ndarray, batch_size: int, lr: float, sigma: float,
                       seed: int) -> None:
    """Opacus's textbook path: TensorDataset + DataLoader + PrivacyEngine.make_private (hooks)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    module, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma, max_grad_norm=1.0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for xb, yb in loader:
        optimizer.zero_grad()
        if len(xb):
            loss_fn(module(xb), yb).backward()
        optimizer.step()


HAZARD_EDGES = np.array([0.0, 30, 60, 90, 180, 270, 365, 540, 730, 1095, 1460])  # days: 10 intervals


def hazard_targets(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Time-to-event targets for the same records, for timing the hazard model: exponential event times whose
    rate depends on the first features, censored uniformly over four years (seeded). Only the loss's work
    depends on them, not the privacy guarantee."""
    rng = np.random.default_rng(seed)
    rate = np.exp(0.5 * x[:, :3].sum(axis=1)) / 700.0
    event_time = rng.exponential(1.0 / rate)
    censor_time = rng.uniform(1.0, 1460.0, len(x))
    return interval_targets(np.minimum(event_time, censor_time) + 0.01, (event_time <= censor_time).astype(int),
                            HAZARD_EDGES)


def _timed(fn, *args, **kwargs) -> tuple[float, float]:
    """Wall seconds and this thread's CPU seconds (with one torch thread, forward and backward run on the
    calling thread): on a shared machine the CPU seconds are what other processes disturb least."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn(*args, **kwargs)
    return time.perf_counter() - wall, time.thread_time() - cpu


def epoch_times(repeats: int) -> dict:
    cfg = load_config(ROOT / "configs" / "default.toml",
                      ["privacy.mode=record", "privacy.noise_multiplier=1.0", "training.local_epochs=1"])
    split = load_hospital(cfg, 2)  # south-county-hospital, 6,000 records
    schedule, sigma = schedule_for(cfg, 2), noise_for(cfg, 2)
    ledgers = Path(tempfile.mkdtemp(prefix="bench-dp-ledger-"))
    x, y = split.x_train, split.y_train
    b, lr = cfg.training.batch_size, cfg.training.learning_rate
    torch.set_num_threads(1)
    y_hazard = hazard_targets(x)
    hazard = LogisticHazard(len(HAZARD_EDGES) - 1)
    # name: (architecture, hidden layers, outputs per record, loss, targets)
    models = {"mlp": ("mlp", cfg.model.hidden, 1, BINARY, y), "logreg": ("logreg", [], 1, BINARY, y),
              "mlp_hazard": ("mlp", cfg.model.hidden, hazard.n_outputs, hazard, y_hazard),
              "logreg_hazard": ("logreg", [], hazard.n_outputs, hazard, y_hazard)}
    paths = ("plain", "dp_new", "dp_old", "opacus_hooks")

    def fresh(name: str):
        arch, hidden, outputs, _, _ = models[name]
        return build_model(arch, x.shape[1], hidden, seed=0, n_outputs=outputs)

    def dp(fn, name: str, i: int) -> tuple[float, float]:
        _, _, _, loss, targets = models[name]
        return _timed(fn, fresh(name), x, targets, epochs=1, schedule=schedule, learning_rate=lr, momentum=0.9,
                      noise_multiplier=sigma, max_grad_norm=1.0, noise_seed=i, sampling_seed=i, loss=loss)

    def release(i: int) -> float:
        """The whole private round: a new release each time (round i), so every one is charged."""
        model = build_model(cfg.model.name, x.shape[1], cfg.model.hidden, seed=0)
        received = [p.detach().numpy().copy() for p in model.parameters()]
        start = time.perf_counter()
        outcome = train_with_budget(cfg, split, model, received, i + 1, str(ledgers), cap=1e9)
        assert outcome.weights is not None, outcome.detail
        return time.perf_counter() - start

    def accounting(i: int) -> float:
        """The RDP computation a charge makes (the projected epsilon): there before this release path too."""
        from fedhealth.privacy.ledger import epsilon_of

        start = time.perf_counter()
        epsilon_of([(sigma, schedule.sample_rate, schedule.steps_per_epoch * (i + 2))], cfg.privacy_delta())
        return time.perf_counter() - start

    runs: dict[str, dict[str, list[tuple[float, float]]]] = {name: {p: [] for p in paths} for name in models}
    extra: dict[str, list[float]] = {"release": [], "accounting": []}
    for i in range(repeats + 1):  # the first pass warms up imports and allocators, not counted
        for name in models:
            loss, targets = models[name][3], models[name][4]
            run = {"plain": lambda n=name, i=i, loss=loss, t=targets: _timed(
                       train, fresh(n), x, t, epochs=1, batch_size=b, learning_rate=lr, seed=i, loss=loss),
                   "dp_new": lambda n=name, i=i: dp(train_private, n, i),
                   "dp_old": lambda n=name, i=i: dp(train_private_opacus, n, i),
                   "opacus_hooks": lambda n=name, i=i: _timed(opacus_hooks_epoch, fresh(n), x, y, b, lr, sigma, i)}
            # Opacus's textbook path is written for the binary loss: timed for the binary models only
            mine = paths if loss is BINARY else paths[:3]
            order = mine if i % 2 else mine[::-1]  # alternate the order, so no path always runs first
            t = {p: run[p]() for p in order}
            if i:
                for p in mine:
                    runs[name][p].append(t[p])
            print(f"pass {i} {name}: " + " ".join(f"{p} {t[p][0]:.4f}s/{t[p][1]:.4f}cpu" for p in mine),
                  file=sys.stderr)
        t_release, t_accounting = release(i), accounting(i)
        if i:
            extra["release"].append(t_release)
            extra["accounting"].append(t_accounting)
    shutil.rmtree(ledgers, ignore_errors=True)
    out: dict = {"records": int(len(y)), "batch_size": b, "steps": schedule.steps_per_epoch, "repeats": repeats,
                 "mlp_hidden": list(cfg.model.hidden),
                 "torch_threads": torch.get_num_threads(), "load_average_before_after": None}
    for name in ("mlp", "logreg"):
        med = {p: statistics.median(w for w, _ in runs[name][p]) for p in paths}
        cpu = {p: statistics.median(c for _, c in runs[name][p]) for p in paths}
        out[name] = {
            "plain_epoch_s": round(med["plain"], 4), "dp_new_epoch_s": round(med["dp_new"], 4),
            "dp_old_epoch_s": round(med["dp_old"], 4), "opacus_hooks_epoch_s": round(med["opacus_hooks"], 4),
            "ratio_new_over_plain": round(med["dp_new"] / med["plain"], 2),
            "ratio_old_over_plain": round(med["dp_old"] / med["plain"], 2),
            "ratio_opacus_hooks_over_plain": round(med["opacus_hooks"] / med["plain"], 2),
            "speedup_new_over_old": round(med["dp_old"] / med["dp_new"], 2),
            # the same, in CPU seconds of the training thread
            "cpu_s": {p: round(cpu[p], 4) for p in paths},
            "cpu_ratio_new_over_plain": round(cpu["dp_new"] / cpu["plain"], 2),
            "cpu_ratio_old_over_plain": round(cpu["dp_old"] / cpu["plain"], 2),
            "cpu_ratio_opacus_hooks_over_plain": round(cpu["opacus_hooks"] / cpu["plain"], 2)}
    for name in ("mlp_hazard", "logreg_hazard"):  # the discrete-time hazard model (time-to-event, issue 18)
        med = {p: statistics.median(w for w, _ in runs[name][p]) for p in paths[:3]}
        cpu = {p: statistics.median(c for _, c in runs[name][p]) for p in paths[:3]}
        out[name] = {"intervals": hazard.n_intervals, "plain_epoch_s": round(med["plain"], 4),
                     "dp_new_epoch_s": round(med["dp_new"], 4), "dp_old_epoch_s": round(med["dp_old"], 4),
                     "ratio_new_over_plain": round(med["dp_new"] / med["plain"], 2),
                     "ratio_old_over_plain": round(med["dp_old"] / med["plain"], 2),
                     "cpu_ratio_new_over_plain": round(cpu["dp_new"] / cpu["plain"], 2)}
    dp_mlp = statistics.median(w for w, _ in runs["mlp"]["dp_new"])
    rel, acc = statistics.median(extra["release"]), statistics.median(extra["accounting"])
    # what the hospital's secret, release key, locked + fsync'ed charge and stored update add to an MLP epoch
    out["release"] = {"release_epoch_s": round(rel, 4), "ratio_release_over_dp_new": round(rel / dp_mlp, 3),
                      "accounting_s": round(acc, 4),
                      "ratio_randomness_and_locking_over_dp_new": round((rel - dp_mlp - acc) / dp_mlp, 3)}
    return out


def utility_table(epsilons: list[float]) -> list[dict[str, float | None]]:
    """Federated AUROC on configs/default.toml at each target epsilon (record-level DP) and without DP."""
    from fedhealth.experiments.simulate import simulate
    from fedhealth.runs import rundir

    rows = []
    for eps in [None, *epsilons]:
        overrides = ["references.non_private_federation=false", "references.local_only=false",
                     "references.pooled=false"]
        if eps is not None:
            overrides += ["privacy.mode=record", f"privacy.target_epsilon={eps}", "privacy.max_epsilon=100"]
        cfg = load_config(ROOT / "configs" / "default.toml", overrides)
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = rundir.create_run_dir(cfg, Path(tmp) / "run")
            start = time.perf_counter()
            summary = simulate(cfg, run_dir)
            seconds = time.perf_counter() - start
        rows.append({"target_epsilon": eps, "delta": cfg.privacy_delta() if eps else None,
                     "mean_hospital_auroc": round(summary["overall"]["mean_hospital_auroc"]["federated"], 4),
                     "all_records_auroc": round(summary["overall"]["auroc"]["federated"], 4),
                     "worst_hospital_auroc": round(min(h["auroc"]["federated"] for h in summary["hospitals"]), 4),
                     "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--utility", action="store_true", help="also run the privacy-utility table")
    parser.add_argument("--epsilons", default="1,3,8")
    args = parser.parse_args()
    before = [round(v, 2) for v in os.getloadavg()]
    result: dict = {"bench": "dp", "epoch": epoch_times(args.repeats)}
    result["epoch"]["load_average_before_after"] = [before, [round(v, 2) for v in os.getloadavg()]]
    if args.utility:
        result["utility"] = utility_table([float(e) for e in args.epsilons.split(",")])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
