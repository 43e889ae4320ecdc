"""`fedhealth fairness`: is q-FedAvg fairer than FedAvg on this study? Worst-hospital AUROC, side by side.

Sibling federations of one study (same seed, hospitals, splits, initial model, rounds, SecAgg+ as
configured) that differ only in the strategy: FedAvg, then q-FedAvg at each q; each is run and scored
the way `sweep` runs and scores its epsilons (`sweep.run_and_score`), with the local-only reference
computed once. Writes `fairness.json` (one JSON object with the figures and the differences against
FedAvg) into the output directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.runs import rundir
from fedhealth.study.config import StudyConfig, variant

log = logging.getLogger(__name__)
FAIRNESS_FILE = rundir.FAIRNESS_FILE


def strategy_sibling(cfg: StudyConfig, name: str, q: float | None, learning_rate: float | None) -> StudyConfig:
    """The study with another aggregation strategy (and no references of its own)."""
    changes: dict[str, Any] = {"federation.strategy.name": name}
    if q is not None:
        changes["federation.strategy.q"] = q
    if learning_rate is not None:
        changes["federation.strategy.qffl_learning_rate"] = learning_rate
    return variant(cfg, f"{cfg.name}-{name}" + ("" if q is None else f"-q{q:g}"), changes, references=False)


def compare_strategies(cfg: StudyConfig, q_values: list[float], out: Path,
                       qffl_learning_rate: float | None = None) -> dict[str, Any]:
    """FedAvg and q-FedAvg at each q, run one after the other on one Ray instance; returns what it writes."""
    from fedhealth.data.hospitals import load_hospital
    from fedhealth.experiments.references import local_only
    from fedhealth.experiments.simulate import shared_ray
    from fedhealth.experiments.sweep import _scores, binary_only, run_and_score
    from fedhealth.model.initial import initial_weights

    binary_only(cfg, "fedhealth fairness")
    if cfg.privacy.mode != "none":
        raise ValueError("q-FedAvg runs without DP (its loss terms are not noised): use a config with "
                         "privacy.mode = 'none'")
    out.mkdir(parents=True, exist_ok=True)
    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    local = _scores(cfg, splits, local_only(cfg, splits, initial_weights(cfg)))
    results = []
    with shared_ray():
        for name, q in [("fedavg", None)] + [("qfedavg", float(q)) for q in q_values]:
            sibling = strategy_sibling(cfg, name, q, qffl_learning_rate)
            scores = run_and_score(cfg, sibling, out / sibling.name, splits)
            worst = scores["worst_hospital"]
            results.append({"strategy": name, "q": q, "worst_hospital": worst,
                            "worst_hospital_auroc": scores["worst_hospital_auroc"],
                            "worst_hospital_auroc_ci": scores["worst_hospital_auroc_ci"],
                            "mean_hospital_auroc_ci": scores["mean_hospital_auroc_ci"],
                            "all_records_auroc_ci": scores["all_records_auroc_ci"],
                            "worst_hospital_gain_over_local":
                                scores["worst_hospital_auroc"] - local["by_hospital"].get(worst, float("nan")),
                            "mean_hospital_auroc": scores["mean_hospital_auroc"],
                            "all_records_auroc": scores["all_records_auroc"],
                            "spread_auroc": float(np.nanmax(list(scores["by_hospital"].values())))
                                            - scores["worst_hospital_auroc"],
                            "by_hospital": scores["by_hospital"], "by_hospital_ci": scores["by_hospital_ci"],
                            "undefined_hospitals": scores["undefined_hospitals"],
                            "seconds": scores["seconds"]})
            log.warning("%s: worst-hospital AUROC %.4f (%s)", sibling.name, scores["worst_hospital_auroc"], worst)
    base = results[0]
    for r in results[1:]:
        r["worst_vs_fedavg"] = r["worst_hospital_auroc"] - base["worst_hospital_auroc"]
        r["mean_vs_fedavg"] = r["mean_hospital_auroc"] - base["mean_hospital_auroc"]
    line = {"bench": "fairness", "study": cfg.name, "rounds": cfg.federation.rounds,
            "secure_aggregation": cfg.federation.secure_aggregation.enabled,
            "qffl_learning_rate": qffl_learning_rate or cfg.federation.strategy.qffl_learning_rate,
            "local_only": {k: local[k] for k in ("worst_hospital_auroc", "worst_hospital_auroc_ci",
                                                  "mean_hospital_auroc", "mean_hospital_auroc_ci", "by_hospital",
                                                  "by_hospital_ci", "undefined_hospitals")},
            "runs": results}
    rundir.write_json(out / FAIRNESS_FILE, line)
    return line
