"""`fedhealth describe` in simulation: one SecAgg+ round of the hospitals' statistics vectors, then Table 1.

The federation is the real one (Flower's simulation engine, the study's ServerApp and ClientApp): each
simulated hospital computes its own vector, is charged for it and noises it when `describe.epsilon` is set
(`fedhealth.hospital.describe`), and the server unmasks only their sum. This module reads that sum from the
run directory, turns it into the cohort table and, for a time-to-event study, the Kaplan-Meier curve, and
writes them where a researcher can paste them from.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.runs import rundir
from fedhealth.statistics import CohortTable, KMCurve, cohort_table, figure_noise_sd, kaplan_meier
from fedhealth.statistics.study import DescriptionTerms, description_terms
from fedhealth.statistics.transport import decode
from fedhealth.study.config import StudyConfig

TABLE_CSV = "table1.csv"
TABLE_HTML = "table1.html"
DESCRIPTION_JSON = "description.json"
KM_CSV = "kaplan_meier.csv"
KM_FIGURE = "kaplan_meier.png"


class DescriptionError(RuntimeError):
    """The round released no sum (too few hospitals took part, every one declined)."""


@dataclass(frozen=True)
class Description:
    """What the description released: the summed vector, the table, the curve, who took part, the cost."""

    vector: np.ndarray
    table: CohortTable
    curve: KMCurve | None
    hospitals: list[str]
    declined: list[dict[str, Any]]
    epsilon: float | None
    noise_sd: float

    @property
    def label(self) -> str:
        """How every output says what it cost."""
        if self.epsilon is None:
            return "exact (no noise: simulation only)"
        return f"epsilon {self.epsilon:g} per hospital (Gaussian noise, sd {self.noise_sd:.3g} on each summed count)"


def summed_vector(cfg: StudyConfig, run_dir: Path, terms: DescriptionTerms) -> tuple[np.ndarray, list[int], list]:
    """The unmasked sum of round 1, in the layout's units, with the contributors' indices and the declines."""
    rows = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    row = rows[0] if rows else {}
    contributors = [int(i) for i in row.get("hospitals_aggregated") or []]
    if not contributors:
        reasons = sorted({str(d.get("reason", "")) for d in row.get("declined", [])} | {str(row.get("error", ""))})
        raise DescriptionError(f"the description released no sum: {'; '.join(r for r in reasons if r) or 'see '}"
                               f"{'' if any(reasons) else rundir.ROUNDS_FILE}")
    weights, _ = rundir.load_weights(rundir.checkpoint_path(run_dir, 1))
    # The strategy holds the mean of the contributors' encoded vectors; times their count it is the sum of
    # integers, which `decode` rounds back exactly.
    mean = np.asarray(weights[0], dtype=np.float64)
    return decode(terms.layout, mean * len(contributors), terms.scale), contributors, row.get("declined", [])


def describe_run(cfg: StudyConfig, run_dir: Path) -> Description:
    """Run the description's one round into `run_dir` (created, holding the config) and write its outputs."""
    from fedhealth.experiments.simulate import run_federation

    terms = description_terms(cfg)
    run_federation(cfg, run_dir)
    vector, contributors, declined = summed_vector(cfg, run_dir, terms)
    sd = 0.0 if terms.noise_multiplier is None else figure_noise_sd(terms.layout, terms.noise_multiplier,
                                                                   len(contributors))
    assert cfg.describe is not None
    table = cohort_table(terms.layout, vector, noise_sd=sd, suppress_below=cfg.describe.min_cell)
    curve = kaplan_meier(terms.layout, vector, noise_sd=sd) if terms.layout.outcome == "time_to_event" else None
    result = Description(vector, table, curve, [cfg.hospitals[i].name for i in contributors], list(declined),
                         cfg.describe.epsilon, sd)
    write_outputs(cfg, run_dir, result)
    rundir.mark_completed(run_dir)
    return result


