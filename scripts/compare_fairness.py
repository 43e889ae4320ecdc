"""Is q-FedAvg fairer than FedAvg on this study? Worst-hospital AUROC, side by side, in one run.

Sibling federations of one study (same seed, hospitals, splits, initial model, rounds, SecAgg+ as
configured) that differ only in the strategy: FedAvg, then q-FedAvg at each q. Each is scored on every
hospital's held-out test set, with the local-only reference computed once. Prints one JSON line with
the figures and the ratios against FedAvg, and writes it to --out.

    python scripts/compare_fairness.py --config configs/default.toml --q 0.5,1,2 --out runs/fairness
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedhealth.data.study_file import load_config
from fedhealth.runs import rundir  # noqa: E402
from fedhealth.study.config import StudyConfig, parse_config  # noqa: E402


def strategy_sibling(cfg: StudyConfig, name: str, q: float | None, learning_rate: float | None) -> StudyConfig:
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["references"] = {"local_only": False, "pooled": False, "non_private_federation": False}
    strategy = {**data["federation"].get("strategy", {}), "name": name}
    if q is not None:
        strategy["q"] = q
    if learning_rate is not None:
        strategy["qffl_learning_rate"] = learning_rate
    data["federation"]["strategy"] = strategy
    data["name"] = f"{cfg.name}-{name}" + ("" if q is None else f"-q{q:g}")
    return parse_config(data, data["name"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/default.toml"))
    parser.add_argument("--q", default="0.5,1,2", help="q values for q-FedAvg, comma-separated")
    parser.add_argument("--qffl-learning-rate", type=float, default=None,
                        help="q-FedAvg's 1/L; default: federation.strategy.qffl_learning_rate of the config")
    parser.add_argument("--rounds", type=int, default=None, help="override federation.rounds")
    parser.add_argument("--out", type=Path, default=Path("runs/fairness"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from fedhealth.data.hospitals import load_hospital
    from fedhealth.experiments.references import federated, local_only
    from fedhealth.experiments.simulate import run_federation
    from fedhealth.experiments.sweep import _scores
    from fedhealth.model.initial import initial_weights

    overrides = [f"federation.rounds={args.rounds}"] if args.rounds else []
    cfg = load_config(args.config, overrides)
    if cfg.privacy.mode != "none":
        parser.error("q-FedAvg runs without DP: use a config with privacy.mode = 'none'")
    args.out.mkdir(parents=True, exist_ok=True)
    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    local = _scores(cfg, splits, local_only(cfg, splits, initial_weights(cfg)))
    runs = [("fedavg", None)] + [("qfedavg", float(q)) for q in args.q.split(",") if q.strip()]
    results = []
    for name, q in runs:
        sibling = strategy_sibling(cfg, name, q, args.qffl_learning_rate)
        run_dir = rundir.create_run_dir(sibling, args.out / sibling.name)
        t0 = time.perf_counter()
        run_federation(sibling, run_dir)
        weights, _ = rundir.load_weights(rundir.checkpoint_path(run_dir, sibling.federation.rounds))
        rundir.mark_completed(run_dir)
        scores = _scores(cfg, splits, federated(cfg, splits, weights))
        worst = min(scores["by_hospital"], key=scores["by_hospital"].get)
        results.append({"strategy": name, "q": q, "worst_hospital": worst,
                        "worst_hospital_auroc": scores["worst_hospital_auroc"],
                        "worst_hospital_gain_over_local": scores["worst_hospital_auroc"] - local["by_hospital"][worst],
                        "mean_hospital_auroc": scores["mean_hospital_auroc"],
                        "all_records_auroc": scores["all_records_auroc"],
                        "spread_auroc": max(scores["by_hospital"].values()) - scores["worst_hospital_auroc"],
                        "by_hospital": scores["by_hospital"], "seconds": time.perf_counter() - t0})
    base = results[0]
    for r in results[1:]:
        r["worst_vs_fedavg"] = r["worst_hospital_auroc"] - base["worst_hospital_auroc"]
        r["mean_vs_fedavg"] = r["mean_hospital_auroc"] - base["mean_hospital_auroc"]
    line = {"bench": "fairness", "study": cfg.name, "rounds": cfg.federation.rounds,
            "secure_aggregation": cfg.federation.secure_aggregation.enabled,
            "qffl_learning_rate": args.qffl_learning_rate or cfg.federation.strategy.qffl_learning_rate,
            "local_only": {"worst_hospital_auroc": local["worst_hospital_auroc"],
                           "mean_hospital_auroc": local["mean_hospital_auroc"], "by_hospital": local["by_hospital"]},
            "runs": results}
    (args.out / "fairness.json").write_text(json.dumps(line, indent=2) + "\n")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
