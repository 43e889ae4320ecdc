"""Equity across hospitals: did the federation help every hospital, and the smallest most?

Health planners measure unequal resources with the Gini coefficient; here it is computed for the
data the federation starts from (record counts), for what it delivers (federated AUROC per
hospital) and for what it adds (the gain over training alone). All figures are read from the
study summary, so they are a pure function of the run directory.

Gini: G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)), 0 when every hospital has the same value, up to
(n - 1) / n when one has everything. It is defined for a positive mean; for gains whose mean is
zero or negative (the federation did not help on average) it is reported as None, since a share
of a non-positive total means nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedhealth.metrics.headline import label


def gini(values: Sequence[float]) -> float | None:
    """The Gini coefficient of `values` (population form), or None if it is undefined."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0 or x.mean() <= 0:
        return None
    diffs = np.abs(x[:, None] - x[None, :]).sum()
    return float(diffs / (2 * len(x) ** 2 * x.mean()))


def _rank(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.arange(len(values), dtype=float)
    for v in np.unique(values):  # average ranks over ties
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation, or None with fewer than three pairs or a constant side."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(_rank(a), _rank(b))[0, 1])


def _defined(v: Any) -> bool:
    """A figure that is a number: None (from summary.json) and NaN (in memory) both mean undefined."""
    return v is not None and bool(np.isfinite(v))


def _group_means(hospitals: list[dict[str, Any]], key: str, metric: str = "auroc") -> dict[str, dict[str, Any]]:
    """Per tier or region: its hospitals and records (all of them), and the mean headline figures (`metric`)
    over those whose figure is defined (`{metric}_hospitals` of them); the gain only where every one has both
    figures."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for h in hospitals:
        groups.setdefault(h[key], []).append(h)
    out = {}
    for name, members in sorted(groups.items()):
        fed = [h[metric]["federated"] for h in members if _defined(h[metric].get("federated"))]
        local = [h[metric].get("local_only") for h in members]
        row: dict[str, Any] = {"hospitals": len(members), "records": int(sum(h["records"] for h in members)),
                               f"{metric}_hospitals": len(fed), "federated": float(np.mean(fed)) if fed else None}
        if fed and len(fed) == len(members) and all(_defined(v) for v in local):
            row["local_only"] = float(np.mean(local))
            row["gain"] = row["federated"] - row["local_only"]
        out[name] = row
    return out


def equity_summary(hospitals: list[dict[str, Any]], metric: str = "auroc") -> dict[str, Any]:
    """Equity figures from the per-hospital rows of `summary.json` (keys as in `build_summary`).

    `metric` is the study's headline figure, read as `h[metric][model]`: "auroc" for a binary study, "c_index"
    for a time-to-event one (`fedhealth.metrics.headline`). The keys that name it follow it
    (`worst_hospital[metric]`, `gini[f"{metric}_federated"]`, `by_tier[...][f"{metric}_hospitals"]`), so a
    binary study's equity figures are exactly as before."""
    rows = [h for h in hospitals if _defined(h[metric].get("federated"))]
    if not rows:
        return {}
    records = [h["records"] for h in hospitals]  # the data the federation starts from: every hospital's
    federated = [h[metric]["federated"] for h in rows]
    # gains need both figures: a hospital whose local-only AUROC is undefined (no local-only model from one
    # class) is left out of every gain figure, and the sentence names it
    local_rows = [h for h in rows if _defined(h[metric].get("local_only"))]
    has_local = bool(local_rows)
    gains = [h[metric]["federated"] - h[metric]["local_only"] for h in local_rows]
    worst = min(rows, key=lambda h: h[metric]["federated"])
    worst_local = worst[metric].get("local_only")
    out: dict[str, Any] = {
        "by_tier": _group_means(hospitals, "tier", metric),
        "by_region": _group_means(hospitals, "region", metric),
        "worst_hospital": {"name": worst["name"], metric: worst[metric]["federated"],
                           "local_only": worst_local,
                           "gain": (worst[metric]["federated"] - worst_local) if worst_local is not None else None},
        "gini": {"records": gini(records), f"{metric}_federated": gini(federated),
                 f"{metric}_local_only": gini([h[metric]["local_only"] for h in local_rows]) if has_local else None,
                 "gain": gini(gains) if has_local else None},
        "gain_by_hospital": [{"name": h["name"], "records": h["records"], "gain": g}
                             for h, g in zip(local_rows, gains, strict=True)],
    }
    left_out = [h["name"] for h in hospitals if h not in local_rows]
    if has_local:
        out["hospitals_that_gained"] = int(sum(g > 0 for g in gains))
        intervals = [h.get("gain") for h in local_rows]
        if all(i is not None for i in intervals):  # summaries written before intervals have none
            out["hospitals_that_gained_beyond_noise"] = int(sum(
                i["distinguishable_from_zero"] and i["estimate"] > 0 for i in intervals))
            out["hospitals_that_lost_beyond_noise"] = int(sum(
                i["distinguishable_from_zero"] and i["estimate"] < 0 for i in intervals))
        out["gain_vs_records_spearman"] = spearman([h["records"] for h in local_rows], gains)
        out["smallest_vs_largest"] = _smallest_vs_largest(local_rows, gains)
        if left_out:
            out["gain_undefined_for"] = left_out
    out["sentence"] = equity_sentence(out, len(local_rows) if has_local else len(rows), label(metric))
    return out


def _smallest_vs_largest(rows: list[dict[str, Any]], gains: list[float]) -> dict[str, Any] | None:
    """Mean gain of the smallest third of hospitals (by records) against the largest third."""
    if len(rows) < 3:
        return None
    order = np.argsort([h["records"] for h in rows], kind="stable")
    third = max(1, len(rows) // 3)
    small, large = order[:third], order[-third:]
    out = {"hospitals_per_group": third,
           "smallest_max_records": int(max(rows[i]["records"] for i in small)),
           "largest_min_records": int(min(rows[i]["records"] for i in large)),
           "smallest_mean_gain": float(np.mean([gains[i] for i in small])),
           "largest_mean_gain": float(np.mean([gains[i] for i in large]))}
    # The difference's 95 % interval, from each hospital's paired gain interval read as a normal one (its
    # half-width over 1.96 as its standard error; the hospitals' test sets are independent). Absent when a
    # hospital of either group has no interval.
    cis = [(rows[i].get("gain") or {}).get("ci") or [None, None] for i in (*small, *large)]
    if all(c[0] is not None for c in cis):
        se = [(c[1] - c[0]) / (2 * 1.959963984540054) for c in cis]
        var = sum(v * v for v in se[:third]) / third ** 2 + sum(v * v for v in se[third:]) / third ** 2
        diff = out["smallest_mean_gain"] - out["largest_mean_gain"]
        half = 1.959963984540054 * float(np.sqrt(var))
        out["difference_ci"] = [diff - half, diff + half]
    return out


def equity_sentence(eq: dict[str, Any], n: int, figure: str = "AUROC") -> str:
    """One plain sentence: did every hospital gain, and did the smallest gain most or least (in `figure`, the
    headline figure's name as a reader sees it)."""
    if "hospitals_that_gained" not in eq:
        return "No local-only reference was trained, so gains over training alone are not known."
    gained = eq["hospitals_that_gained"]
    first = (f"Every one of the {n} hospitals gained over training alone" if gained == n
             else f"{gained} of {n} hospitals gained over training alone")
    if "hospitals_that_gained_beyond_noise" in eq:
        sure, lost = eq["hospitals_that_gained_beyond_noise"], eq["hospitals_that_lost_beyond_noise"]
        unsure = n - sure - lost
        parts = [f"{sure} beyond the test-set noise, with a 95 % interval above zero"]
        if lost:
            parts.append(f"{lost} lost beyond it")
        if unsure:
            parts.append(f"for {unsure} the gain is not distinguishable from zero")
        first += f" ({'; '.join(parts)})"
    if eq.get("gain_undefined_for"):
        names = ", ".join(eq["gain_undefined_for"])
        first += f" (left out, their gain undefined: {names})"
    comp = eq.get("smallest_vs_largest")
    if not comp:
        return first + "."
    small, large = comp["smallest_mean_gain"], comp["largest_mean_gain"]
    verdict = f"the smallest sites gained {'most' if small > large else 'least'}"
    ci = comp.get("difference_ci")
    if ci is not None and ci[0] <= 0.0 <= ci[1]:
        verdict = (f"a difference of {small - large:+.3f} [{ci[0]:+.2f}, {ci[1]:+.2f}], not distinguishable from "
                   "zero on these test sets")
    return (f"{first}; the smallest third (up to {comp['smallest_max_records']:,} records) gained "
            f"{small:+.3f} {figure} on average against {large:+.3f} for the largest third "
            f"(from {comp['largest_min_records']:,} records): {verdict}.")
