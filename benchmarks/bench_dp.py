"""DP-SGD cost and the privacy-utility table; prints one JSON line.

    .venv/bin/python benchmarks/bench_dp.py               epoch time with and without DP (about 30 s)
    .venv/bin/python benchmarks/bench_dp.py --utility     also federated AUROC at epsilon 1, 3, 8 and without DP
                                                       on configs/default.toml (several minutes per epsilon)

Epoch time: one local epoch of the default MLP on a realistic hospital (the default study's
6,000-record secondary hospital, 4,500 training records), batch 64, measured side by side in this
process: plain SGD (fedhealth.model.training.train), our DP-SGD path (fedhealth.privacy.dp.train_private:
Opacus, expanded-weights per-sample gradients, batched index sampling), the whole private release a
hospital makes (fedhealth.privacy.round.train_with_budget: the same DP-SGD epoch plus the hospital's
secret, the release key, the locked and fsync'ed ledger charge with its RDP accounting, and the stored
update), and Opacus's default path (PrivacyEngine with hook-based per-sample gradients and a
per-record DataLoader), the baseline the issue names. Median of `--repeats` runs each, interleaved.
Same noise, clipping, sampling and so the same guarantee on every DP path.
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
from fedhealth.model.training import train  # noqa: E402
from fedhealth.privacy.dp import train_private  # noqa: E402
from fedhealth.privacy.round import noise_for, schedule_for, train_with_budget  # noqa: E402


def opacus_default_epoch(model, x: np.ndarray, y: np.ndarray, batch_size: int, lr: float, seed: int) -> float:
    """Opacus's textbook path: TensorDataset + DataLoader + PrivacyEngine.make_private (hooks)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    start = time.perf_counter()
    loader = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    module, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for xb, yb in loader:
        optimizer.zero_grad()
        if len(xb):
            loss_fn(module(xb), yb).backward()
        optimizer.step()
    return time.perf_counter() - start


def epoch_times(repeats: int) -> dict[str, float]:
    cfg = load_config(ROOT / "configs" / "default.toml",
                      ["privacy.mode=record", "privacy.noise_multiplier=1.0", "training.local_epochs=1"])
    split = load_hospital(cfg, 2)  # south-county-hospital, 6,000 records
    schedule, sigma = schedule_for(cfg, 2), noise_for(cfg, 2)
    ledgers = Path(tempfile.mkdtemp(prefix="bench-dp-ledger-"))
    x, y = split.x_train, split.y_train
    b, lr = cfg.training.batch_size, cfg.training.learning_rate
    torch.set_num_threads(1)

    def fresh():
        return build_model(cfg.model.name, x.shape[1], cfg.model.hidden, seed=0)

    def release(i: int) -> float:
        """The whole private round: a new release each time (round i), so every one is charged."""
        model = fresh()
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

    runs: dict[str, list[float]] = {"plain": [], "dp": [], "release": [], "accounting": [], "opacus_default": []}
    for i in range(repeats + 1):  # the first pass warms up imports and allocators, not counted
        t_plain = train(fresh(), x, y, epochs=1, batch_size=b, learning_rate=lr, seed=i).seconds
        t_dp = train_private(fresh(), x, y, epochs=1, schedule=schedule, learning_rate=lr, momentum=0.9,
                             noise_multiplier=sigma, max_grad_norm=1.0, noise_seed=i, sampling_seed=i)[0].seconds
        t_release = release(i)
        t_accounting = accounting(i)
        t_default = opacus_default_epoch(fresh(), x, y, b, lr, i)
        if i:
            runs["plain"].append(t_plain)
            runs["dp"].append(t_dp)
            runs["release"].append(t_release)
            runs["accounting"].append(t_accounting)
            runs["opacus_default"].append(t_default)
    shutil.rmtree(ledgers, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"records": int(len(y)), "batch_size": b, "model": f"{cfg.model.name}{cfg.model.hidden}",
            "repeats": repeats, "plain_epoch_s": round(med["plain"], 4), "dp_epoch_s": round(med["dp"], 4),
            "release_epoch_s": round(med["release"], 4),
            "opacus_default_epoch_s": round(med["opacus_default"], 4),
            "ratio_dp_over_plain": round(med["dp"] / med["plain"], 2),
            # what the hospital's secret, release key, locked + fsync'ed charge and stored update add to an epoch
            "ratio_release_over_dp": round(med["release"] / med["dp"], 3),
            "accounting_s": round(med["accounting"], 4),
            # the secret, release key, lock, fsync'ed writes and stored update alone, against a DP epoch
            "ratio_randomness_and_locking_over_dp": round(
                (med["release"] - med["dp"] - med["accounting"]) / med["dp"], 3),
            "ratio_opacus_default_over_plain": round(med["opacus_default"] / med["plain"], 2),
            "speedup_over_opacus_default": round(med["opacus_default"] / med["dp"], 2)}


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--utility", action="store_true", help="also run the privacy-utility table")
    parser.add_argument("--epsilons", default="1,3,8")
    args = parser.parse_args()
    result: dict = {"bench": "dp", "epoch": epoch_times(args.repeats)}
    if args.utility:
        result["utility"] = utility_table([float(e) for e in args.epsilons.split(",")])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
