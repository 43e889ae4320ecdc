"""A federated "Table 1" from a summed (possibly noised) statistics vector: nothing here sees a record.

Noised counts: a count cell is rounded to the nearest whole number and clamped at 0 (noise can make it
negative or fractional); a [0, 1]-scaled sum is clamped to [0, count] and its square sum to
[sum**2 / count, sum], the values an exact vector can take; a histogram's bins are clamped at 0. Without
noise (`noise_sd = 0`) every clamp is a no-op, so each figure is exactly that of the pooled records.

Error bounds: each figure's `error` is the 95 % half-width (1.96 sd, by the delta method) of the added noise
alone, given the noise sd on every cell (`fedhealth.statistics.mechanism.figure_noise_sd`); 0 without noise.
It is not a sampling interval.

Small cells: a count in 1 to `suppress_below - 1` is never shown, nor any figure that reveals it (a share,
a mean of those few values, the complement of a binary share); when one category of a variable is withheld
the next-smallest is too, so it cannot be recovered by subtraction. A zero is shown (it names no one).
`suppress_below = 0` disables suppression.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedhealth.statistics.layout import OUTCOME, Block, StatisticsError, StatisticsLayout, histogram_edges

Z95 = 1.959963984540054
DEFAULT_SUPPRESS_BELOW = 5


@dataclass(frozen=True)
class Figure:
    """One figure of the table: `value` None when withheld or undefined, `suppressed` then says why."""

    variable: str
    statistic: str
    value: float | None
    error: float = 0.0
    unit: str = "1"
    suppressed: str | None = None


@dataclass(frozen=True)
class CohortTable:
    """The federated cohort table: `n` and one `Figure` per statistic, in the layout's variable order."""

    n: int
    figures: tuple[Figure, ...]
    noise_sd: float
    suppress_below: int

    def rows(self) -> list[dict[str, Any]]:
        """Plain dict rows (variable, statistic, value, error, unit, suppressed) for a CSV or HTML writer."""
        return [asdict(f) for f in self.figures]

    def figure(self, variable: str, statistic: str) -> Figure:
        for f in self.figures:
            if (f.variable, f.statistic) == (variable, statistic):
                return f
        raise StatisticsError(f"the table has no figure {statistic!r} of {variable!r}")


def histogram_quantile(counts: np.ndarray, edges: np.ndarray, p: float) -> float:
    """Quantile `p` of a histogram by linear interpolation inside the bin where the cumulative count reaches
    p x total (negative bins clamped to 0); nan for an empty histogram."""
    c = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    total = c.sum()
    if total <= 0:
        return math.nan
    cum = np.cumsum(c)
    target = p * total
    k = min(int(np.searchsorted(cum, target, side="left")), len(c) - 1)
    before = cum[k] - c[k]
    frac = (target - before) / c[k] if c[k] > 0 else 0.0
    return float(edges[k] + min(max(frac, 0.0), 1.0) * (edges[k + 1] - edges[k]))


def _quantile_error(counts: np.ndarray, edges: np.ndarray, p: float, sd: float) -> float:
    """Delta-method 95 % half-width of `histogram_quantile` under noise sd `sd` on every bin."""
    if sd == 0:
        return 0.0
    c = np.maximum(counts, 0.0)
    total, cum = c.sum(), np.cumsum(c)
    k = min(int(np.searchsorted(cum, p * total, side="left")), len(c) - 1)
    if c[k] <= 0:
        return math.inf
    width = edges[k + 1] - edges[k]
    num = p * total - (cum[k] - c[k])
    # d q / d bins: before k, (p - 1) w / c_k; bin k, w (p - num / c_k) / c_k; after k, p w / c_k
    g = np.full(len(c), p * width / c[k])
    g[:k] = (p - 1.0) * width / c[k]
    g[k] = width * (p - num / c[k]) / c[k]
    return float(Z95 * sd * np.sqrt(np.square(g).sum()))


