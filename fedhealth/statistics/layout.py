"""The fixed layout of a hospital's cohort-statistics vector, built from the public study schema alone.

Why a layout: hospitals' vectors are summed cell by cell (under secure aggregation), so cell k must mean the
same count or sum at every hospital. The layout depends only on the schema and the number of histogram bins,
never on any record, so building it costs no privacy, and its `digest` lets two parties check they agree.

Blocks, in order (one record's contribution in brackets):

- ``n``: the record count [1].
- a numeric column (kind continuous or count, valid range [min, max]): its non-missing count [1 if present],
  the sum of u = (v - min) / (max - min) clipped to [0, 1] [u], the sum of u**2 [u**2], and a histogram of
  `bins` equal-width bins on [min, max] [1 in the value's bin]. A missing value adds nothing.
- a binary column: its non-missing count [1 if present] and its count of 1s [1 if the value is 1].
- a categorical column: one count per category and one of missing values [1 in exactly one of them].
- the outcome: binary, the positives [1 if positive]; multiclass, one count per class [1 in one];
  continuous, the numeric block over [value.min, value.max]; time_to_event, per follow-up interval
  (t_j, t_{j+1}] of the schema's `time.intervals` the events and the censorings whose time falls in it, and
  one count of follow-up past the last edge [1 in exactly one of these cells].
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedhealth.errors import UsageError

if TYPE_CHECKING:
    from fedhealth.study.schema import StudySchema

LAYOUT_VERSION = 1
DEFAULT_BINS = 20
OUTCOME = "outcome"  # the block name of the study's outcome


class StatisticsError(UsageError, ValueError):
    """A statistics vector or layout that cannot be used (wrong length, another layout): names what is wrong,
    never a record's value."""


@dataclass(frozen=True)
class Block:
    """One variable's cells: `kind` is numeric, binary, categorical, count (n), positives, classes or
    survival; `start` its first cell in the vector; `labels` its categories, classes or interval edges."""

    name: str
    kind: str
    start: int
    size: int
    unit: str = "1"
    low: float = 0.0
    high: float = 1.0
    labels: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()

    @property
    def stop(self) -> int:
        return self.start + self.size

    def cell_names(self, bins: int) -> list[str]:
        p = self.name
        if self.kind == "count":
            return [p]
        if self.kind == "numeric":
            return [f"{p}:count", f"{p}:sum_unit", f"{p}:sum_unit_sq"] + [f"{p}:bin[{k}]" for k in range(bins)]
        if self.kind == "binary":
            return [f"{p}:count", f"{p}:ones"]
        if self.kind in ("categorical", "classes"):
            return [f"{p}={c}" for c in self.labels] + ([f"{p}:missing"] if self.kind == "categorical" else [])
        if self.kind == "positives":
            return [f"{p}:positives"]
        k = len(self.edges) - 1  # survival
        return ([f"{p}:events({self.edges[j]:g},{self.edges[j + 1]:g}]" for j in range(k)]
                + [f"{p}:censored({self.edges[j]:g},{self.edges[j + 1]:g}]" for j in range(k)]
                + [f"{p}:beyond({self.edges[-1]:g}"])

    def max_square(self) -> float:
        """The largest squared L2 norm one record adds to this block (module docstring)."""
        return {"count": 1.0, "numeric": 4.0, "binary": 2.0}.get(self.kind, 1.0)

    def canonical(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "start": self.start, "size": self.size, "unit": self.unit,
                "low": self.low, "high": self.high, "labels": list(self.labels), "edges": list(self.edges)}


