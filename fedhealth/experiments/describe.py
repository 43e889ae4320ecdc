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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.errors import AggregationError
from fedhealth.runs import rundir
from fedhealth.statistics import (
    CohortTable,
    KMCurve,
    LogRank,
    StatisticsError,
    cohort_table,
    kaplan_meier,
    logrank,
)
from fedhealth.statistics.study import DescriptionTerms, description_terms
from fedhealth.statistics.transport import decode
from fedhealth.study.config import StudyConfig

TABLE_CSV = "table1.csv"
TABLE_HTML = "table1.html"
DESCRIPTION_JSON = rundir.DESCRIPTION_FILE
KM_CSV = "kaplan_meier.csv"
KM_FIGURE = "kaplan_meier.png"


class DescriptionError(AggregationError, RuntimeError):
    """The round released no sum (too few hospitals took part, every one declined)."""


@dataclass(frozen=True)
class Group:
    """One column of the table: all hospitals (`kind` "all") or a tier or region of at least three."""

    kind: str
    value: str
    table: CohortTable
    curve: KMCurve | None
    logrank: LogRank | None = None  # a group's survival against the rest of the cohort

    @property
    def name(self) -> str:
        return "all hospitals" if self.kind == "all" else f"{self.kind} {self.value}"


@dataclass(frozen=True)
class Description:
    """What the description released: the summed vector, a table (and curve) per group, who took part, the
    cost."""

    vector: np.ndarray
    groups: tuple[Group, ...]
    hospitals: list[str]
    declined: list[dict[str, Any]]
    epsilon: float | None
    noise_sd: float

    @property
    def table(self) -> CohortTable:
        """The table of all hospitals."""
        return self.groups[0].table

    @property
    def curve(self) -> KMCurve | None:
        return self.groups[0].curve

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
    summed = np.asarray(weights[0], dtype=np.float64) * len(contributors)
    decoded = np.concatenate([decode(terms.layout, terms.slot(summed, i), terms.scale) for i in range(terms.slots)])
    return decoded, contributors, row.get("declined", [])


def describe_run(cfg: StudyConfig, run_dir: Path) -> Description:
    """Run the description's one round into `run_dir` (created, holding the config) and write its outputs."""
    from fedhealth.experiments.simulate import run_federation

    run_federation(cfg, run_dir)
    result = finish_description(cfg, run_dir)
    rundir.mark_completed(run_dir)
    return result


def finish_description(cfg: StudyConfig, run_dir: Path) -> Description:
    """Table 1 and the curves from the unmasked sum in `run_dir`, written beside it (simulation, and the
    deployed ServerApp after its description round: the server holds only the sum either way)."""
    terms = description_terms(cfg)
    vector, contributors, declined = summed_vector(cfg, run_dir, terms)
    sd = terms.noise_sd * math.sqrt(len(contributors))  # independent noise of each contributor, summed
    assert cfg.describe is not None
    survival = terms.layout.outcome == "time_to_event"
    overall = terms.slot(vector, 0)
    groups = []
    from fedhealth.study.secagg import SECAGG_MINIMUM

    filled = filled_slots(run_dir)
    for i, (kind, value) in enumerate([("all", ""), *terms.groups]):
        members = [j for j in contributors if i == 0 or i in filled.get(j, ())]
        if len(members) < SECAGG_MINIMUM:
            # Fewer than three hospitals filled the group's slot (some declined, or their policies do not share
            # group statistics): an honest server withholds it.
            continue
        v = terms.slot(vector, i)
        table = cohort_table(terms.layout, v, noise_sd=sd, suppress_below=cfg.describe.min_cell)
        curve = kaplan_meier(terms.layout, v, noise_sd=sd) if survival else None
        test = None
        if survival and i > 0:
            try:
                test = logrank(terms.layout, v, overall - v)
            except StatisticsError:  # no interval with events and both sides at risk: no test, not a crash
                test = None
        groups.append(Group(kind, value, table, curve, test))
    curves = site_curves(run_dir, terms) if survival else {}
    for name, table in site_tables(cfg, run_dir, terms).items():
        groups.append(Group("site", name, table, curves.get(name)))
    result = Description(vector, tuple(groups), [cfg.hospitals[i].name for i in contributors], list(declined),
                         cfg.describe.epsilon, sd)
    write_outputs(cfg, run_dir, result)
    return result


