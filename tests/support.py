"""What the unit and the integration tests share: the project's paths, the smoke study, the fedhealth CLI
(in this process, or as a user runs it), one simulated federation into a directory, and the toy schema and
records that the tests of hospitals' own files write. Fixtures stay in the conftest.py files."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]  # the project: the tests run its scripts and read its configs
SMOKE = ROOT / "configs" / "smoke.toml"

# record-level DP-SGD on the smoke study, at a fixed noise multiplier
RECORD_DP = ["privacy.mode=record", "privacy.noise_multiplier=1.0"]
QFFL = 'federation.strategy.name="qfedavg"'


def smoke(*overrides: str):
    """The smoke study (configs/smoke.toml) with `--set`-style overrides."""
    from fedhealth.data.study_file import load_config

    return load_config(SMOKE, list(overrides))


def federate(cfg, out: Path) -> Path:
    """Run the study's federation (Flower's simulation engine, no references, no summary) into a fresh run
    directory `out`, and return it."""
    from fedhealth.experiments.simulate import run_federation
    from fedhealth.runs import rundir

    run_dir = rundir.create_run_dir(cfg, out)
    run_federation(cfg, run_dir)
    return run_dir


def invoke_cli(*args: str):
    """The fedhealth CLI in this process (typer's runner): exit_code, stdout, stderr."""
    from typer.testing import CliRunner

    from fedhealth.cli import app

    return CliRunner().invoke(app, list(args))


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m fedhealth.cli ARGS` in a process of its own, from the project directory, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "fedhealth.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# -- a toy study schema and records in the form a hospital's export has (strings, label and consent columns) --

TOY_SCHEMA = """
[study]
name = "toy"
missing_values = ["", "NA"]
[label]
column = "outcome"
positive = ["yes"]
negative = ["no"]
[consent]
column = "consent"
granted = ["research", "all"]
[[columns]]
name = "age"
kind = "continuous"
unit = "years"
min = 18
max = 100
center = 55
scale = 15
required = true
[[columns]]
name = "glucose"
kind = "continuous"
unit = "mmol/L"
min = 1.5
max = 35
center = 5.8
scale = 1.6
[[columns]]
name = "smoker"
kind = "binary"
[[columns]]
name = "stage"
kind = "categorical"
categories = ["I", "II", "III"]
"""


def toy_frame(n=40, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(20, 90, n).astype(str),
        "glucose": np.round(rng.uniform(4, 12, n), 1).astype(str),
        "smoker": rng.integers(0, 2, n).astype(str),
        "stage": rng.choice(["I", "II", "III"], n),
        "outcome": rng.choice(["yes", "no"], n),
        "consent": "research",
    })


def eventually(condition, seconds: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `condition()` until it holds or `seconds` pass; its last value (for `assert eventually(...)`)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(interval)
    return bool(condition())


# Three generated hospitals of very different sizes: the Cox tests of the time-to-event kind
# (tests/integration/test_survival_federation.py, tests/unit/test_cox.py) train on them.
THREE_HOSPITALS = """
[[hospitals]]
name = "city-tertiary"
tier = "tertiary"
region = "north"
records = 3000
[[hospitals]]
name = "county-secondary"
tier = "secondary"
region = "south"
records = 1500
[[hospitals]]
name = "village-clinic"
tier = "community"
region = "west"
records = 400
"""


# Ten small generated community clinics of 400 records each: where a hospital alone has few records and the
# federation ten times as many. The DP federation test of each outcome kind
# (tests/integration/test_outcome_kinds_federation.py, test_survival_federation.py) checks on them, half of
# each site's records held out (`training.test_fraction = 0.5`), that the federation beats local-only;
# docs/results.md ("Against local-only under DP: ten small sites") has what was measured.
SMALL_SITES = "".join(
    f'[[hospitals]]\nname = "site-{i:02d}"\ntier = "community"\nregion = "{region}"\nrecords = 400\n'
    for i, region in enumerate(["north", "south", "east", "west", "central"] * 2, start=1))
SMALL_SITE_NAMES = [f"site-{i:02d}" for i in range(1, 11)]


# Three small generated hospitals of different tiers and regions (150, 240 and 90 records): the describe
# tests' own study (tests/unit/test_cohort_records.py, test_describe_hospital.py), after its name and seed.
THREE_SMALL_HOSPITALS = "".join(
    f'[[hospitals]]\nname = "{name}"\ntier = "{tier}"\nregion = "{region}"\nrecords = {records}\n'
    for name, tier, region, records in (("south", "secondary", "south", 150), ("north", "tertiary", "north", 240),
                                        ("clinic", "community", "west", 90)))


def times_at_interval_ends(follow_up: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Each follow-up time moved to the end of its interval (t_j, t_j+1]; past the last edge, as it is: the
    records a grid Kaplan-Meier estimate describes."""
    e = np.asarray(edges)
    k = np.maximum(np.searchsorted(e, follow_up, side="left") - 1, 0)
    return np.where(k < len(e) - 1, e[np.minimum(k + 1, len(e) - 1)], follow_up)


def check_kaplan_meier_against_scikit_survival(curve, follow_up: np.ndarray, event: np.ndarray,
                                               edges: tuple[float, ...]) -> None:
    """`curve` (a KMCurve of a summed vector without noise) equals scikit-survival's Kaplan-Meier estimate of
    the pooled records on times moved to their interval's end, at every interval end with an event or
    censoring, and its numbers at risk equal a direct count."""
    from sksurv.nonparametric import kaplan_meier_estimator

    late = follow_up > edges[-1]
    times, surv = kaplan_meier_estimator(event.astype(bool) & ~late, times_at_interval_ends(follow_up, edges))
    by_time = dict(zip(times, surv, strict=True))
    checked = 0
    for t, s in zip(curve.times, curve.survival, strict=True):
        if t in by_time:
            assert s == pytest.approx(by_time[t], rel=1e-12)
            checked += 1
    assert checked >= len(curve.times) - 1
    at_risk = [(follow_up > lo).sum() if lo > 0 else len(follow_up) for lo in edges[:-1]]
    assert np.array_equal(curve.at_risk, at_risk)