class _Builder:
    def __init__(self, layout: StatisticsLayout, v: np.ndarray, sd: float, below: int) -> None:
        self.layout, self.v, self.sd, self.below = layout, v, sd, below
        self.figures: list[Figure] = []
        self.n = self.count(v[0])

    @staticmethod
    def count(x: float) -> int:
        return max(0, round(float(x)))

    def small(self, k: int) -> bool:
        return 0 < k < self.below

    def withheld(self, block: Block, statistic: str, why: str) -> None:
        self.figures.append(Figure(block.name, statistic, None, 0.0, block.unit, why))

    def add(self, block: Block, statistic: str, value: float, error: float, unit: str | None = None) -> None:
        if not (math.isfinite(value) and math.isfinite(error)):
            # e.g. an sd whose noised sums of squares came out below their mean's square: a number here would
            # be the noise's, not the cohort's
            self.withheld(block, statistic, "not estimable at this epsilon: the noise added could exceed it")
            return
        self.figures.append(Figure(block.name, statistic, value, error, block.unit if unit is None else unit))

    def few(self, what: str) -> str:
        return f"suppressed: {what} fewer than {self.below} records"

    def share_of_n(self, block: Block, statistic: str, k: int, error_p: float | None = None) -> None:
        """k / n, for k and n separate noised cells (or k derived as n - a cell)."""
        if self.n == 0:
            self.withheld(block, statistic, "undefined: no records")
            return
        p = k / self.n
        self.add(block, statistic, p, Z95 * self.sd * math.sqrt(1 + (error_p if error_p is not None else p) ** 2)
                 / self.n, unit="1")

    def numeric(self, b: Block) -> None:
        v, bins = self.v[b.start:b.stop], self.layout.bins
        c = self.count(v[0])
        missing = max(self.n - c, 0) if b.name != OUTCOME else None
        if missing is not None:
            if self.small(missing):
                self.withheld(b, "missing share", self.few("missing values of"))
            else:
                self.share_of_n(b, "missing share", missing, error_p=c / self.n if self.n else 0.0)
        stats = ("mean", "sd", "median", "q1", "q3")
        if c == 0 or self.small(c):
            for s in stats:
                self.withheld(b, s, "undefined: no values" if c == 0 else self.few("values from"))
            return
        s_, q = min(max(float(v[1]), 0.0), c), float(v[2])
        q = min(max(q, s_ * s_ / c), s_)
        w, m = b.high - b.low, s_ / c
        self.add(b, "mean", b.low + w * m, Z95 * self.sd * w * math.sqrt(1 + m * m) / c)
        if c < 2:
            self.withheld(b, "sd", "undefined: one value")
        else:
            var = max((q - s_ * s_ / c) / (c - 1), 0.0)
            sd_u = math.sqrt(var)
            if sd_u > 0 and self.sd > 0:
                grad = np.array([-2 * s_ / (c * (c - 1)), 1 / (c - 1), (m * m - var) / (c - 1)]) / (2 * sd_u)
                err = Z95 * self.sd * w * float(np.sqrt(np.square(grad).sum()))
            else:
                err = 0.0 if self.sd == 0 else math.inf
            self.add(b, "sd", w * sd_u, err)
        hist, edges = v[3:3 + bins], histogram_edges(b, bins)
        for name, p in (("median", 0.5), ("q1", 0.25), ("q3", 0.75)):
            self.add(b, name, histogram_quantile(hist, edges, p), _quantile_error(hist, edges, p, self.sd))

    def shares(self, b: Block, counts: list[int], labels: tuple[str, ...], prefix: str) -> None:
        """Shares of categories among the non-missing, with primary and secondary suppression."""
        total = sum(counts)
        hidden = {i for i, k in enumerate(counts) if self.small(k)}
        if len(hidden) == 1:
            rest = [i for i, k in enumerate(counts) if i not in hidden and k > 0]
            if rest:
                hidden.add(min(rest, key=lambda i: counts[i]))
        for i, (label, k) in enumerate(zip(labels, counts, strict=True)):
            statistic = f"{prefix}{label}"
            if total == 0:
                self.withheld(b, statistic, "undefined: no values")
            elif i in hidden:
                self.withheld(b, statistic, self.few("this category holds") if self.small(k) else
                              "suppressed: would reveal a suppressed category by subtraction")
            else:
                p = k / total
                err = Z95 * self.sd * math.sqrt((1 - p) ** 2 + (len(counts) - 1) * p * p) / total
                self.add(b, statistic, p, err, unit="1")

    def binary_share(self, b: Block, statistic: str, ones: int, of: int) -> None:
        if of == 0:
            self.withheld(b, statistic, "undefined: no values")
        elif self.small(ones) or self.small(of - ones):
            self.withheld(b, statistic, self.few("one of its two values has"))
        else:
            p = ones / of
            self.add(b, statistic, p, Z95 * self.sd * math.sqrt(1 + p * p) / of, unit="1")

    def build(self) -> None:
        if self.small(self.n):
            self.figures.append(Figure("n", "count", None, 0.0, suppressed=self.few("the cohort has")))
        else:
            self.figures.append(Figure("n", "count", float(self.n), Z95 * self.sd))
        for b in self.layout.blocks[1:]:
            v = self.v[b.start:b.stop]
            if b.kind == "numeric":
                self.numeric(b)
            elif b.kind == "binary":
                c, ones = self.count(v[0]), self.count(v[1])
                ones = min(ones, c)
                missing = max(self.n - c, 0)
                if self.small(missing):
                    self.withheld(b, "missing share", self.few("missing values of"))
                else:
                    self.share_of_n(b, "missing share", missing, error_p=c / self.n if self.n else 0.0)
                self.binary_share(b, "share of 1", ones, c)
            elif b.kind == "categorical":
                counts = [self.count(x) for x in v]
                if self.small(counts[-1]):
                    self.withheld(b, "missing share", self.few("missing values of"))
                else:
                    self.share_of_n(b, "missing share", counts[-1])
                self.shares(b, counts[:-1], b.labels, "share ")
            elif b.kind == "positives":
                self.binary_share(b, "prevalence", min(self.count(v[0]), self.n), self.n)
            elif b.kind == "classes":
                self.shares(b, [self.count(x) for x in v], b.labels, "share ")
            else:  # survival
                k = len(b.edges) - 1
                events = min(sum(self.count(x) for x in v[:k]), self.n)
                self.binary_share(b, "event share", events, self.n)
                # follow-up: each record leaves in one interval (event or censoring) or is followed past the last
                # edge, so the exits per interval are a histogram of observed follow-up times on the schema's grid
                exits = np.maximum(np.asarray(v[:k], dtype=np.float64) + np.asarray(v[k:2 * k], dtype=np.float64), 0)
                edges = np.asarray(b.edges, dtype=np.float64)
                if self.n == 0 or exits.sum() < 0.5 * self.n:
                    self.withheld(b, "median follow-up", f"undefined: most records are followed past the last "
                                                         f"interval edge ({edges[-1]:g} {b.unit})")
                else:
                    p = 0.5 * self.n / float(exits.sum())
                    self.add(b, "median follow-up", histogram_quantile(exits, edges, p),
                             _quantile_error(exits, edges, p, self.sd), unit=b.unit)


