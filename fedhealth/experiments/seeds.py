"""The same study under several seeds: how much its figures move from one run to the next.

A run's intervals (`fedhealth.metrics.intervals`) cover the finite test sets only. The seed also decides the
generated records (synthetic studies), the train/test splits, the initial model, the order of local
training and the DP noise, so a second seed is a second study of the same design. `seed_summary` reduces
the `summary.json` of each seed's run to mean ± standard deviation (ddof 1) per figure, hospital by
hospital and overall, and counts in how many runs each hospital's gain over local-only was distinguishable
from zero.

Keys of the result (`seeds.json`):

    seeds                                   the seeds, in run order; runs: their run directories
    headline                                the figure the runs are compared on: auroc, or c_index for a
                                            time-to-event study (below, "auroc" stands for it)
    overall[figure][model]                  {"mean", "sd", "values", "defined_in"} for figure in auroc,
                                            mean_hospital_auroc (mean and sd over the runs where it is defined)
    overall["gain"], overall["mean_hospital_gain"]   {"mean", "sd", "values", "distinguishable_in"}
    hospitals[i]                            {"name", "auroc": {model: {...}}, "gain": {...}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ORDER = ("local_only", "federated", "federated_no_dp", "pooled", "best_possible")  # as the run's own table


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    shown = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return {"mean": float(shown.mean()) if len(shown) else None,
            "sd": float(shown.std(ddof=1)) if len(shown) > 1 else None,
            "values": [None if v is None or not np.isfinite(v) else float(v) for v in values],
            "defined_in": len(shown)}  # runs whose figure is defined (a one-class side leaves it undefined)


def _gains(gains: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    out = _spread([g["estimate"] if g else None for g in gains])
    out["distinguishable_in"] = int(sum(bool(g and g["distinguishable_from_zero"]) for g in gains))
    return out


def seed_summary(seeds: Sequence[int], summaries: Sequence[dict[str, Any]], runs: Sequence[str]) -> dict[str, Any]:
    """Mean ± sd of each figure over the runs of one study under `seeds` (their `summary.json`, in order)."""
    if len(seeds) != len(summaries) or len(summaries) < 2:
        raise ValueError(f"need one summary per seed and at least 2 seeds, got {len(seeds)} seeds and "
                         f"{len(summaries)} summaries")
    names = [h["name"] for h in summaries[0]["hospitals"]]
    for seed, s in zip(seeds, summaries, strict=True):
        if [h["name"] for h in s["hospitals"]] != names:
            raise ValueError(f"the run with seed {seed} has other hospitals than the first: not one study")
    top = summaries[0].get("headline", "auroc")  # AUROC, or the C-index of a time-to-event study
    present = [k for k in summaries[0]["overall"][top] if all(k in s["overall"][top] for s in summaries)]
    models = sorted(present, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), present.index(k)))
    overall: dict[str, Any] = {figure: {k: _spread([s["overall"][figure].get(k) for s in summaries]) for k in models}
                               for figure in (top, f"mean_hospital_{top}")}
    hospitals = []
    for i, name in enumerate(names):
        rows = [s["hospitals"][i] for s in summaries]
        row: dict[str, Any] = {"name": name, top: {k: _spread([r[top].get(k) for r in rows]) for k in models}}
        if all(r.get("gain") for r in rows):
            row["gain"] = _gains([r["gain"] for r in rows])
        hospitals.append(row)
    for key in ("gain", "mean_hospital_gain"):
        if all(key in s["overall"] for s in summaries):
            overall[key] = _gains([s["overall"][key] for s in summaries])
    return {"study": summaries[0]["study"], "seeds": list(seeds), "runs": list(runs), "models": models,
            "headline": top, "overall": overall, "hospitals": hospitals}