def figure_text(value: float | None, unit: str, statistic: str) -> str:
    """A figure as a table shows it: shares in per cent, other values with their unit; "" when withheld."""
    if value is None:
        return ""
    if "share" in statistic or statistic in ("prevalence", "event_rate"):
        return f"{100 * value:.1f} %"
    return f"{value:.4g}" if unit in ("1", "") else f"{value:.4g} {unit}"


def write_outputs(cfg: StudyConfig, run_dir: Path, result: Description) -> None:
    """table1.csv and table1.html (every row labelled with the epsilon spent), description.json, and for a
    time-to-event study kaplan_meier.csv and kaplan_meier.png with the numbers at risk under the plot."""
    rows = result.table.rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["variable", "statistic", "value", "error", "unit", "suppressed",
                                                "privacy"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "privacy": result.label})
    rundir.atomic_write_text(run_dir / TABLE_CSV, buffer.getvalue())
    rundir.atomic_write_text(run_dir / TABLE_HTML, table_html(cfg, result))
    summary = {"study": cfg.name, "hospitals": result.hospitals, "declined": result.declined,
               "epsilon": result.epsilon, "noise_sd": result.noise_sd, "n": result.table.n,
               "privacy": result.label, "figures": rows,
               "kaplan_meier": result.curve.rows() if result.curve is not None else None}
    rundir.write_json(run_dir / DESCRIPTION_JSON, summary)
    if result.curve is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(result.curve.rows()[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.curve.rows())
        rundir.atomic_write_text(run_dir / KM_CSV, buffer.getvalue())
        kaplan_meier_figure(result.curve, result.label, run_dir / KM_FIGURE)


def table_html(cfg: StudyConfig, result: Description) -> str:
    """A self-contained HTML table (no script, no external resource) a researcher can paste from."""
    e = html.escape
    body = []
    for f in result.table.figures:
        value = (e(figure_text(f.value, f.unit, f.statistic)) if f.suppressed is None
                 else f"<i>withheld: {e(f.suppressed)}</i>")
        error = "" if f.value is None or not f.error else f"± {e(figure_text(f.error, f.unit, f.statistic))}"
        body.append(f"<tr><td>{e(f.variable)}</td><td>{e(f.statistic)}</td><td>{value}</td><td>{error}</td></tr>")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" + e(cfg.name) + ": Table 1</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}</style></head><body>"
            f"<h1>{e(cfg.name)}: Table 1</h1><p>{result.table.n} records from {len(result.hospitals)} hospitals "
            f"({e(', '.join(result.hospitals))}), summed under SecAgg+; {e(result.label)}. "
            "± is a 95 % bound on the error the noise adds (0 when exact).</p>"
            "<table><tr><th>variable</th><th>statistic</th><th>value</th><th>± (95 %)</th></tr>"
            + "".join(body) + "</table></body></html>\n")


def kaplan_meier_figure(curve: KMCurve, label: str, path: Path) -> None:
    """The pooled survival curve with its 95 % band (sampling and noise) and the numbers at risk under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = np.concatenate([[0.0], curve.times])
    survival = np.concatenate([[1.0], curve.survival])
    half = 1.96 * np.sqrt(np.concatenate([[0.0], curve.variance]))
    fig, (ax, table) = plt.subplots(2, 1, figsize=(7, 5), gridspec_kw={"height_ratios": [5, 1]})
    ax.step(times, survival, where="post", color="#1f5f8b", label="all hospitals")
    ax.fill_between(times, np.clip(survival - half, 0, 1), np.clip(survival + half, 0, 1), step="post",
                    color="#1f5f8b", alpha=0.2, label="95 % band (sampling and noise)")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("survival")
    ax.set_title(f"Kaplan-Meier, {label}", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    table.axis("off")
    starts = np.concatenate([[0.0], curve.times[:-1]])
    for t, n in zip(starts, curve.at_risk, strict=True):
        table.text(t, 0.5, f"{n:.0f}", ha="center", fontsize=7, transform=table.transData)
    table.set_xlim(ax.get_xlim())
    table.set_ylim(0, 1)
    table.set_title(f"number at risk (time in {curve.unit})", fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
