"""How a statistics vector travels through SecAgg+ so that the secure sum is exact: every cell an integer.

Flower's SecAgg+ quantises each value x into [0, Q] as (clip(x, -c, c) + c) x Q / (2c), with stochastic
rounding, before masking. For a cohort description the study sets c = Q / 2 and every weight to 1
(`fedhealth.study.secagg.derive_secagg_params`): the quantiser is then the identity shift x + c, which leaves
an integer exactly as it is, and the unmasked sum is the exact sum of the hospitals' integers. So each
hospital sends its vector as integers:

- count cells (record counts, non-missing counts, histogram bins, categories, classes, events and
  censorings) as they are (noise, when added, is rounded to the nearest integer: post-processing, which
  costs no privacy);
- the two sum cells of a numeric block (the sum of u = (v - min) / (max - min), and of u squared) in fixed
  point: multiplied by `resolution`, a power of two chosen from public figures only (the clipping range and
  the largest declared hospital), and rounded. A hospital's sum then carries an error of at most
  0.5 / resolution, and the secure sum of m hospitals at most m x 0.5 / resolution, in units of u: at 20,000
  records and Q = 2**29, resolution 2**13, so a mean of u is off by at most about 3e-9 of the column's range.

Privacy meaning: none of this is a protection; it is the arithmetic that makes "the server sees only the
sum" also "the server sees exactly the sum".
"""

from __future__ import annotations

import math

import numpy as np

from fedhealth.statistics.layout import StatisticsError, StatisticsLayout

NOISE_TAILS = 12.0  # standard deviations of the added noise kept inside the clipping range


def sum_cells(layout: StatisticsLayout) -> np.ndarray:
    """A boolean mask of the cells that hold sums of u or u squared (fixed point); the rest are counts."""
    mask = np.zeros(len(layout.cells), dtype=bool)
    for b in layout.blocks:
        if b.kind == "numeric":
            mask[b.start + 1: b.start + 3] = True
    return mask


def resolution(clipping_range: float, largest_records: int, noise_sd: float = 0.0) -> int:
    """The fixed-point scale of the sum cells: the largest power of two at which a hospital of
    `largest_records` records, with noise of sd `noise_sd` on each cell, stays inside the clipping range.

    Parameters
    ----------
    clipping_range : float
        SecAgg+'s c (half its quantisation range for a description).
    largest_records : int
        The largest hospital's declared record count (public: the study config).
    noise_sd : float
        The sd of one hospital's noise on a cell, 0 for an exact description.
    """
    reach = float(largest_records) + NOISE_TAILS * float(noise_sd) + 1.0
    if not (math.isfinite(reach) and reach > 0 and clipping_range > reach):
        raise StatisticsError(f"a hospital's cells (up to {reach:.3g} with the noise) do not fit SecAgg+'s "
                              f"clipping range {clipping_range:g}: lower the number of hospitals per round or "
                              "the noise")
    return 2 ** int(math.floor(math.log2(clipping_range / reach)))


def encode(layout: StatisticsLayout, vector: np.ndarray, scale: int, clipping_range: float) -> np.ndarray:
    """The integers (as float64) one hospital sends: count cells rounded, sum cells times `scale` rounded.
    StatisticsError if any cell would leave the clipping range (SecAgg+ would clip it silently)."""
    v = layout.check(vector)
    out = np.rint(np.where(sum_cells(layout), v * float(scale), v))
    outside = int((np.abs(out) > clipping_range).sum())
    if outside:
        raise StatisticsError(f"{outside} cells of the statistics vector lie outside SecAgg+'s clipping range "
                              f"{clipping_range:g}; not sending (it would clip them)")
    return out


def decode(layout: StatisticsLayout, summed: np.ndarray, scale: int) -> np.ndarray:
    """The summed vector in the layout's units from the secure sum of encoded vectors. The sum arrives as a
    float mean times the number of contributors; rounding restores its integers exactly."""
    v = np.rint(layout.check(summed))
    return np.where(sum_cells(layout), v / float(scale), v)
