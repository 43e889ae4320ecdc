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
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from fedhealth.data.study_file import load_config
from fedhealth.errors import RunDirectoryError
from fedhealth.reporting.deployment_summary import deployment_summary, is_recordless
from fedhealth.runs import rundir

REPORT_FILE = rundir.REPORT_FILE
FIGURES_DIR = "figures"
MODEL_ORDER = ("local_only", "federated", "federated_no_dp", "pooled", "best_possible")


class ReportError(RunDirectoryError, RuntimeError):
    """The run directory cannot be reported on (missing files, not finished); the message says which."""


def _load(run_dir: Path) -> dict[str, Any]:
    if (run_dir / rundir.CONFIG_FILE).is_file() and is_recordless(run_dir):
        # a deployment's server holds no records: its summary comes from what the hospitals reported
        rundir.write_json(run_dir / rundir.SUMMARY_FILE,
                          deployment_summary(load_config(run_dir / rundir.CONFIG_FILE), run_dir))
    needed = [rundir.CONFIG_FILE, rundir.SUMMARY_FILE, rundir.METRICS_FILE, rundir.ROUNDS_FILE]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise ReportError(f"{run_dir}: not a finished run directory (missing {', '.join(missing)}); "
                          "a report needs a run that completed (`fedhealth simulate`, or a deployment study "
                          "whose state.json says completed: see `fedhealth status`)")
    secagg = run_dir / rundir.SECAGG_FILE
    contribution = run_dir / rundir.CONTRIBUTION_FILE

    membership = run_dir / rundir.PRIVACY_AUDIT_FILE
    return {
        "membership": rundir.read_json(membership) if membership.is_file() else None,
        "contribution": rundir.read_json(contribution) if contribution.is_file() else None,
        "cfg": load_config(run_dir / rundir.CONFIG_FILE),
        "summary": rundir.read_json_object(run_dir / rundir.SUMMARY_FILE),
        "metrics": rundir.read_jsonl(run_dir / rundir.METRICS_FILE),
        "rounds": rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE),
        "secagg": rundir.read_json(secagg) if secagg.is_file() else None,
    }


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


def _as_hospitals_accept(run_dir: Path, cfg: Any, privacy: dict[str, Any] | None) -> dict[str, Any] | None:
    """The summary's record-level privacy rows, each hospital's ledger verified again now: a ledger altered
    after the summary was written is reported as the hospital would treat it (refused, no epsilon)."""
    from fedhealth.privacy.ledger import ledger_standing

    if not privacy or privacy.get("mode") != "record":
        return privacy
    rows = []
    for h in privacy.get("hospitals", []):
        standing = ledger_standing(run_dir / rundir.PRIVACY_DIR / f"{h['name']}.json", h["name"], privacy["delta"])
        if standing.status in ("refused", "unreadable") and h.get("epsilon") is not None:
            h = {**h, "epsilon": None, "ledger": standing.status, "ledger_problem": standing.problem}
        rows.append(h)
    return {**privacy, "hospitals": rows}


def build_report(run_dir: Path) -> Path:
    """Write `report.html` and `figures/*.png` into `run_dir`; return the HTML's path."""
    from fedhealth.reporting import figures

    started = time.perf_counter()
    run_dir = Path(run_dir)
    data = _load(run_dir)
    cfg, summary = data["cfg"], data["summary"]
    hospitals = summary["hospitals"]
    keys = [k for k in MODEL_ORDER if k in summary["overall"]["auroc"]]
    out = run_dir / FIGURES_DIR
    out.mkdir(exist_ok=True)
    images: dict[str, str] = {}
    images["learning_curves"] = _save(figures.learning_curves(data["metrics"], data["rounds"]),
                                      out / rundir.FIGURES["learning_curves"])
    images["final_comparison"] = _save(figures.final_comparison(hospitals, keys),
                                       out / rundir.FIGURES["final_comparison"])
    if summary.get("calibration"):
        images["calibration"] = _save(figures.calibration(summary["calibration"]), out / rundir.FIGURES["calibration"])
    epsilon, caps = _epsilon_series(data)
    if epsilon:
        tiers = {h["name"]: h["tier"] for h in hospitals}
        images["privacy"] = _save(figures.privacy(epsilon, caps, tiers), out / rundir.FIGURES["privacy"])
    images["secure_aggregation"] = _save(figures.secure_aggregation(data["rounds"], len(hospitals)),
                                         out / rundir.FIGURES["secure_aggregation"])
    if summary.get("equity", {}).get("gain_by_hospital"):
        images["equity"] = _save(figures.equity(hospitals), out / rundir.FIGURES["equity"])
    if data["contribution"]:
        images["contribution"] = _save(figures.contribution(data["contribution"]), out / rundir.FIGURES["contribution"])

    env = Environment(loader=PackageLoader("fedhealth.reporting", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    env.filters["auc"] = lambda v: "–" if v is None else f"{v:.3f}"
    env.filters["signed"] = lambda v: "–" if v is None else f"{v:+.3f}"
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f} %"
    html = env.get_template("report.html.j2").render(
        cfg=cfg, summary=summary, hospitals=hospitals, keys=keys, images=images, rounds=data["rounds"],
        failed=[r for r in data["rounds"] if r.get("status") == "failed"], secagg=data["secagg"],
        equity=summary.get("equity", {}), privacy=_as_hospitals_accept(run_dir, cfg, summary.get("privacy")),
        contribution=data["contribution"],
        membership=data["membership"],
        labels={"local_only": "local-only", "federated": "federated", "federated_no_dp": "federated, no DP",
                "pooled": "pooled", "best_possible": "best possible"},
        generated=time.strftime("%Y-%m-%d %H:%M", time.localtime()))
    path = run_dir / REPORT_FILE
    rundir.atomic_write_text(path, html)
    import logging

    logging.getLogger(__name__).info("report written to %s in %.1f s", path, time.perf_counter() - started)
    return path