def site_tables(cfg: StudyConfig, run_dir: Path, terms: DescriptionTerms) -> dict[str, CohortTable]:
    """The per-site columns the hospitals released in the clear (each only if its own policy says
    `share_site_statistics`, computed and suppressed by the hospital itself), read defensively: a hospital's
    column that is not a table of this layout's figures is left out, with a warning, never trusted."""
    import json
    import logging

    from fedhealth.statistics.table import Figure

    rows = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    sent = (rows[0].get("site_tables") or {}) if rows else {}
    expected = [(f.variable, f.statistic) for f in cohort_table(terms.layout, np.zeros(len(terms.layout.cells)),
                                                                 suppress_below=0).figures]
    out: dict[str, CohortTable] = {}
    for name, text in sent.items():
        try:
            figures = tuple(Figure(variable=str(r["variable"]), statistic=str(r["statistic"]),
                                   value=None if r["value"] is None else float(r["value"]), error=float(r["error"]),
                                   unit=str(r["unit"]), suppressed=None if r["suppressed"] is None
                                   else str(r["suppressed"])) for r in json.loads(text))
            if [(f.variable, f.statistic) for f in figures] != expected:
                raise ValueError("not this layout's figures")
        except (TypeError, ValueError, KeyError) as err:
            logging.getLogger(__name__).warning("hospital %s: its site column is unreadable (%s); left out",
                                                name, type(err).__name__)
            continue
        n = figures[0].value
        out[str(name)] = CohortTable(int(n) if n is not None else 0, figures, terms.noise_sd,
                                     max(cfg.describe.min_cell if cfg.describe else 0, 0))
    return out


def filled_slots(run_dir: Path) -> dict[int, set[int]]:
    """Which group slots each contributing hospital says it filled (`fedhealth.hospital.describe.group_slots`);
    a hospital that said nothing readable filled none."""
    import json

    rows = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    sent = (rows[0].get("groups_filled") or {}) if rows else {}
    out: dict[int, set[int]] = {}
    for index, text in sent.items():
        try:
            out[int(index)] = {int(s) for s in json.loads(text)}
        except (TypeError, ValueError):
            continue
    return out


def site_curves(run_dir: Path, terms: DescriptionTerms) -> dict[str, KMCurve]:
    """The Kaplan-Meier curves hospitals released with their site columns (cut by each where few remain at
    risk), read defensively as the columns are."""
    import json
    import logging

    rows = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    sent = (rows[0].get("site_curves") or {}) if rows else {}
    edges = terms.layout.block("outcome").edges
    out: dict[str, KMCurve] = {}
    for name, text in sent.items():
        try:
            points = json.loads(text)
            k = len(points)
            if not 0 < k <= len(edges) - 1:
                raise ValueError("not this layout's intervals")
            cols = {key: np.array([float(p[key]) for p in points]) for key in
                    ("time", "survival", "se", "at_risk", "events", "censored")}
            if not np.array_equal(cols["time"], np.asarray(edges[1:k + 1], dtype=np.float64)):
                raise ValueError("not this layout's interval ends")
        except (TypeError, ValueError, KeyError) as err:
            logging.getLogger(__name__).warning("hospital %s: its site curve is unreadable (%s); left out",
                                                name, type(err).__name__)
            continue
        out[str(name)] = KMCurve(cols["time"], cols["survival"], np.square(cols["se"]), cols["at_risk"],
                                 cols["events"], cols["censored"], terms.layout.block("outcome").unit)
    return out


