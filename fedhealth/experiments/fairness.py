"""`fedhealth fairness`: is q-FedAvg fairer than FedAvg on this study? The worst hospital's figure, side by side.

The figure is the outcome kind's headline one (AUROC, C-index, macro AUROC or R²;
`fedhealth.experiments.headline_scores`); keys below write it `<m>`.

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
    from fedhealth.experiments.headline_scores import display, headline_scores
    from fedhealth.experiments.references import local_only
    from fedhealth.experiments.simulate import shared_ray
    from fedhealth.experiments.sweep import run_and_score
    from fedhealth.metrics.headline import headline
    from fedhealth.model.initial import initial_weights

    if cfg.privacy.mode != "none":
        raise ValueError("q-FedAvg runs without DP (its loss terms are not noised): use a config with "
                         "privacy.mode = 'none'")
    m = headline(cfg.outcome_kind)
    out.mkdir(parents=True, exist_ok=True)
    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    local = headline_scores(cfg, splits, local_only(cfg, splits, initial_weights(cfg)))
    results = []
    with shared_ray():
        for name, q in [("fedavg", None)] + [("qfedavg", float(q)) for q in q_values]:
            sibling = strategy_sibling(cfg, name, q, qffl_learning_rate)
            scores = run_and_score(cfg, sibling, out / sibling.name, splits)
            worst = scores["worst_hospital"]
            results.append({"strategy": name, "q": q, "worst_hospital": worst,
                            **{k: scores[k] for k in (f"worst_hospital_{m}", f"worst_hospital_{m}_ci",
                                                      f"mean_hospital_{m}", f"mean_hospital_{m}_ci",
                                                      f"all_records_{m}", f"all_records_{m}_ci")},
                            "worst_hospital_gain_over_local":
                                scores[f"worst_hospital_{m}"] - local["by_hospital"].get(worst, float("nan")),
                            f"spread_{m}": float(np.nanmax(list(scores["by_hospital"].values())))
                                           - scores[f"worst_hospital_{m}"],
                            "by_hospital": scores["by_hospital"], "by_hospital_ci": scores["by_hospital_ci"],
                            "undefined_hospitals": scores["undefined_hospitals"],
                            "seconds": scores["seconds"]})
            log.warning("%s: worst-hospital %s %s (%s)", sibling.name, m, display(scores[f"worst_hospital_{m}"]),
                        worst)
    base = results[0]
    for r in results[1:]:
        r["worst_vs_fedavg"] = r[f"worst_hospital_{m}"] - base[f"worst_hospital_{m}"]
        r["mean_vs_fedavg"] = r[f"mean_hospital_{m}"] - base[f"mean_hospital_{m}"]
    line = {"bench": "fairness", "study": cfg.name, "outcome": cfg.outcome_kind, "metric": m,
            "rounds": cfg.federation.rounds,
            "secure_aggregation": cfg.federation.secure_aggregation.enabled,
            "qffl_learning_rate": qffl_learning_rate or cfg.federation.strategy.qffl_learning_rate,
            "local_only": {k: local[k] for k in (f"worst_hospital_{m}", f"worst_hospital_{m}_ci",
                                                  f"mean_hospital_{m}", f"mean_hospital_{m}_ci", "by_hospital",
                                                  "by_hospital_ci", "undefined_hospitals")},
            "runs": results}
    rundir.write_json(out / FAIRNESS_FILE, line)
    return line
