"""The report and the end-of-run table adapt to what a run has: every subset of the references (local-only,
pooled, the same federation without DP, best possible), each privacy mode, SecAgg+ on and off. Built
from synthetic run directories (the smoke study's real splits, made-up predictions, the summary built
by the real `build_summary`), so no federation runs; the federations themselves:
tests/integration/test_options_federation.py."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fedhealth.data.hospitals import load_hospital
from fedhealth.experiments.references import Predictions
from fedhealth.experiments.simulate import hospital_privacy_summary, privacy_summary
from fedhealth.experiments.summary import build_summary
from fedhealth.reporting.report import _load, build_report, figures_for, render_report
from fedhealth.runs import rundir
from fedhealth.study.config import config_to_toml
from tests.support import smoke

REFERENCES = ("local_only", "pooled", "federated_no_dp", "best_possible")
PRIVACY = {"none": [], "record": ["privacy.mode=record", "privacy.noise_multiplier=1.0"],
           "hospital": ["privacy.mode=hospital", "privacy.noise_multiplier=1.0"]}
KEY = {"local_only": "references.local_only = false", "pooled": "references.pooled = false",
       "federated_no_dp": "references.non_private_federation = false"}


def _cases() -> list[tuple[frozenset[str], str, bool]]:
    """Every subset of the references under every privacy mode, SecAgg+ alternating (the no-DP sibling
    exists only in a DP run); each mode meets SecAgg+ on and off over the subsets."""
    cases = []
    for n, (mode, refs) in enumerate(itertools.product(PRIVACY, itertools.chain.from_iterable(
            itertools.combinations(REFERENCES, k) for k in range(len(REFERENCES) + 1)))):
        if mode == "none" and "federated_no_dp" in refs:
            continue
        cases.append((frozenset(refs), mode, n % 2 == 0))
    return cases


def _case_id(case: tuple[frozenset[str], str, bool]) -> str:
    refs, mode, secure = case
    return f"{mode}-{'secagg' if secure else 'plain'}-{'+'.join(sorted(refs)) or 'federated-only'}"


def make_run(root: Path, refs: frozenset[str], mode: str, secure: bool, rounds: int = 2) -> Path:
    """A finished run directory as `simulate` leaves it, with exactly the references in `refs`: the config
    says which were switched off, predictions are random, and `best_possible` is absent as it is for
    real records (no known true risk)."""
    flags = [f"references.local_only={str('local_only' in refs).lower()}",
             f"references.pooled={str('pooled' in refs).lower()}",
             f"references.non_private_federation={str('federated_no_dp' in refs).lower()}",
             f"federation.secure_aggregation.enabled={str(secure).lower()}", f"federation.rounds={rounds}"]
    cfg = smoke(*PRIVACY[mode], *flags)
    run = root / _case_id((refs, mode, secure))
    run.mkdir(parents=True)
    (run / rundir.CONFIG_FILE).write_text(config_to_toml(cfg), encoding="utf-8")
    splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
    if "best_possible" not in refs:
        splits = [dataclasses.replace(s, test_true_risk=np.full_like(s.test_true_risk, np.nan)) for s in splits]
    rng = np.random.default_rng(len(refs))
    models = ["federated", *(k for k in REFERENCES[:3] if k in refs)]
    preds = {k: Predictions({s.index: np.clip(0.6 * s.y_test + rng.uniform(0, 0.5, len(s.y_test)), 0, 1)
                             for s in splits}) for k in models}
    metrics, rows = [], []
    for r in range(1, rounds + 1):
        for s in splits:
            metrics.append({"round": r, "hospital_index": s.index, "hospital": s.hospital.name,
                            "tier": s.hospital.tier, "region": s.hospital.region, "auroc": 0.7 + 0.05 * r,
                            "epsilon": 0.5 * r if mode == "record" else None})
        rows.append({"round": r, "status": "aggregated", "aggregated": True, "secure_aggregation": secure,
                     "hospitals_aggregated": [s.index for s in splits], "auroc_mean": 0.7 + 0.05 * r,
                     **({"hospital_epsilon": 0.8 * r} if mode == "hospital" else {})})
    (run / rundir.METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
    (run / rundir.ROUNDS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if secure:
        (run / rundir.SECAGG_FILE).write_text(json.dumps(
            {"num_shares": 3, "reconstruction_threshold": 2, "tolerated_dropouts": 1,
             "quantization_range": 2**30, "clipping_range": 8.0}), encoding="utf-8")
    extra = {}
    if mode == "record":
        extra["privacy"] = privacy_summary(cfg, run)
    elif mode == "hospital":
        extra["privacy"] = hospital_privacy_summary(cfg, run)
    (run / rundir.SUMMARY_FILE).write_text(json.dumps(build_summary(cfg, splits, preds, extra)), encoding="utf-8")
    return run


def _section(html: str, anchor: str) -> str:
    """The report's section from `<h2 id=anchor>` to the next `<h2`."""
    start = html.index(f'<h2 id="{anchor}">')
    end = html.find("<h2", start + 1)
    return html[start:end if end != -1 else len(html)]


