"""The study summary of a multi-class or a continuous study: `build_summary`'s layout, per kind.

Downstream code (terminal, report, equity, seeds) reads `summary[...][summary["headline"]]`, so these
summaries keep the keys of the time-to-event one (`fedhealth.experiments.survival_summary`) and put their own
figures where it has the C-index:

    summary["outcome"]   "multiclass" | "continuous";  summary["headline"]   "macro_auroc" | "r2"
    summary["classes"]   the class names, in model-output order (multi-class)
    summary["value"]     {"unit", "min", "max"} (continuous)
    summary["hospitals"][i][figure][model]
        multi-class: macro_auroc, accuracy, log_loss, ece (`fedhealth.metrics.class_figures`), and
        class_auroc[model][class name]; continuous: r2, mae, rmse, calibration_slope
        (`fedhealth.metrics.value_figures`); "best_possible" beside each figure for generated records (the
        generator's true class probabilities, or its true mean, scored the same way)
    summary["hospitals"][i][figure + "_ci"][model]   [low, high];  multi-class also class_auroc_ci
    summary["hospitals"][i]["class_counts_test"]   records of each class on its test side (multi-class)
    summary["hospitals"][i]["gain"]   federated minus local-only headline figure, paired bootstrap:
        {"estimate", "ci", "distinguishable_from_zero"}; absent without both models
    summary["hospitals"][i]["undefined"]   {figure: reason} for what its records cannot give (a class absent
        from its test side, values that do not vary, no local-only model); absent when all is defined
    summary["overall"]   the same figures on all hospitals' test records together, their "_ci",
        "mean_hospital_<headline>" (+ "_ci": the hospitals' bootstrap standard errors combined as independent),
        "gain", "mean_hospital_gain", "n_test"
    summary["calibration"] {};  summary["equity"]  `equity_summary(hospitals, metric=headline)`

**Intervals.** 95 % percentile intervals of a bootstrap of the test records, 500 resamples, seeded from
(study seed, hospital index, model position) as the other summaries' are; for a multi-class outcome the
records of each class are resampled separately (each resample keeps the class counts, so every class AUROC
stays defined), for a continuous one all together. A resample is multiplicities, scored at once as weighted
sums. An undefined figure is null (JSON has no NaN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedhealth.data.hospitals import HospitalSplit
from fedhealth.experiments.references import Predictions
from fedhealth.experiments.survival_summary import RESAMPLES, _gain, _num, _percentile
from fedhealth.metrics.class_figures import multiclass_rows, present_classes
from fedhealth.metrics.equity import equity_summary
from fedhealth.metrics.headline import EVALUATION_KEYS, HEADLINE
from fedhealth.metrics.intervals import LEVEL, Interval, mean_auroc_interval
from fedhealth.metrics.value_figures import regression_rows
from fedhealth.study.config import StudyConfig

_CELLS_AT_ONCE = 4_000_000  # resample weights held at once (resamples x records)

Rows = Callable[[np.ndarray], dict[str, np.ndarray]]


def resample_weights(groups: np.ndarray, seed: int | Sequence[int], resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples, records) multiplicities of a bootstrap that resamples each group of `groups` (a label per
    record) on its own, keeping its size."""
    rng = np.random.default_rng(np.random.SeedSequence(list(np.atleast_1d(seed))))
    w = np.zeros((resamples, len(groups)))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=resamples)
    return w


