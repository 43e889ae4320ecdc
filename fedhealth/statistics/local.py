"""One hospital's exact cohort-statistics vector from its own records.

Privacy meaning: the vector is the hospital's raw aggregate; it never leaves as it is. It is summed with the
other hospitals' under secure aggregation, optionally after Gaussian noise charged to the hospital's ledger
(`fedhealth.statistics.mechanism`). Its cells are those of `StatisticsLayout` (see its module docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedhealth.statistics.layout import (
    OUTCOME,
    Block,
    StatisticsError,
    StatisticsLayout,
    bin_index,
    histogram_edges,
    interval_index,
)

if TYPE_CHECKING:
    from fedhealth.data.validation import ValidRecords


def _numeric(block: Block, bins: int, x: np.ndarray) -> np.ndarray:
    present = ~np.isnan(x)
    v = x[present]
    u = np.clip((v - block.low) / (block.high - block.low), 0.0, 1.0)
    hist = np.bincount(bin_index(v, histogram_edges(block, bins)), minlength=bins).astype(np.float64)
    return np.concatenate([[float(present.sum()), float(u.sum()), float(np.square(u).sum())], hist])


def _categorical(size: int, x: np.ndarray) -> np.ndarray:
    """Counts of category indices 0..size-2, and of missing values in the last cell."""
    present = ~np.isnan(x)
    idx = x[present].astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() > size - 2):
        raise StatisticsError(f"a categorical value's index lies outside its {size - 1} categories: pass records "
                              "checked by validate_table against the same schema")
    out = np.bincount(idx, minlength=size).astype(np.float64)
    out[size - 1] = float((~present).sum())
    return out


def local_statistics(layout: StatisticsLayout, records: ValidRecords) -> np.ndarray:
    """The exact statistics vector of `records` (validated against the schema `layout` was built from).

    Parameters
    ----------
    layout : StatisticsLayout
        The study's layout; the vector has `len(layout.cells)` float64 cells in its order.
    records : ValidRecords
        The hospital's usable rows (`validate_table`): values in schema column order, NaN = missing.

    Returns
    -------
    numpy.ndarray
        Counts (whole numbers) and [0, 1]-scaled sums; the sum over hospitals is the pooled cohort's vector.
    """
    x = np.asarray(records.values, dtype=np.float64)
    columns = [b for b in layout.blocks if b.name not in ("n", OUTCOME)]
    if x.ndim != 2 or x.shape[1] != len(columns):
        raise StatisticsError(f"the records hold {x.shape[1] if x.ndim == 2 else '?'} columns, the layout "
                              f"{len(columns)}: validate them against the schema the layout was built from")
    n = x.shape[0]
    label = np.asarray(records.label)
    if label.shape[0] != n:
        raise StatisticsError(f"{n} rows of values but {label.shape[0]} labels: the records are inconsistent")
    parts: list[np.ndarray] = [np.array([float(n)])]
    for i, b in enumerate(columns):
        col = x[:, i]
        if b.kind == "numeric":
            parts.append(_numeric(b, layout.bins, col))
        elif b.kind == "binary":
            present = ~np.isnan(col)
            parts.append(np.array([float(present.sum()), float((col[present] == 1).sum())]))
        else:
            parts.append(_categorical(b.size, col))
    out = layout.block(OUTCOME)
    if out.kind == "positives":
        parts.append(np.array([float((label == 1).sum())]))
    elif out.kind == "classes":
        parts.append(_categorical(out.size + 1, label.astype(np.float64))[:-1])
    elif out.kind == "numeric":
        parts.append(_numeric(out, layout.bins, label.astype(np.float64)))
    else:
        if records.time is None:
            raise StatisticsError("a time_to_event layout needs the records' follow-up times (records.time)")
        k = len(out.edges) - 1
        j = interval_index(np.asarray(records.time, dtype=np.float64), out.edges)
        event = label.astype(bool) & (j < k)
        cell = np.where(j >= k, 2 * k, np.where(event, j, k + j))
        parts.append(np.bincount(cell, minlength=out.size).astype(np.float64))
    return np.concatenate(parts)