def _headers(html: str) -> list[str]:
    return re.findall(r"<th>([^<]*)</th>", html)


@pytest.mark.parametrize("case", _cases(), ids=_case_id)
def test_the_report_shows_what_the_run_has_and_names_what_it_lacks(case, tmp_path):
    refs, mode, secure = case
    data = _load(make_run(tmp_path, refs, mode, secure))
    html = render_report(data, {name: f"data:image/png;base64,{name}" for name in figures_for(data)})
    lead = html[html.index('<p class="lead">'):html.index('<h2 id="federation">')]
    comparison = _section(html, "comparison")
    equity = _section(html, "equity")
    privacy = _section(html, "privacy")
    headers = _headers(comparison)

    # a column, a line of the lead and a note only for what exists
    assert ("local-only" in headers) == ("local_only" in refs)
    assert ("gain over local-only" in headers) == ("local_only" in refs)
    assert ("pooled" in headers) == ("pooled" in refs)
    assert ("federated, no DP" in headers) == ("federated_no_dp" in refs)
    assert ("best possible" in headers) == ("best_possible" in refs)
    assert ("Best possible: the AUROC" in comparison) == ("best_possible" in refs)
    assert ("for hospitals training alone" in lead) == ("local_only" in refs)
    assert ("for all records pooled" in lead) == ("pooled" in refs)
    assert ("training alone and " in lead) == ({"local_only", "pooled"} <= refs)
    assert ("</b> against " in lead) == bool({"local_only", "pooled"} & refs)
    assert ("Privacy cost" in lead) == ("federated_no_dp" in refs)
    assert re.search(r"<td>–</td>", comparison) is None, "a column of dashes for a model the run has not"
    # what is absent is named once, with the key that brings it back
    for ref, key in KEY.items():
        expected = ref not in refs and (ref != "federated_no_dp" or mode != "none")
        assert (key in lead) == expected, (ref, lead)
    # equity: gains only with the local-only reference
    assert ("AUROC training alone" in equity) == ("local_only" in refs)
    assert ("gain over training alone</td>" in equity) == ("local_only" in refs)
    assert ("local-only" in _headers(equity)) == ("local_only" in refs)
    assert ("(alone " in equity) == ("local_only" in refs)
    assert ("equity" in figures_for(data)) == ("local_only" in refs)
    # privacy and SecAgg+
    assert ("privacy" in figures_for(data)) == (mode != "none")
    assert ("protected from the server by secure aggregation" in privacy) == (mode == "none" and secure)
    assert ("the server saw every hospital's update" in privacy) == (mode == "none" and not secure)
    if mode != "none":
        assert ("What privacy cost:" in privacy) == ("federated_no_dp" in refs)
        assert ("What privacy cost was not measured" in privacy) == ("federated_no_dp" not in refs)
    assert ("The server saw only sums." in html) == secure
    assert ("Secure aggregation was off in this run" in html) == (not secure)
    calibration = _section(html, "calibration")
    assert ("federated, no DP</td>" in calibration) == ("federated_no_dp" in refs)
    assert ("local-only</td>" in calibration) == ("local_only" in refs)


@pytest.mark.parametrize("refs, mode, secure", [(frozenset(), "none", False), (frozenset(REFERENCES), "record", True),
                                                (frozenset({"pooled"}), "hospital", True)],
                         ids=["nothing-but-federated", "everything-record-dp", "pooled-hospital-dp"])
def test_the_report_and_its_figures_are_written_for_the_extremes(refs, mode, secure, tmp_path):
    run = make_run(tmp_path, refs, mode, secure)
    path = build_report(run)
    html = path.read_text(encoding="utf-8")
    drawn = {p.name for p in (run / "figures").iterdir()}
    assert drawn == {rundir.FIGURES[name] for name in figures_for(_load(run))}
    assert html.count('src="data:image/png;base64,') == len(drawn)  # every figure drawn is in the page
    assert re.search(r">\s*None\s*<", html) is None


@pytest.mark.parametrize("refs", [frozenset(), frozenset({"pooled"}), frozenset(REFERENCES)],
                         ids=lambda refs: "+".join(sorted(refs)) or "none")  # the same ids in every process
def test_the_end_of_run_table_has_a_column_per_model_the_run_has(refs, tmp_path, monkeypatch):
    from rich.console import Console

    from fedhealth import cli

    run = make_run(tmp_path, refs, "record", True)
    recorder = Console(record=True, width=250)
    monkeypatch.setattr(cli, "console", recorder)
    cli.print_summary_table(json.loads((run / rundir.SUMMARY_FILE).read_text(encoding="utf-8")))
    header = recorder.export_text().splitlines()[2]
    titles = {"local_only": "local-only", "pooled": "pooled", "federated_no_dp": "federated, no DP",
              "best_possible": "best possible"}
    for ref, title in titles.items():
        assert (title in header) == (ref in refs), (ref, header)
    assert ("federated (DP)" in header) == ("federated_no_dp" in refs)
