"""A cohort description's public terms, derived from the study config alone, the same at every party.

The coordinator and each hospital compute these each on their own (neither trusts the other's figures): the
layout of the vector, the groups it is summed by, the noise multiplier that spends the requested epsilon in
one release, the sd of each hospital's noise, and the fixed-point scale of the sum cells in SecAgg+
(`fedhealth.statistics.transport`).

Groups: what a hospital sends is one layout-long slot for all hospitals, then one slot per tier and per
region that at least `SECAGG_MINIMUM` of the study's hospitals share (from the study's public hospital list).
A hospital fills the first slot and the slots of its own tier and region, zeros elsewhere, so the secure sum
gives the table of all hospitals and of each such group. A group of fewer hospitals gets no slot: its sum
would be one or two hospitals' own vectors. One record then adds to up to three slots, so the L2
sensitivity of what a hospital sends is the layout's times sqrt(1 + the kinds of group that have a slot),
and the noise is scaled to that: one epsilon covers every slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedhealth.statistics.layout import StatisticsError, StatisticsLayout

if TYPE_CHECKING:
    from fedhealth.study.config import StudyConfig


@dataclass(frozen=True)
class DescriptionTerms:
    """What every party derives from a study with a `[describe]` table.

    Attributes
    ----------
    layout : StatisticsLayout
        The vector's cells, from the study's schema (a generated study's built-in schema of its kind).
    noise_multiplier : float or None
        z such that one Gaussian release at sensitivity `layout.sensitivity` spends at most
        `describe.epsilon` at the study's delta; None for an exact description.
    groups : tuple of (str, str)
        The slots after the first (all hospitals): each tier and region of at least `SECAGG_MINIMUM` hospitals.
    noise_sd : float
        One hospital's noise sd on each cell of every slot (z x `sensitivity`; 0 when exact).
    clipping_range, scale : float, int
        SecAgg+'s c for the description and the fixed-point scale of the sum cells.
    delta : float
        The study's delta, at which the ledger composes this release with the hospital's training.
    """

    layout: StatisticsLayout
    groups: tuple[tuple[str, str], ...]  # (kind, value) of each slot after the first: ("tier", "community")
    noise_multiplier: float | None
    noise_sd: float
    clipping_range: float
    scale: int
    delta: float

    @property
    def slots(self) -> int:
        return 1 + len(self.groups)

    @property
    def length(self) -> int:
        """Cells a hospital sends: one layout per slot."""
        return self.slots * len(self.layout.cells)

    @property
    def sensitivity(self) -> float:
        """The L2 bound of one record on everything a hospital sends (module docstring)."""
        kinds = {kind for kind, _ in self.groups}
        return self.layout.sensitivity * math.sqrt(1 + len(kinds))

    def slot(self, vector, index: int):
        """Slot `index` (0: all hospitals; 1 + i: `groups[i]`) of a sent or summed vector."""
        n = len(self.layout.cells)
        return vector[index * n:(index + 1) * n]

    def hospital_slots(self, tier: str, region: str) -> list[int]:
        """The slots a hospital of this tier and region fills."""
        return [0] + [1 + i for i, g in enumerate(self.groups) if g in (("tier", tier), ("region", region))]


def study_groups(cfg: StudyConfig) -> tuple[tuple[str, str], ...]:
    """Each tier and region shared by at least `SECAGG_MINIMUM` of the study's hospitals, in a fixed order."""
    from collections import Counter

    from fedhealth.study.secagg import SECAGG_MINIMUM

    out: list[tuple[str, str]] = []
    for kind in ("tier", "region"):
        counts = Counter(getattr(h, kind) for h in cfg.hospitals)
        out += [(kind, value) for value in sorted(counts) if counts[value] >= SECAGG_MINIMUM]
    return tuple(out)


_cache: dict[str, DescriptionTerms] = {}


def description_terms(cfg: StudyConfig) -> DescriptionTerms:
    """The public terms of `cfg`'s description (cached per study: the calibration takes RDP evaluations)."""
    if cfg.describe is None:
        raise StatisticsError(f"study {cfg.name!r} has no [describe] table: it trains, it does not describe")
    key = cfg.fingerprint()
    if key not in _cache:
        from fedhealth.data.export import kind_schema
        from fedhealth.privacy.rdp import calibrate
        from fedhealth.statistics.transport import resolution
        from fedhealth.study.secagg import derive_secagg_params

        schema = cfg.study_schema if cfg.study_schema is not None else kind_schema(cfg.outcome_kind)
        layout = StatisticsLayout.from_schema(schema, bins=cfg.describe.bins)
        delta = cfg.privacy_delta()
        groups = study_groups(cfg)
        z = None if cfg.describe.epsilon is None else calibrate(cfg.describe.epsilon, delta, 1.0, 1)
        c = derive_secagg_params(cfg, 0.0).clipping_range
        draft = DescriptionTerms(layout, groups, z, 0.0, c, 1, delta)
        sd = 0.0 if z is None else z * draft.sensitivity
        scale = resolution(c, max(h.records for h in cfg.hospitals), sd)
        _cache.clear()
        _cache[key] = DescriptionTerms(layout, groups, z, sd, c, scale, delta)
    return _cache[key]