def cohort_table(layout: StatisticsLayout, vector: np.ndarray, noise_sd: float = 0.0,
                 suppress_below: int = DEFAULT_SUPPRESS_BELOW, digest: str | None = None) -> CohortTable:
    """The cohort table of a summed statistics vector.

    Parameters
    ----------
    layout : StatisticsLayout
        The layout every hospital's vector was built with (`digest`, when given, is checked against it).
    vector : numpy.ndarray
        The sum of the hospitals' vectors, possibly noised.
    noise_sd : float
        The noise sd on each cell of `vector` (`figure_noise_sd`): sets each figure's stated error; 0: exact.
    suppress_below : int
        Counts from 1 to this minus 1 are withheld with the figures that reveal them (module docstring); 0
        disables suppression.
    """
    v = layout.check(vector, digest)
    if not math.isfinite(noise_sd) or noise_sd < 0:
        raise StatisticsError(f"noise_sd must be a finite number of at least 0, got {noise_sd!r}")
    if isinstance(suppress_below, bool) or not isinstance(suppress_below, int) or suppress_below < 0:
        raise StatisticsError(f"suppress_below must be a whole number of at least 0, got {suppress_below!r}")
    builder = _Builder(layout, v, float(noise_sd), suppress_below)
    builder.build()
    return CohortTable(builder.n, tuple(builder.figures), float(noise_sd), suppress_below)
