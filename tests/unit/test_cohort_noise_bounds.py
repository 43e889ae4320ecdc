"""Each released figure's stated 95 % bound covers the noise's error about 95 % of the time (issue 19).

The table states, for every figure of a noised description, a 95 % half-width of the error the noise adds (the
delta method through the figure's cells; `fedhealth.statistics.table`). Here the default study's exact summed
vector (all eight hospitals' `local_statistics`, as the secure sum gives it without noise) is noised again and
again at the noise a description at epsilon 1 adds, and each figure's error is checked against the bound the
table states for that draw. The histogram quantiles' bounds are the roughest (measured 0.92 to 0.95 at 300
draws, docs/results.md), so every kind must reach 0.88 and all figures together 0.92.
"""

from __future__ import annotations

import collections

import numpy as np

from fedhealth.api import description_study
from fedhealth.data.cohort_records import cohort_records
from fedhealth.statistics import cohort_table, local_statistics
from fedhealth.statistics.study import description_terms
from tests.support import ROOT

DRAWS = 200


def test_the_stated_bounds_cover_the_noise_error_about_95_percent_of_the_time():
    cfg = description_study(ROOT / "configs" / "default.toml", epsilon=1.0)
    terms = description_terms(cfg)
    exact = sum(local_statistics(terms.layout, cohort_records(cfg, i).records) for i in range(len(cfg.hospitals)))
    truth = {(f.variable, f.statistic): f.value for f in cohort_table(terms.layout, exact, suppress_below=0).figures}
    sd = terms.noise_sd * np.sqrt(len(cfg.hospitals))  # eight hospitals' independent noise, summed
    rng = np.random.default_rng(7)
    covered: dict[str, list[bool]] = collections.defaultdict(list)
    for _ in range(DRAWS):
        noised = cohort_table(terms.layout, exact + rng.normal(0.0, sd, exact.shape), noise_sd=sd, suppress_below=0)
        for f in noised.figures:
            true = truth[(f.variable, f.statistic)]
            if f.value is None or true is None:  # withheld when the noise could exceed it: no claim made
                continue
            assert f.error > 0
            kind = "share" if f.statistic.startswith("share") else f.statistic
            covered[kind].append(abs(f.value - true) <= f.error)
    rates = {kind: float(np.mean(v)) for kind, v in covered.items()}
    assert set(rates) >= {"count", "missing share", "mean", "sd", "median", "q1", "q3", "share", "prevalence"}
    assert all(rate >= 0.88 for rate in rates.values()), rates
    assert 0.92 <= float(np.mean([x for v in covered.values() for x in v])) <= 0.99, rates
