"""`fedhealth contribution`: what each hospital contributes, by re-running the federation on coalitions.

Under secure aggregation no one sees a single hospital's update, so contribution cannot be read
off the updates. It is measured the only honest way left: run the same federation with only some
hospitals training (`federation.participants`; everyone still evaluates, data and splits unchanged)
and compare what the resulting models achieve. The value of a coalition is the headline figure of its
federated model on every hospital's test records together (AUROC, C-index, macro AUROC or R², by the
study's outcome kind; `fedhealth.experiments.headline_scores`); the empty coalition is worth what no model
is (0.5 for a model that ranks at random, R² 0 for one that predicts the test records' mean).

Simulation only. In a deployment every coalition federation would spend every member's privacy
budget again (and expose which hospitals were in which run), so this never runs there: the command
takes a study config and runs Flower's simulation engine. Coalition runs aggregate in the clear
(SecAgg+ protects against the server, and this valuation is simulation-only) and skip references.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.errors import FederationBudgetError
from fedhealth.experiments.headline_scores import NO_MODEL_VALUE, display
from fedhealth.metrics.headline import headline, label
from fedhealth.metrics.shapley import exact_shapley, leave_one_out, sampled_shapley
from fedhealth.runs import rundir
from fedhealth.seeding import derive_seed
from fedhealth.study.config import StudyConfig, variant

log = logging.getLogger(__name__)

CONTRIBUTION_FILE = rundir.CONTRIBUTION_FILE


class BudgetExhausted(FederationBudgetError, RuntimeError):
    """The next coalition would exceed the number of federations the user allowed."""


def coalition_config(cfg: StudyConfig, members: frozenset[str]) -> StudyConfig:
    """The study with only `members` taking part, aggregated in the clear (a coalition's value is a
    simulation's counterfactual; a site policy could refuse the plain aggregation these runs use)."""
    return variant(cfg, f"{cfg.name}-coalition",
                   {"federation.participants": [h.name for h in cfg.hospitals if h.name in members],
                    "federation.secure_aggregation.enabled": False}, references=False, site_policies=False)


class CoalitionValues:
    """v(S): run (once, then cached) the federation of coalition S and score its model."""

    def __init__(self, cfg: StudyConfig, out: Path, budget: int) -> None:
        self.cfg, self.out, self.budget = cfg, out, budget
        self.metric = headline(cfg.outcome_kind)
        self.values: dict[frozenset, float] = {frozenset(): NO_MODEL_VALUE[self.metric]}
        self.runs = 0

    def needs(self, coalitions: list[frozenset]) -> int:
        return len({c for c in coalitions if c not in self.values})

    def __call__(self, members: frozenset) -> float:
        if members in self.values:
            return self.values[members]
        if self.runs >= self.budget:
            raise BudgetExhausted(f"budget of {self.budget} federations used")
        self.runs += 1
        started = time.perf_counter()
        value = self._evaluate(members)
        self.values[members] = value
        log.warning("coalition %d/%d (%s): %s %s in %.0f s", self.runs, self.budget,
                    ", ".join(sorted(members)), self.metric, display(value), time.perf_counter() - started)
        return value

    def _evaluate(self, members: frozenset) -> float:
        """One real federation of the coalition (Flower's simulation engine), scored on all test records."""
        from fedhealth.data.hospitals import load_hospital
        from fedhealth.experiments.simulate import run_sibling, shared_ray
        from fedhealth.experiments.sweep import score

        ccfg = coalition_config(self.cfg, members)
        with shared_ray():  # coalition after coalition on one Ray instance (see simulate.shared_ray)
            weights = run_sibling(ccfg, self.out / rundir.COALITIONS_DIR / f"{self.runs:04d}")
        splits = [load_hospital(self.cfg, i) for i in range(len(self.cfg.hospitals))]
        return score(self.cfg, splits, weights)[f"all_records_{self.metric}"]


def estimate_contributions(cfg: StudyConfig, out: Path, budget: int,
                           values: type[CoalitionValues] = CoalitionValues) -> dict[str, Any]:
    """Leave-one-out and Shapley values within `budget` federations; writes `contribution.json` to `out`.

    Exact Shapley when all 2^n - 1 coalitions fit the budget; else leave-one-out (n + 1 federations)
    and as many sampled permutations as the rest of the budget allows (at least 2)."""
    players = [h.name for h in cfg.hospitals]
    n = len(players)
    loo_needs = 1 + n
    if budget < loo_needs:
        raise ValueError(f"--budget {budget} is below the {loo_needs} federations leave-one-out needs for "
                         f"{n} hospitals (the full study and each hospital left out); raise it")
    out.mkdir(parents=True, exist_ok=True)
    from fedhealth.experiments.interrupts import stopped_as
    from fedhealth.experiments.simulate import shared_ray

    with stopped_as("the contribution estimate", out), shared_ray():  # SIGINT/SIGTERM: RunInterrupted
        return _estimate(cfg, out, budget, values(cfg, out, budget), players)


def _estimate(cfg: StudyConfig, out: Path, budget: int, value: CoalitionValues, players: list[str]
              ) -> dict[str, Any]:
    n = len(players)
    grand = frozenset(players)
    loo = leave_one_out(players, value)
    exact = 2**n - 1 <= budget
    if exact:
        shapley = exact_shapley(players, value)
        permutations = None
    else:
        rng = np.random.default_rng(derive_seed(cfg.seed, "shapley-permutations"))
        # as many permutations as the budget allows: stop before one whose new coalitions would exceed it
        shapley = sampled_shapley(players, value, None, rng,
                                  affordable=lambda prefixes: value.runs + value.needs(prefixes) <= budget)
        permutations = shapley[players[0]].samples
        if permutations < 2:
            raise ValueError(f"--budget {budget} leaves room for {permutations} sampled permutation(s) of {n} "
                             "hospitals after leave-one-out; a standard error needs at least 2: raise it")
    result = {
        "study": cfg.name,
        "outcome": cfg.outcome_kind,
        "metric": value.metric,
        "value": f"{label(value.metric)} of the coalition's federated model on every hospital's test records "
                 "together",
        "empty_coalition_value": value.values[frozenset()],
        "grand_coalition_value": value(grand),
        "method": "exact" if exact else "Monte Carlo permutation sampling",
        "permutations": permutations,
        "budget": budget,
        "federations_run": value.runs,
        "hospitals": [{"name": p, "records": h.records, "tier": h.tier, "leave_one_out": loo[p],
                       "shapley": shapley[p].value, "shapley_stderr": shapley[p].stderr}
                      for p, h in zip(players, cfg.hospitals, strict=True)],
        "coalitions": [{"members": sorted(c), "value": v} for c, v in value.values.items() if c],
        "note": "simulation only: in a deployment every coalition would spend its members' privacy budget again",
    }
    rundir.write_json(out / CONTRIBUTION_FILE, result)
    return result
