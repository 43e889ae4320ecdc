"""The report's figures, each a function of the run's data that returns a Matplotlib figure.

Matplotlib's non-interactive Agg backend: no display, no network, the same PNG on every machine.
Colours follow the hospital's tier everywhere, so a reader learns them once.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedhealth.metrics.headline import label  # noqa: E402

TIER_COLOURS = {"tertiary": "#1f4e79", "secondary": "#2e8b57", "community": "#d9822b"}
MODEL_COLOURS = {"local_only": "#9e9e9e", "federated": "#1565c0", "pooled": "#6a1b9a",
                 "federated_no_dp": "#64b5f6", "best_possible": "#000000"}
MODEL_LABELS = {"local_only": "local-only", "federated": "federated", "pooled": "pooled",
                "federated_no_dp": "federated, no DP", "best_possible": "best possible"}


def risk_groups(groups: list[dict[str, Any]], unit: str) -> Figure:
    """Kaplan-Meier curves of the test records grouped by the federated model's predicted risk (lowest risk
    first): the further apart and the more in order, the better the model separates risk."""
    fig, ax = _figure()
    colours = ["#2e7d32", "#f9a825", "#c62828", "#6a1b9a", "#1565c0"]
    for k, g in enumerate(groups):
        times = np.concatenate([[0.0], np.asarray(g["times"], dtype=float)])
        surv = np.concatenate([[1.0], np.asarray(g["survival"], dtype=float)])
        ax.step(times, surv, where="post", color=colours[k % len(colours)],
                label=f"{g['label']} ({g['records']} records, {g['events']} events)")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("Kaplan-Meier survival")
    ax.set_title("All test records, by the federated model's predicted risk")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _figure(width: float = 8.0, height: float = 4.5) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    ax.grid(True, alpha=0.3)
    return fig, ax


def learning_curves(metrics: list[dict[str, Any]], rounds: list[dict[str, Any]], metric: str = "auroc") -> Figure:
    """Each hospital's headline figure (`metric`: AUROC, or the C-index) of the global model per round."""
    name = label(metric)
    fig, ax = _figure()
    by_hospital: dict[str, list[tuple[int, float, str]]] = {}
    for row in metrics:
        if row.get(metric) is not None:
            by_hospital.setdefault(row["hospital"], []).append((row["round"], row[metric], row["tier"]))
    many = len(by_hospital) > 20
    for points in by_hospital.values():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], color=TIER_COLOURS.get(points[0][2], "grey"),
                alpha=0.25 if many else 0.6, linewidth=0.8 if many else 1.2)
    mean = [(r["round"], r[f"{metric}_mean"]) for r in rounds if r.get(f"{metric}_mean") is not None]
    if mean:
        ax.plot([m[0] for m in mean], [m[1] for m in mean], color="black", linewidth=2.5, label="mean of hospitals")
    failed = [r["round"] for r in rounds if r.get("status") == "failed"]
    for r in failed:
        ax.axvline(r, color="#c62828", linestyle=":", linewidth=1)
    for tier, colour in TIER_COLOURS.items():
        ax.plot([], [], color=colour, label=tier)
    if failed:
        ax.plot([], [], color="#c62828", linestyle=":", label="failed round")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"test {name}")
    ax.set_title(f"Learning curves: {name} of the global model at each hospital")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def final_comparison(hospitals: list[dict[str, Any]], keys: list[str], metric: str = "auroc") -> Figure:
    name = label(metric)
    rows = sorted(hospitals, key=lambda h: h["records"])
    fig, ax = _figure(8.0, max(3.0, 0.32 * len(rows) + 1.2))
    y = np.arange(len(rows))
    models = [k for k in keys if k != "best_possible"]
    for key in keys:
        values = [h[metric].get(key) for h in rows]
        marker = "|" if key == "best_possible" else "o"
        # models drawn side by side in each hospital's row, each with its 95 % interval as a horizontal bar
        dy = (models.index(key) - (len(models) - 1) / 2) * 0.18 if key in models else 0.0
        x = np.array([v if v is not None else np.nan for v in values], dtype=float)
        ax.scatter(x, y + dy, color=MODEL_COLOURS.get(key, "grey"), marker=marker,
                   s=60 if key == "best_possible" else 28, label=MODEL_LABELS.get(key, key), zorder=3)
        cis = [h.get(f"{metric}_ci", {}).get(key) for h in rows]
        if any(ci and ci[0] is not None for ci in cis):
            low = np.array([ci[0] if ci and ci[0] is not None else np.nan for ci in cis], dtype=float)
            high = np.array([ci[1] if ci and ci[1] is not None else np.nan for ci in cis], dtype=float)
            ax.errorbar(x, y + dy, xerr=np.clip(np.vstack([x - low, high - x]), 0, None), fmt="none",
                        ecolor=MODEL_COLOURS.get(key, "grey"), elinewidth=1, alpha=0.6, zorder=2)
    for i, h in enumerate(rows):
        lo, fed = h[metric].get("local_only"), h[metric].get("federated")
        if lo is not None and fed is not None:
            ax.annotate("", xy=(fed, i), xytext=(lo, i),
                        arrowprops={"arrowstyle": "->", "color": "#1565c0" if fed >= lo else "#c62828", "lw": 1})
    ax.set_yticks(y, [f"{h['name']} ({h['records']:,})" for h in rows], fontsize=7 if len(rows) > 20 else 8)
    ax.set_xlabel(f"test {name} (bars: 95 % {'DeLong' if metric == 'auroc' else 'bootstrap'} interval)")
    ax.set_title("Per hospital, smallest at the bottom: training alone → federated" if "local_only" in keys
                 else "Per hospital, smallest at the bottom")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def calibration(calib: dict[str, Any]) -> Figure:
    fig, ax = _figure(5.5, 5.0)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for key, entry in calib.items():
        bins = entry["bins"]
        if not bins or entry.get("ece") is None:
            continue
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                color=MODEL_COLOURS.get(key, "grey"), label=f"{MODEL_LABELS.get(key, key)} (ECE {entry['ece']:.3f})")
    ax.set_xlabel("mean predicted risk")
    ax.set_ylabel("observed outcome rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Calibration on all test records")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def privacy(epsilon_by_hospital: dict[str, list[tuple[int, float]]], caps: dict[str, float],
            tiers: dict[str, str]) -> Figure:
    fig, ax = _figure()
    for name, points in epsilon_by_hospital.items():
        colour = TIER_COLOURS.get(tiers.get(name, ""), "grey")
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", color=colour, alpha=0.7)
    for cap in sorted(set(caps.values())):
        ax.axhline(cap, color="#c62828", linestyle="--", linewidth=1)
        ax.annotate(f"cap {cap:g}", xy=(1, cap), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=8, color="#c62828")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cumulative ε")
    ax.set_title("Privacy spent per hospital (ε at the study's δ) against its cap")
    return fig