def figure_text(value: float | None, unit: str, statistic: str) -> str:
    """A figure as a table shows it: shares in per cent, other values with their unit; "" when withheld."""
    if value is None:
        return ""
    if "share" in statistic or statistic in ("prevalence", "event_rate"):
        return f"{100 * value:.1f} %"
    return f"{value:.4g}" if unit in ("1", "") else f"{value:.4g} {unit}"


def write_outputs(cfg: StudyConfig, run_dir: Path, result: Description) -> None:
    """table1.csv (one row per figure and group, each labelled with the epsilon spent) and table1.html,
    description.json, and for a time-to-event study kaplan_meier.csv and kaplan_meier.png with the numbers
    at risk under the plot."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["group", "variable", "statistic", "value", "error", "unit",
                                                "suppressed", "privacy"], lineterminator="\n")
    writer.writeheader()
    for g in result.groups:
        for row in g.table.rows():
            writer.writerow({"group": g.name, **row, "privacy": result.label})
    rundir.atomic_write_text(run_dir / TABLE_CSV, buffer.getvalue())
    rundir.atomic_write_text(run_dir / TABLE_HTML, table_html(cfg, result))
    summary = {"study": cfg.name, "hospitals": result.hospitals, "declined": result.declined,
               "epsilon": result.epsilon, "noise_sd": result.noise_sd, "n": result.table.n,
               "privacy": result.label,
               "groups": [{"group": g.name, "kind": g.kind, "value": g.value, "n": g.table.n,
                           "figures": g.table.rows(),
                           "kaplan_meier": g.curve.rows() if g.curve is not None else None,
                           "logrank_against_rest": None if g.logrank is None else {
                               "statistic": g.logrank.statistic, "p_value": g.logrank.p_value,
                               "observed": g.logrank.observed, "expected": g.logrank.expected}}
                          for g in result.groups]}
    rundir.write_json(run_dir / DESCRIPTION_JSON, summary)
    if result.curve is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["group", *result.curve.rows()[0]], lineterminator="\n")
        writer.writeheader()
        for g in result.groups:
            if g.curve is not None:  # a site's own column has no curve
                writer.writerows({"group": g.name, **row} for row in g.curve.rows())
        rundir.atomic_write_text(run_dir / KM_CSV, buffer.getvalue())
        from fedhealth.reporting.figures import cohort_kaplan_meier

        _save_figure(cohort_kaplan_meier(summary["groups"], result.label), run_dir / KM_FIGURE)


def table_html(cfg: StudyConfig, result: Description) -> str:
    """A self-contained HTML table (no script, no external resource) a researcher can paste from: one row per
    figure, one column per group."""
    e = html.escape

    def cell(f) -> str:
        if f.suppressed is not None:
            return f"<td><i>withheld: {e(f.suppressed)}</i></td>"
        error = f" ± {e(figure_text(f.error, f.unit, f.statistic))}" if f.error else ""
        return f"<td>{e(figure_text(f.value, f.unit, f.statistic))}{error}</td>"

    head = "".join(f"<th>{e(g.name)} (n = {g.table.n:,})</th>" for g in result.groups)
    body = []
    for j, f in enumerate(result.table.figures):
        cells = "".join(cell(g.table.figures[j]) for g in result.groups)
        body.append(f"<tr><td>{e(f.variable)}</td><td>{e(f.statistic)}</td>{cells}</tr>")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" + e(cfg.name) + ": Table 1</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}</style></head><body>"
            f"<h1>{e(cfg.name)}: Table 1</h1><p>{result.table.n:,} records from {len(result.hospitals)} hospitals "
            f"({e(', '.join(result.hospitals))}), summed under SecAgg+; {e(result.label)}. "
            "± is a 95 % bound on the error the noise adds (none when exact). A tier or region appears when at "
            "least three of the study's hospitals share it.</p>"
            f"<table><tr><th>variable</th><th>statistic</th>{head}</tr>" + "".join(body) + "</table></body></html>\n")


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
