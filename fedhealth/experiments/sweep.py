"""`fedhealth sweep`: the privacy-utility curve, the federated model's headline figure against epsilon.

The figure is the outcome kind's (AUROC, C-index, macro AUROC or R²; `fedhealth.experiments.headline_scores`),
each with its 95 % interval.

Each epsilon is the same study (same seed, hospitals, splits, model, rounds) with record-level DP at
that target, one federation per value (`inf`: no DP). What does not depend on epsilon is computed
once: the hospitals' data and splits, and the local-only and pooled references, drawn as horizontal
lines. Each sibling keeps its own run directory (ledgers included) under the sweep's directory.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.experiments.headline_scores import display, headline_scores
from fedhealth.runs import rundir
from fedhealth.study.config import StudyConfig, variant, without_privacy

log = logging.getLogger(__name__)
SWEEP_FILE = rundir.SWEEP_FILE


def parse_epsilons(text: str) -> list[float]:
    """`0.5,1,2,inf` -> [0.5, 1.0, 2.0, inf]; ValueError naming the bad item."""
    values = []
    for item in text.split(","):
        item = item.strip().lower()
        try:
            value = math.inf if item in ("inf", "infinity", "none") else float(item)
        except ValueError:
            raise ValueError(f"--epsilon: {item!r} is not a number or 'inf'") from None
        if not value > 0:
            raise ValueError(f"--epsilon: {item!r} must be positive")
        values.append(value)
    if not values:
        raise ValueError("--epsilon: give at least one value, e.g. 1,4,inf")
    return sorted(set(values))


def sibling_config(cfg: StudyConfig, epsilon: float) -> StudyConfig:
    """The study at one epsilon of the sweep (infinity: without DP), with no references of its own."""
    if math.isinf(epsilon):
        return without_privacy(variant(cfg, cfg.name, references=False))
    privacy = {k: v for k, v in cfg.privacy.model_dump(mode="json", exclude_none=True).items()
               if k not in ("noise_multiplier", "target_epsilon")}
    privacy.update({"mode": "record", "target_epsilon": epsilon,
                    "max_epsilon": max(epsilon, float(privacy.get("max_epsilon", 10.0)))})
    return variant(cfg, f"{cfg.name}-eps-{epsilon:g}", {"privacy": privacy}, references=False)


def score(cfg: StudyConfig, splits: list, weights: list[np.ndarray]) -> dict[str, Any]:
    """A global model of `cfg` (or of a sibling of it) scored on every hospital's held-out records."""
    from fedhealth.experiments.references import federated

    return headline_scores(cfg, splits, federated(cfg, splits, weights))


def run_and_score(cfg: StudyConfig, sibling: StudyConfig, run_dir: Path, splits: list) -> dict[str, Any]:
    """One sibling federation run in `run_dir` and scored on `cfg`'s splits, with its seconds."""
    from fedhealth.experiments.simulate import run_sibling

    t0 = time.perf_counter()
    scores = score(cfg, splits, run_sibling(sibling, run_dir))
    return {**scores, "seconds": time.perf_counter() - t0, "run_dir": str(run_dir)}


def run_sweep(cfg: StudyConfig, epsilons: list[float], out: Path,
              audit_references: int = 3) -> dict[str, Any]:
    """`audit_references`: reference models of each sibling's membership-inference audit (0: no audit).

    SIGINT or SIGTERM raises `RunInterrupted` (Ray shut down, the sibling it stopped left `interrupted`); the
    sweep is not continued from there."""
    from fedhealth.experiments.interrupts import stopped_as

    with stopped_as("the sweep", out):
        return _run_sweep(cfg, epsilons, out, audit_references)


def _run_sweep(cfg: StudyConfig, epsilons: list[float], out: Path, audit_references: int) -> dict[str, Any]:
    from fedhealth.data.hospitals import load_hospital
    from fedhealth.experiments.references import local_only, pooled
    from fedhealth.experiments.simulate import shared_ray
    from fedhealth.metrics.headline import headline
    from fedhealth.model.initial import initial_weights

    out.mkdir(parents=True, exist_ok=True)
    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    init = initial_weights(cfg)
    started = time.perf_counter()
    references = {"local_only": headline_scores(cfg, splits, local_only(cfg, splits, init)),
                  "pooled": headline_scores(cfg, splits, pooled(cfg, splits, init))}
    reference_seconds = time.perf_counter() - started
    with shared_ray():  # sibling after sibling on one Ray instance
        points = _run_points(cfg, epsilons, out, splits, audit_references)
    result = {"study": cfg.name, "outcome": cfg.outcome_kind, "metric": headline(cfg.outcome_kind),
              "dp": "record-level DP-SGD at each target epsilon (inf: no DP)",
              "points": points, "references": references, "reference_seconds": reference_seconds,
              "membership_inference": _membership_column(points) if audit_references and not cfg.from_files
              else None}
    rundir.write_json(out / SWEEP_FILE, result)
    from fedhealth.reporting.figures import privacy_utility
    from fedhealth.reporting.report import _save

    _save(privacy_utility(result), out / rundir.PRIVACY_UTILITY_FIGURE)
    return result


def _membership(run_dir: Path, cfg: StudyConfig, references: int) -> dict[str, Any] | None:
    """The sibling's membership-inference audit (privacy_audit.json in its directory), in brief: the calibrated
    attack's AUC over all records with its interval, and the loss attack's. None where it cannot run."""
    if not references or cfg.from_files:  # hospitals' own files: the records are not at hand (privacy_audit)
        return None
    from fedhealth.experiments.privacy_audit import audit_run

    attacks = audit_run(run_dir, references=references, force=True)["overall"]["attacks"]
    calibrated, loss = attacks["calibrated"], attacks["loss"]
    return {"auc": calibrated["auc"], "ci_low": calibrated["ci_low"], "ci_high": calibrated["ci_high"],
            "loss_attack_auc": loss["auc"]}


def _membership_column(points: list[dict[str, Any]]) -> dict[str, Any]:
    return {"attack": "difficulty-calibrated loss attack on the final model, all hospitals' records "
                      "(members: training, non-members: held out); 0.5 = chance",
            "file": "privacy_audit.json in each sibling's directory",
            "by_epsilon": [{"epsilon": p["epsilon"], **p["membership_inference"]} for p in points
                           if p.get("membership_inference")]}


def _run_points(cfg: StudyConfig, epsilons: list[float], out: Path, splits: list,
                audit_references: int = 3) -> list[dict[str, Any]]:
    points = []
    for eps in epsilons:
        sibling = sibling_config(cfg, eps)
        run_dir = out / ("no-dp" if math.isinf(eps) else f"eps-{eps:g}")
        point = {"epsilon": None if math.isinf(eps) else eps, "delta": sibling.privacy_delta()
                 if sibling.privacy.mode == "record" else None, **run_and_score(cfg, sibling, run_dir, splits)}
        point["membership_inference"] = _membership(run_dir, sibling, audit_references)
        points.append(point)
        metric = point["metric"]
        log.warning("epsilon %s: %s %s (all records) in %.0f s", "inf" if math.isinf(eps) else f"{eps:g}",
                    metric, display(point[f"all_records_{metric}"]), point["seconds"])
    return points