def _in_chunks(rows: Rows, weights: np.ndarray) -> dict[str, np.ndarray]:
    step = max(1, _CELLS_AT_ONCE // max(1, weights.shape[1]))
    parts = [rows(weights[i:i + step]) for i in range(0, len(weights), step)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _rows_for(cfg: StudyConfig, outcome: np.ndarray, pred: np.ndarray) -> Rows:
    if cfg.outcome_kind == "multiclass":
        return lambda w: multiclass_rows(outcome, pred, w)
    return lambda w: regression_rows(outcome, pred, w)


def _flat(rows: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per-class AUROC columns as figures of their own ("class_auroc/<name>")."""
    out = {key: v for key, v in rows.items() if key != "class_auroc"}
    if "class_auroc" in rows:
        out.update({f"class_auroc/{name}": rows["class_auroc"][:, k] for k, name in enumerate(names)})
    return out


def _score(cfg: StudyConfig, outcome: np.ndarray, preds: dict[str, np.ndarray], seed: tuple[int, ...],
           paired: bool) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Interval]], Interval | None]:
    """Each model's figures on one test set, their intervals and, where `paired`, the headline gain's."""
    names, top = cfg.class_names, HEADLINE[cfg.outcome_kind]
    groups = outcome if cfg.outcome_kind == "multiclass" else np.zeros(len(outcome), dtype=np.int64)
    values: dict[str, dict[str, float]] = {}
    intervals: dict[str, dict[str, Interval]] = {}
    boot: dict[str, dict[str, np.ndarray]] = {}
    for j, (key, pred) in enumerate(preds.items()):
        rows = _rows_for(cfg, outcome, pred)
        estimate = _flat(rows(np.ones((1, len(outcome)))), names)
        values[key] = {k: float(v[0]) for k, v in estimate.items()}
        boot[key] = _flat(_in_chunks(rows, resample_weights(groups, (*seed, j))), names)
        intervals[key] = {k: _percentile(values[key][k], boot[key][k]) for k in estimate}
    gain = None
    if paired and "federated" in preds and "local_only" in preds:
        # the paired draw: the federated model's resamples (position of "federated") scored for local-only too
        j = list(preds).index("federated")
        local = _flat(_in_chunks(_rows_for(cfg, outcome, preds["local_only"]),
                                 resample_weights(groups, (*seed, j))), names)
        gain = _percentile(values["federated"][top] - values["local_only"][top],
                           boot["federated"][top] - local[top])
    return values, intervals, gain


def _undefined(cfg: StudyConfig, s: HospitalSplit, local_only: bool) -> dict[str, str]:
    """Why some of a hospital's figures are undefined: counts and class names only, never a record's value."""
    out: dict[str, str] = {}
    outcome = s.outcome_test
    assert outcome is not None and s.outcome_train is not None
    if cfg.outcome_kind == "multiclass":
        names = cfg.class_names
        missing = [names[k] for k in range(len(names)) if k not in present_classes(outcome, len(names))]
        if len(missing) >= len(names) - 1:
            out["macro_auroc"] = (f"its test split ({len(outcome)} records) holds fewer than two classes: no "
                                  "class AUROC, no macro AUROC")
        elif missing:
            out["class_auroc"] = (f"its test split holds no record of {', '.join(missing)} (or only those): their "
                                  "AUROCs are undefined and its macro AUROC is the mean over the other classes")
        if local_only and np.unique(s.outcome_train).size < 2:
            out["local_only"] = "its training split holds one class: no local-only model can tell classes apart"
    else:
        if np.ptp(outcome) == 0 if len(outcome) else True:
            out["r2"] = f"its {len(outcome)} test values are all the same: R² needs them to vary"
        if local_only and np.ptp(s.outcome_train) == 0:
            out["local_only"] = "its training values are all the same: no local-only model can be fitted"
    return out


def _write(row: dict[str, Any], key: str, values: dict[str, float], intervals: dict[str, Interval],
           names: tuple[str, ...], figures: tuple[str, ...]) -> None:
    for figure in figures:
        row[figure][key] = _num(values[figure])
        row[f"{figure}_ci"][key] = intervals[figure].as_list()
    if names:
        row["class_auroc"][key] = {n: _num(values[f"class_auroc/{n}"]) for n in names}
        row["class_auroc_ci"][key] = {n: intervals[f"class_auroc/{n}"].as_list() for n in names}


def _empty(figures: tuple[str, ...], names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {**{f: {} for f in figures}, **{f"{f}_ci": {} for f in figures}}
    if names:
        out.update({"class_auroc": {}, "class_auroc_ci": {}})
    return out


def build_outcome_summary(cfg: StudyConfig, splits: Sequence[HospitalSplit], preds: dict[str, Predictions],
                          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a multi-class or continuous study (layout in the module docstring).

    Parameters
    ----------
    cfg : StudyConfig
        A multi-class or continuous study.
    splits : sequence of HospitalSplit
        Every hospital's split, with `outcome_test` (class index or value) and, for generated records,
        `test_truth`.
    preds : dict of str to Predictions
        Keys among "federated", "federated_no_dp", "local_only", "pooled": each hospital's test records'
        class probabilities (n, K) or values (n,), all NaN where the hospital has no such model.
    extra : dict, optional
        Keys added at the top level, last.

    Returns
    -------
    dict
        JSON-ready (undefined figures are None).
    """
    kind = cfg.outcome_kind
    if kind not in ("multiclass", "continuous"):
        raise ValueError(f"build_outcome_summary: a {kind} study's summary is built elsewhere")
    top, figures, names = HEADLINE[kind], EVALUATION_KEYS[kind], cfg.class_names
    known = all(s.test_truth is not None for s in splits)
    paired = "federated" in preds and "local_only" in preds
    hospitals: list[dict[str, Any]] = []
    hospital_top: dict[str, list[Interval]] = {key: [] for key in preds}
    gains: list[Interval] = []
    for s in splits:
        assert s.outcome_test is not None and s.outcome_train is not None
        row: dict[str, Any] = {
            "name": s.hospital.name, "index": s.index, "tier": s.hospital.tier, "region": s.hospital.region,
            "records": s.hospital.records, "n_train": int(len(s.outcome_train)), "n_test": int(len(s.outcome_test)),
            "prevalence": None, **_empty(figures, names)}
        if names:
            row["class_counts_test"] = {n: int(np.sum(s.outcome_test == k)) for k, n in enumerate(names)}
        by_model = {key: np.asarray(p.by_hospital[s.index], dtype=np.float64) for key, p in preds.items()}
        values, intervals, gain = _score(cfg, s.outcome_test, by_model, (cfg.seed, s.index), paired)
        for key in preds:
            _write(row, key, values[key], intervals[key], names, figures)
            hospital_top[key].append(intervals[key][top])
        if gain is not None:
            gains.append(gain)
            row["gain"] = _gain(gain)
        if known:
            truth, _, _ = _score(cfg, s.outcome_test, {"best_possible": s.test_truth}, (cfg.seed, s.index), False)
            for figure in figures:
                row[figure]["best_possible"] = _num(truth["best_possible"][figure])
        undefined = _undefined(cfg, s, local_only="local_only" in preds)
        if undefined:
            row["undefined"] = undefined
        hospitals.append(row)

    outcome_all = np.concatenate([s.outcome_test for s in splits])
    overall: dict[str, Any] = {**_empty(figures, names), f"mean_hospital_{top}": {}, f"mean_hospital_{top}_ci": {},
                               "n_test": int(len(outcome_all))}
    by_model = {key: np.concatenate([np.asarray(p.by_hospital[s.index], dtype=np.float64) for s in splits])
                for key, p in preds.items()}
    values, intervals, gain = _score(cfg, outcome_all, by_model, (cfg.seed, len(splits)), paired)
    for key in preds:
        _write(overall, key, values[key], intervals[key], names, figures)
        overall[f"mean_hospital_{top}_ci"][key] = mean_auroc_interval(
            hospital_top[key], bounded=kind == "multiclass",
            over=sum(h[top][key] is not None for h in hospitals)).as_list()
    if gain is not None:
        overall["gain"] = _gain(gain)
    if paired:
        overall["mean_hospital_gain"] = _gain(mean_auroc_interval(gains, bounded=False))
    if known:
        truth_all = np.concatenate([s.test_truth for s in splits])
        truth, _, _ = _score(cfg, outcome_all, {"best_possible": truth_all}, (cfg.seed, len(splits)), False)
        for figure in figures:
            overall[figure]["best_possible"] = _num(truth["best_possible"][figure])
    for key in [*preds, *(["best_possible"] if known else [])]:
        v = np.array([np.nan if h[top].get(key) is None else h[top][key] for h in hospitals], dtype=float)
        overall[f"mean_hospital_{top}"][key] = float(np.nanmean(v)) if np.isfinite(v).any() else None
    described = {"classes": list(names)} if names else {
        "value": {"unit": cfg.value_spec.unit, "min": cfg.value_spec.min, "max": cfg.value_spec.max}}
    return {"study": cfg.name, "seed": cfg.seed, "strategy": cfg.federation.strategy.name,
            "model": cfg.model.name, "rounds": cfg.federation.rounds, "outcome": kind, "headline": top,
            **described, "overall": overall, "hospitals": hospitals, "calibration": {},
            "equity": equity_summary(hospitals, metric=top),
            "intervals": {"level": LEVEL, "resamples": RESAMPLES,
                          ", ".join(figures): ("stratified bootstrap (each class resampled on its own)" if names
                                               else "bootstrap of the test records")
                          + f", {RESAMPLES} resamples, percentile, seeded from the study seed",
                          "gain": "paired bootstrap: the same resampled records scored for the federated and the "
                                  "local-only model",
                          f"mean_hospital_{top}_ci, mean_hospital_gain": "the hospitals' bootstrap standard "
                          "errors combined as independent, normal interval",
                          "covers": "the finite test sets only, not the training run: another seed trains "
                                    "another model"},
            **(extra or {})}
