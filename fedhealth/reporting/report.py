"""`fedhealth report RUN_DIR`: the study report, built from the run directory's files alone.

One HTML page with every figure inlined (base64 PNG), no script, font or stylesheet from anywhere:
it opens offline on a hospital laptop and can be mailed as one file. Each figure is also written as
a PNG under `figures/` for papers and slides. Numbers in the page are read from `summary.json`,
`metrics.jsonl`, `rounds.jsonl`, `secure_aggregation.json` and, when the run was audited,
`privacy_audit.json`, never recomputed differently. A deployment's run directory has no `summary.json` (its
server holds no records); the report writes one from what the hospitals reported
(`fedhealth.reporting.deployment_summary`) and says what it could not compute.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from fedhealth.data.study_file import load_config
from fedhealth.durable import regular_file_problem
from fedhealth.errors import RunDirectoryError
from fedhealth.reporting.deployment_summary import deployment_summary, is_recordless
from fedhealth.runs import rundir

REPORT_FILE = rundir.REPORT_FILE
FIGURES_DIR = "figures"
MODEL_ORDER = ("local_only", "federated", "federated_no_dp", "pooled", "best_possible")


class ReportError(RunDirectoryError, RuntimeError):
    """The run directory cannot be reported on (missing files, not finished); the message says which."""


def _load(run_dir: Path) -> dict[str, Any]:
    needed = [rundir.CONFIG_FILE, rundir.SUMMARY_FILE, rundir.METRICS_FILE, rundir.ROUNDS_FILE]
    for name in needed:  # a FIFO or a device where a file belongs is named as what it is, never opened
        problem = regular_file_problem(run_dir / name)
        if problem:
            raise rundir.damaged(run_dir / name, problem)
    if (run_dir / rundir.CONFIG_FILE).is_file() and is_recordless(run_dir):
        # a deployment's server holds no records: its summary comes from what the hospitals reported
        rundir.write_json(run_dir / rundir.SUMMARY_FILE,
                          deployment_summary(load_config(run_dir / rundir.CONFIG_FILE), run_dir))
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise ReportError(f"{run_dir}: not a finished run directory (missing {', '.join(missing)}); "
                          "a report needs a run that completed (`fedhealth simulate`, or a deployment study "
                          "whose state.json says completed: see `fedhealth status`)")
    secagg = run_dir / rundir.SECAGG_FILE
    contribution = run_dir / rundir.CONTRIBUTION_FILE
    description = run_dir / rundir.DESCRIPTION_FILE

    membership = run_dir / rundir.PRIVACY_AUDIT_FILE
    summary = rundir.read_json_object(run_dir / rundir.SUMMARY_FILE)
    summary["privacy"] = _as_hospitals_accept(run_dir, summary.get("privacy"))
    if summary["privacy"] is None:
        del summary["privacy"]
    return {
        "membership": rundir.read_json(membership) if membership.is_file() else None,
        "contribution": rundir.read_json(contribution) if contribution.is_file() else None,
        "description": rundir.read_json_object(description) if description.is_file() else None,
        "cfg": load_config(run_dir / rundir.CONFIG_FILE),
        "summary": summary,
        "metrics": rundir.read_jsonl(run_dir / rundir.METRICS_FILE),
        "rounds": rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE),
        "secagg": rundir.read_json(secagg) if secagg.is_file() else None,
    }


def _as_hospitals_accept(run_dir: Path, privacy: dict[str, Any] | None) -> dict[str, Any] | None:
    """The summary's record-level privacy rows, each hospital's ledger verified again now: a ledger altered
    after the summary was written is reported as the hospital would treat it (refused, no epsilon)."""
    from fedhealth.privacy.ledger import ledger_standing

    if not privacy or privacy.get("mode") != "record":
        return privacy
    rows = []
    for h in privacy.get("hospitals", []):
        path = rundir.hospital_file(run_dir, rundir.PRIVACY_DIR, h["name"], ".json")
        standing = ledger_standing(path, h["name"], privacy["delta"])
        if standing.status in ("refused", "unreadable") and h.get("epsilon") is not None:
            h = {**h, "epsilon": None, "ledger": standing.status, "ledger_problem": standing.problem}
        rows.append(h)
    return {**privacy, "hospitals": rows}


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    data = buffer.getvalue()
    path.write_bytes(data)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _epsilon_series(data: dict[str, Any]) -> tuple[dict[str, list[tuple[int, float]]], dict[str, float]]:
    cfg, summary = data["cfg"], data["summary"]
    series: dict[str, list[tuple[int, float]]] = {}
    if cfg.privacy.mode == "record":
        for row in data["metrics"]:
            if row.get("epsilon") is not None:
                series.setdefault(row["hospital"], []).append((row["round"], row["epsilon"]))
        caps = {h["name"]: h["cap"] for h in summary.get("privacy", {}).get("hospitals", [])}
    elif cfg.privacy.mode == "hospital":
        points = [(r["round"], r["hospital_epsilon"]) for r in data["rounds"] if r.get("hospital_epsilon") is not None]
        series = {"every hospital": points}
        caps = {}
    else:
        caps = {}
    return {k: sorted(v) for k, v in series.items()}, caps


def figures_for(data: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """The figures this run's report holds, each a function that draws it: a figure is drawn only from
    what the run directory has (no privacy figure without DP, no equity figure without local-only
    references, no contribution figure before `fedhealth contribution`), so the page never shows an
    empty chart. Kept apart from the drawing so what the page shows can be checked without drawing."""
    from fedhealth.reporting import figures

    summary = data["summary"]
    hospitals = summary["hospitals"]
    keys = model_keys(summary)
    top = summary.get("headline", "auroc")
    plan: dict[str, Callable[[], Any]] = {
        "learning_curves": lambda: figures.learning_curves(data["metrics"], data["rounds"], top),
        "final_comparison": lambda: figures.final_comparison(hospitals, keys, top),
    }
    if summary["overall"].get("risk_groups"):
        plan["risk_groups"] = lambda: figures.risk_groups(summary["overall"]["risk_groups"], summary["time"]["unit"])
    if summary.get("calibration"):
        plan["calibration"] = lambda: figures.calibration(summary["calibration"])
    epsilon, caps = _epsilon_series(data)
    if epsilon:
        tiers = {h["name"]: h["tier"] for h in hospitals}
        plan["privacy"] = lambda: figures.privacy(epsilon, caps, tiers)
    plan["secure_aggregation"] = lambda: figures.secure_aggregation(data["rounds"], len(hospitals))
    if summary.get("equity", {}).get("gain_by_hospital"):
        plan["equity"] = lambda: figures.equity(hospitals, top)
    if data["contribution"]:
        plan["contribution"] = lambda: figures.contribution(data["contribution"])
    description = data.get("description")
    if description and any(g.get("kaplan_meier") for g in description.get("groups", [])):
        plan["cohort_kaplan_meier"] = lambda: figures.cohort_kaplan_meier(description["groups"],
                                                                          str(description.get("privacy", "")))
    return plan


def model_keys(summary: dict[str, Any]) -> list[str]:
    """The models this run's summary scored (federated always; the references only where they were trained)."""
    return [k for k in MODEL_ORDER if k in summary["overall"][summary.get("headline", "auroc")]]