def secure_aggregation(rounds: list[dict[str, Any]], n_hospitals: int) -> Figure:
    fig, ax = _figure(8.0, 3.5)
    numbers = [r["round"] for r in rounds]
    aggregated = [len(r.get("hospitals_aggregated", [])) for r in rounds]
    colours = ["#c62828" if r.get("status") == "failed" else "#1565c0" for r in rounds]
    ax.bar(numbers, aggregated, color=colours)
    ax.axhline(n_hospitals, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("round (red: failed, model unchanged)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("hospitals aggregated")
    ax.set_ylim(0, n_hospitals * 1.1 + 0.5)
    ax.set_title("Hospitals in each round's aggregate")
    return fig


def equity(hospitals: list[dict[str, Any]], metric: str = "auroc") -> Figure:
    name = label(metric)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    drawn = 0
    for h in hospitals:
        lo, fed = h[metric].get("local_only"), h[metric]["federated"]
        if lo is None or fed is None or not np.isfinite(lo - fed):  # undefined at this hospital: no point
            continue
        left.scatter(h["records"], fed - lo, color=TIER_COLOURS.get(h["tier"], "grey"), s=22)
        drawn += 1
    left.axhline(0, color="grey", linewidth=1)
    if drawn:
        left.set_xscale("log")
    else:
        left.text(0.5, 0.5, f"no hospital has both {name}s", ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("records at the hospital (log scale)")
    left.set_ylabel(f"{name} gain over training alone")
    left.set_title("Who gains from the federation?")
    for tier, colour in TIER_COLOURS.items():
        left.scatter([], [], color=colour, label=tier)
    left.legend(fontsize=8)
    tiers = [t for t in TIER_COLOURS if any(h["tier"] == t for h in hospitals)]
    x = np.arange(len(tiers))
    for offset, key in ((-0.2, "local_only"), (0.2, "federated")):
        means = []
        for t in tiers:
            vals = [h[metric].get(key) for h in hospitals if h["tier"] == t]
            vals = [v for v in vals if v is not None and np.isfinite(v)]
            means.append(np.mean(vals) if vals else np.nan)
        right.bar(x + offset, means, width=0.4, color=MODEL_COLOURS[key], label=MODEL_LABELS[key])
    right.set_xticks(x, tiers)
    lows = [v for h in hospitals for v in (h[metric].get("local_only"), h[metric]["federated"])
            if v is not None and np.isfinite(v)]
    right.set_ylim(max(0.0, min(lows, default=0.5) - 0.05), 1.0)
    right.set_ylabel(f"mean test {name}")
    right.set_title("By tier")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def contribution(result: dict[str, Any]) -> Figure:
    rows = sorted(result["hospitals"], key=lambda h: h["shapley"])
    fig, ax = _figure(8.0, max(3.0, 0.32 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [h["shapley"] for h in rows], height=0.4, xerr=[h["shapley_stderr"] for h in rows],
            color=[TIER_COLOURS.get(h["tier"], "grey") for h in rows], label="Shapley (± s.e.)")
    ax.barh(y + 0.2, [h["leave_one_out"] for h in rows], height=0.4, color="#bdbdbd", label="leave-one-out")
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(y, [f"{h['name']} ({h['records']:,})" for h in rows], fontsize=8)
    ax.set_xlabel(f"contribution to the federated {label(result.get('metric', 'auroc'))} on all test records")
    ax.set_title(f"Who carried the model ({result['method']}, {result['federations_run']} federations)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def privacy_utility(result: dict[str, Any]) -> Figure:
    """The federated model's headline figure (AUROC, C-index, macro AUROC or R²) against epsilon (log scale;
    no DP drawn at the right as ∞), overall and per tier."""
    points = result["points"]
    m = result.get("metric", "auroc")
    finite = [p["epsilon"] for p in points if p["epsilon"] is not None]
    inf_x = (max(finite) * 4) if finite else 1.0
    xs = [p["epsilon"] if p["epsilon"] is not None else inf_x for p in points]
    fig, ax = _figure()
    overall = np.array([np.nan if p[f"all_records_{m}"] is None else p[f"all_records_{m}"] for p in points])
    cis = [p.get(f"all_records_{m}_ci") or [None, None] for p in points]
    low = np.array([np.nan if c[0] is None else c[0] for c in cis])
    high = np.array([np.nan if c[1] is None else c[1] for c in cis])
    ax.errorbar(xs, overall, yerr=np.vstack([overall - low, high - overall]), marker="o", color="black",
                linewidth=2, capsize=3, label="federated, all test records (95 % interval)")
    tiers = sorted({t for p in points for t in p["by_tier"]})
    for tier in tiers:
        ax.plot(xs, [p["by_tier"].get(tier) for p in points], marker=".", linestyle="--",
                color=TIER_COLOURS.get(tier, "grey"), label=f"federated, {tier} (mean of hospitals)")
    for key, style in (("local_only", ":"), ("pooled", "-.")):
        ref = result["references"].get(key)
        if ref:
            ax.axhline(ref[f"all_records_{m}"], color=MODEL_COLOURS[key], linestyle=style,
                       label=f"{MODEL_LABELS[key]}, all test records")
    ax.set_xscale("log")
    ticks = sorted(set(xs))
    ax.set_xticks(ticks, [("∞" if x == inf_x and None in [p["epsilon"] for p in points] else f"{x:g}") for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel("target ε per hospital (record-level DP; ∞ = no DP)")
    ax.set_ylabel(f"test {label(m)}")
    ax.set_title("What privacy costs")
    ax.legend(loc="lower right", fontsize=7)
    return fig


def cohort_kaplan_meier(groups: list[dict[str, Any]], label: str) -> Figure:
    """A cohort description's Kaplan-Meier curves (`description.json`'s groups, each with its curve rows):
    every group's survival with its 95 % band (sampling and noise), the numbers at risk of all hospitals
    under the plot, and the title saying what the figure cost (`label`)."""
    curves = [g for g in groups if g.get("kaplan_meier")]
    fig, (ax, table) = plt.subplots(2, 1, figsize=(7.5, 5.5), gridspec_kw={"height_ratios": [5, 1]})
    for i, g in enumerate(curves):
        rows = g["kaplan_meier"]
        times = np.array([0.0] + [r["time"] for r in rows])
        survival = np.array([1.0] + [r["survival"] for r in rows])
        half = 1.96 * np.array([0.0] + [r["se"] for r in rows])
        name = g["group"]
        test = g.get("logrank_against_rest")
        if test is not None:  # the test reads the noised counts as data: with noise it does not cover it
            name += (f" (log-rank against the rest p = {test['p_value']:.2g}"
                     + (", noise not accounted for)" if not label.startswith("exact") else ")"))
        line, = ax.step(times, survival, where="post", lw=2.0 if i == 0 else 1.0, label=name)
        ax.fill_between(times, np.clip(survival - half, 0, 1), np.clip(survival + half, 0, 1), step="post",
                        color=line.get_color(), alpha=0.2 if i == 0 else 0.1,
                        label="95 % bands (sampling and noise)" if i == 0 else None)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("survival")
    ax.set_title(f"Kaplan-Meier, {label}", fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    table.axis("off")
    if curves:
        rows = curves[0]["kaplan_meier"]
        starts = [0.0] + [r["time"] for r in rows[:-1]]
        gap, last = 0.07 * float(rows[-1]["time"]), -np.inf  # labels closer than this would overlap: skip them
        for t, r in zip(starts, rows, strict=True):
            if t - last >= gap:
                table.text(t, 0.5, f"{r['at_risk']:.0f}", ha="center", fontsize=7, transform=table.transData)
                last = t
        table.set_title(f"number at risk, {curves[0]['group']}", fontsize=8)
    table.set_xlim(ax.get_xlim())
    table.set_ylim(0, 1)
    fig.tight_layout()
    return fig
