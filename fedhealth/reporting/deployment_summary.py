"""The study summary of a run whose server held no records: a deployment (`flwr run ... references=false`).

Why a summary of its own: a simulation's summary (`fedhealth.experiments.summary.build_summary`) scores the
final model on every hospital's test records and trains local-only and pooled references on them; the
operator of a deployment has none of those records. What the server does have is what each hospital
reported about the final model on its own test records (`metrics.jsonl`, the last round), and the epsilon
each hospital said it had spent. From those this writes the same `summary.json` keys, so `fedhealth report`
renders the same page, minus what cannot be computed without the records: the references (local-only,
pooled, best possible), AUROC and calibration on all test records pooled. Brier score and accuracy on all
test records *are* exact: both are means over records, so the test-size-weighted mean of the hospitals'
figures is the pooled figure. `summary["deployment"]` says what was left out and where the figures came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.metrics.equity import equity_summary
from fedhealth.metrics.headline import EVALUATION_KEYS, headline
from fedhealth.runs import rundir
from fedhealth.study.config import StudyConfig

NOT_COMPUTED = ["local_only", "pooled", "best_possible", "overall.auroc", "calibration"]  # overall.c_index too


def is_recordless(run_dir: Path) -> bool:
    """A completed run without `summary.json`: the server finished the study but could not score it itself
    (a deployment, or a `flwr run` with references=false); its summary comes from what hospitals reported."""
    return (not (run_dir / rundir.SUMMARY_FILE).exists() and (run_dir / rundir.METRICS_FILE).is_file()
            and rundir.read_state(run_dir).get("status") == "completed")


def _weighted(rows: list[dict[str, Any]], key: str) -> float | None:
    pairs = [(r[key], r["n"]) for r in rows if r.get(key) is not None and r.get("n")]
    if not pairs:
        return None
    values, weights = zip(*pairs, strict=True)
    return float(np.average(values, weights=weights))


def _kind_keys(cfg: StudyConfig) -> dict[str, Any]:
    """What a non-binary summary says of its outcome beside its figures, as the simulated summaries do."""
    kind = cfg.outcome_kind
    out: dict[str, Any] = {"outcome": kind, "headline": headline(kind)}
    if kind == "time_to_event":
        spec = cfg.time_spec
        out["time"] = {"unit": spec.unit, "intervals": list(spec.intervals), "horizons": list(spec.horizons)}
    elif kind == "multiclass":
        out["classes"] = list(cfg.class_names)
    elif kind == "continuous":
        spec = cfg.value_spec
        out["value"] = {"unit": spec.unit, "min": spec.min, "max": spec.max}
    return out


def deployment_summary(cfg: StudyConfig, run_dir: Path) -> dict[str, Any]:
    """`summary.json` for a recordless run, from `metrics.jsonl` and `rounds.jsonl` alone (keys as in
    `fedhealth.experiments.summary`)."""
    metrics = rundir.read_jsonl(run_dir / rundir.METRICS_FILE)
    last = max((r["round"] for r in metrics), default=0)
    final = {r["hospital_index"]: r for r in metrics if r["round"] == last}
    kind = cfg.outcome_kind
    top = headline(kind)
    keys = EVALUATION_KEYS[kind]
    hospitals = []
    for i, h in enumerate(cfg.hospitals):
        row = final.get(i, {})
        hospitals.append({
            "name": h.name, "index": i, "tier": h.tier, "region": h.region, "records": h.records,
            "n_train": None, "n_test": row.get("n"), "prevalence": None,
            **{key: {"federated": row.get(key)} for key in keys},
        })
        if row.get("n") and row.get(top) is None:  # it evaluated, yet its headline figure is undefined
            hospitals[-1]["undefined"] = {top: {
                "auroc": "the hospital reported no AUROC: its test side holds one class (AUROC and AUPRC need both)",
                "c_index": "the hospital reported no C-index: its test side holds no event",
                "macro_auroc": "the hospital reported no macro AUROC: its test side holds one class",
                "r2": "the hospital reported no R²: its test values are all the same",
            }[top]}
    reported = [r for r in final.values() if r.get("n")]
    aurocs = np.array([h[top]["federated"] for h in hospitals if h[top]["federated"] is not None], float)
    overall = {top: {"federated": None},
               f"mean_hospital_{top}": {"federated": float(np.mean(aurocs)) if aurocs.size else None},
               **{key: {"federated": _weighted(reported, key)} for key in keys if key != top},
               "n_test": int(sum(r["n"] for r in reported))}
    summary: dict[str, Any] = {
        "study": cfg.name, "seed": cfg.seed, "strategy": cfg.federation.strategy.name, "model": cfg.model.name,
        "rounds": cfg.federation.rounds, "overall": overall, "hospitals": hospitals, "calibration": {},
        "equity": equity_summary(hospitals, metric=top),
        **(_kind_keys(cfg) if kind != "binary" else {}),
        "deployment": {
            "source": f"each hospital's evaluation of the final model (round {last}) on its own test records, as "
                      f"it reported it in {rundir.METRICS_FILE}",
            "not_computed": NOT_COMPUTED,
            "why": "the server holds no patient record: references, pooled AUROC and calibration need them",
        },
    }
    if cfg.privacy.mode == "record":
        summary["privacy"] = _reported_privacy(cfg, run_dir, metrics)
    return summary


def _reported_privacy(cfg: StudyConfig, run_dir: Path, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Epsilon per hospital as each reported it with its evaluation; the ledgers themselves stay at the hospitals
    (`fedhealth audit verify` checks a hospital's trail there). The cap shown is the study's: a hospital's own
    site policy may set a lower one."""
    declined: dict[int, dict[str, Any]] = {}
    for row in rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE):
        for d in row.get("declined", []):
            declined.setdefault(d["hospital_index"], {"round": row["round"], "reason": d["reason"]})
    hospitals = []
    for i, h in enumerate(cfg.hospitals):
        rows = [r for r in metrics if r["hospital_index"] == i]
        spent = [r["epsilon"] for r in rows if r.get("epsilon") is not None]
        stop = declined.get(i)
        hospitals.append({"name": h.name, "epsilon": spent[-1] if spent else 0.0, "cap": cfg.epsilon_cap(i),
                          "rounds_trained": sorted({r["round"] for r in rows if r.get("trained")}),
                          "stopped_at_round": stop["round"] if stop else None,
                          "stop_reason": stop["reason"] if stop else None})
    return {"mode": "record", "unit": "one patient record at one hospital", "accountant": "rdp",
            "delta": cfg.privacy_delta(), "max_grad_norm": cfg.privacy.max_grad_norm, "hospitals": hospitals,
            "source": "as each hospital reported it; its ledger stays at the hospital"}