def gain_text(gain: dict[str, Any] | None) -> str:
    """+0.028 [-0.01, +0.07]: a gain over local-only with its paired interval; * when it excludes zero."""
    if not gain or gain.get("estimate") is None:
        return "–"
    low, high = gain["ci"]
    return f"{gain['estimate']:+.3f} [{low:+.2f}, {high:+.2f}]{'*' if gain['distinguishable_from_zero'] else ''}"


def render_report(data: dict[str, Any], images: dict[str, str]) -> str:
    """The report's HTML from the run directory's contents (`_load`) and the figures' inlined images."""
    from fedhealth.metrics.headline import label

    cfg, summary = data["cfg"], data["summary"]
    env = Environment(loader=PackageLoader("fedhealth.reporting", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    env.filters["auc"] = lambda v: "–" if v is None else f"{v:.3f}"
    env.filters["signed"] = lambda v: "–" if v is None else f"{v:+.3f}"
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f} %"
    env.filters["ci"] = lambda ci: "" if not ci or ci[0] is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    env.filters["gain"] = gain_text
    return env.get_template("report.html.j2").render(
        cfg=cfg, summary=summary, hospitals=summary["hospitals"], keys=model_keys(summary), images=images,
        top=summary.get("headline", "auroc"), top_label=label(summary.get("headline", "auroc")),
        rounds=data["rounds"], failed=[r for r in data["rounds"] if r.get("status") == "failed"],
        secagg=data["secagg"], equity=summary.get("equity", {}), privacy=summary.get("privacy"),
        contribution=data["contribution"], membership=data["membership"], missing=_missing_references(data),
        description=data.get("description"), cohort=cohort_rows(data.get("description")),
        labels={"local_only": "local-only", "federated": "federated", "federated_no_dp": "federated, no DP",
                "pooled": "pooled", "best_possible": "best possible"},
        generated=time.strftime("%Y-%m-%d %H:%M", time.localtime()))


def cohort_rows(description: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Table 1 of a description (`description.json`) as rows: variable, statistic, then one cell of text per
    group, each the figure with its 95 % noise bound, or why it is withheld."""
    if not description or not description.get("groups"):
        return []

    def text(f: dict[str, Any]) -> str:
        if f.get("suppressed"):
            return f"withheld: {f['suppressed']}"
        value, error = f.get("value"), f.get("error") or 0.0
        share = "share" in f["statistic"] or f["statistic"] == "prevalence"
        if share:
            return f"{100 * value:.1f} %" + (f" ± {100 * error:.1f}" if error else "")
        unit = "" if f.get("unit") in ("1", "", None) else f" {f['unit']}"
        return f"{value:.4g}{unit}" + (f" ± {error:.3g}" if error else "")

    groups = description["groups"]
    rows = []
    for j, f in enumerate(groups[0]["figures"]):
        rows.append({"variable": f["variable"], "statistic": f["statistic"],
                     "cells": [text(g["figures"][j]) if j < len(g["figures"]) else "" for g in groups]})
    return rows


def _missing_references(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Each reference this run lacks, with why: the key that switched it off, or what made it impossible,
    so a reader can tell "not asked for" from "cannot exist" and knows which key brings it back."""
    cfg, present = data["cfg"], set(data["summary"]["overall"][data["summary"].get("headline", "auroc")])
    refs = cfg.references
    missing = []
    if "local_only" not in present:
        missing.append(("local-only reference", "references.local_only = false" if not refs.local_only
                        else "not computed in this run"))
    if "pooled" not in present:
        missing.append(("pooled reference", "references.pooled = false" if not refs.pooled
                        else "not computed in this run"))
    if cfg.privacy.mode != "none" and "federated_no_dp" not in present:
        missing.append(("the same federation without DP", "references.non_private_federation = false"
                        if not refs.non_private_federation else "not computed in this run"))
    if "best_possible" not in present:
        missing.append(("best possible", "real records: their true risk is not known" if cfg.from_files
                        else "not computed in this run"))
    return missing


def build_report(run_dir: Path) -> Path:
    """Write `report.html` and `figures/*.png` into `run_dir`; return the HTML's path."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    data = _load(run_dir)
    out = run_dir / FIGURES_DIR
    out.mkdir(exist_ok=True)
    images = {name: _save(draw(), out / rundir.FIGURES[name]) for name, draw in figures_for(data).items()}
    html = render_report(data, images)
    path = run_dir / REPORT_FILE
    rundir.atomic_write_text(path, html)
    import logging

    logging.getLogger(__name__).info("report written to %s in %.1f s", path, time.perf_counter() - started)
    return path
