"""Each hospital's contribution: leave-one-out and Shapley values of a coalition game.

The game's value v(S) is what a federation of the hospitals in S achieves (fedhealth uses the
federated model's AUROC on every hospital's test records), so evaluating v means running a whole
federation: these estimators count distinct coalitions, and the caller caches them.

- Leave-one-out: v(N) - v(N minus i); n + 1 coalitions.
- Shapley: the mean marginal contribution v(P_i + i) - v(P_i) over orderings of the hospitals,
  where P_i are those before i. Exact over all 2^n coalitions when affordable; otherwise Monte Carlo
  over sampled permutations (Castro, Gomez and Tejada 2009), with each value's standard error from
  the spread of its marginal contributions (zero when exact). Every sampled permutation gives every
  player one marginal contribution, so the estimates stay efficient: they sum to v(N) - v(empty).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

Value = Callable[[frozenset], float]


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: float
    samples: int  # marginal contributions averaged (permutations, or orderings for exact)


def leave_one_out(players: Sequence[Hashable], value: Value) -> dict[Hashable, float]:
    grand = frozenset(players)
    full = value(grand)
    return {p: full - value(grand - {p}) for p in players}


def exact_shapley(players: Sequence[Hashable], value: Value) -> dict[Hashable, Estimate]:
    """The Shapley value from every coalition (2^n evaluations of v)."""
    n = len(players)
    out = {}
    for p in players:
        others = [q for q in players if q != p]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                s = frozenset(subset)
                total += weight * (value(s | {p}) - value(s))
        out[p] = Estimate(total, 0.0, math.factorial(n))
    return out


def sampled_shapley(players: Sequence[Hashable], value: Value, permutations: int | None,
                    rng: np.random.Generator,
                    affordable: Callable[[list[frozenset]], bool] | None = None) -> dict[Hashable, Estimate]:
    """Monte Carlo Shapley over `permutations` random orderings of the players.

    `affordable(coalitions)`, if given, sees the coalitions a permutation would evaluate before it is
    evaluated; sampling stops at the first permutation it refuses (a budget of federations, with the
    caller caching the values). `permutations=None`: no fixed number, until `affordable` refuses.
    Every player's `samples` is the number of permutations taken (0: none was affordable)."""
    if permutations is None and affordable is None:
        raise ValueError("give a number of permutations, or an affordable() budget to stop at")
    if permutations is not None and permutations < 1:
        raise ValueError("permutations must be at least 1")
    marginals: dict[Hashable, list[float]] = {p: [] for p in players}
    taken = 0
    while permutations is None or taken < permutations:
        order = [players[i] for i in rng.permutation(len(players))]
        if affordable is not None and not affordable([frozenset(order[:k]) for k in range(1, len(order) + 1)]):
            break
        taken += 1
        before: frozenset = frozenset()
        previous = value(before)
        for p in order:
            now = before | {p}
            current = value(now)
            marginals[p].append(current - previous)
            before, previous = now, current
    if taken == 0:
        return {p: Estimate(float("nan"), float("nan"), 0) for p in players}
    out = {}
    for p, values in marginals.items():
        arr = np.asarray(values, dtype=float)
        stderr = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan")
        out[p] = Estimate(float(arr.mean()), stderr, len(arr))
    return out