@dataclass(frozen=True)
class StatisticsLayout:
    """The cells of a cohort-statistics vector (float64, `len(cells)` long) and what one record can change.

    Attributes
    ----------
    outcome : str
        The study's outcome kind (binary, multiclass, continuous, time_to_event).
    bins : int
        Equal-width histogram bins per numeric column.
    blocks : tuple of Block
        The variables in vector order: ``n``, the schema's columns in schema order, then ``outcome``.
    """

    outcome: str
    bins: int
    blocks: tuple[Block, ...]
    cells: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", tuple(c for b in self.blocks for c in b.cell_names(self.bins)))

    @classmethod
    def from_schema(cls, schema: StudySchema, bins: int = DEFAULT_BINS) -> StatisticsLayout:
        """The layout of `schema`'s columns and outcome, with `bins` histogram bins per numeric column."""
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise StatisticsError(f"bins must be a whole number of at least 1, got {bins!r}")
        blocks: list[Block] = []
        at = 0

        def add(name: str, kind: str, size: int, **kw: object) -> None:
            nonlocal at
            blocks.append(Block(name, kind, at, size, **kw))  # type: ignore[arg-type]
            at += size

        add("n", "count", 1)
        for c in schema.columns:
            if c.kind == "categorical":
                labels = tuple(str(v) for v in c.categories or ())
                add(c.name, "categorical", len(labels) + 1, unit=c.unit, labels=labels)
            elif c.kind == "binary":
                add(c.name, "binary", 2, unit=c.unit)
            else:
                lo, hi = c.bounds
                add(c.name, "numeric", 3 + bins, unit=c.unit, low=lo, high=hi)
        kind = schema.study.outcome
        if kind == "binary":
            add(OUTCOME, "positives", 1)
        elif kind == "multiclass":
            names = tuple(k.name for k in schema.label.classes or ())
            add(OUTCOME, "classes", len(names), labels=names)
        elif kind == "continuous":
            v = schema.value
            assert v is not None
            add(OUTCOME, "numeric", 3 + bins, unit=v.unit, low=float(v.min), high=float(v.max))
        else:
            t = schema.time
            assert t is not None
            edges = tuple(float(e) for e in t.intervals)
            add(OUTCOME, "survival", 2 * (len(edges) - 1) + 1, unit=t.unit, edges=edges)
        return cls(kind, bins, tuple(blocks))

    def __len__(self) -> int:
        return len(self.cells)

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise StatisticsError(f"the layout has no variable {name!r}; it has {', '.join(b.name for b in self.blocks)}")

    @property
    def sensitivity(self) -> float:
        """The exact L2 bound of one record's contribution (adding or removing it), with the vector's privacy
        meaning: the Gaussian mechanism's noise is scaled to it.

        Derivation: each record adds 1 to ``n``; to a numeric block at most 1 (count) + 1 (u <= 1) + 1 (u**2
        <= 1) + 1 (one bin), squared norm <= 4, reached at v = max; to a binary block at most 1 + 1 (present
        and 1), squared norm 2; to a categorical block exactly 1 in one cell; to the outcome 1 (positives, a
        class, one survival cell) or 4 (a continuous outcome's numeric block). So the squared norm is at most
        1 + 4 numeric + 2 binary + categorical + outcome, and a record with every numeric value at its
        maximum, every binary value 1 and a positive (or maximal) outcome reaches it: the bound is tight.
        """
        return math.sqrt(sum(b.max_square() for b in self.blocks))

    def canonical_json(self) -> str:
        return json.dumps({"version": LAYOUT_VERSION, "outcome": self.outcome, "bins": self.bins,
                           "blocks": [b.canonical() for b in self.blocks], "cells": list(self.cells)},
                          sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """SHA-256 of the layout's canonical JSON: equal digests mean the same cells in the same order."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def check(self, vector: np.ndarray, digest: str | None = None) -> np.ndarray:
        """`vector` as float64 after checking it fits this layout (and `digest`, when given); StatisticsError
        naming the mismatch (lengths, digests, how many cells are not finite; never a value) otherwise."""
        if digest is not None and digest != self.digest:
            raise StatisticsError(f"the vector was built with layout {digest[:16]}, not this layout "
                                  f"{self.digest[:16]}: build both from the same schema and bins")
        v = np.asarray(vector, dtype=np.float64)
        if v.ndim != 1 or v.shape[0] != len(self.cells):
            raise StatisticsError(f"a statistics vector of this layout has {len(self.cells)} cells, got shape "
                                  f"{v.shape}: build it with local_statistics on the same layout")
        bad = int((~np.isfinite(v)).sum())
        if bad:
            raise StatisticsError(f"{bad} cells of the statistics vector are not finite numbers")
        return v


def histogram_edges(block: Block, bins: int) -> np.ndarray:
    """The `bins + 1` equal-width edges of a numeric block's histogram on [low, high] (np.histogram's)."""
    return np.linspace(block.low, block.high, bins + 1)


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's bin: [e_k, e_k+1), the last bin closed, as np.histogram; values outside go to the end bins."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def interval_index(time: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Each follow-up time's interval (t_j, t_j+1] (time 0 in the first); len(edges) - 1 past the last edge."""
    k = np.searchsorted(np.asarray(edges), time, side="left") - 1
    return np.maximum(k, 0)
