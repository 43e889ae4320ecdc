"""A cohort description's public terms, derived from the study config alone, the same at every party.

The coordinator and each hospital compute these each on their own (neither trusts the other's figures): the
layout of the vector, the noise multiplier that spends the requested epsilon in one release, the sd of each
hospital's noise, and the fixed-point scale of the sum cells in SecAgg+ (`fedhealth.statistics.transport`).
"""

from __future__ import annotations

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
    noise_sd : float
        One hospital's noise sd on each cell (z x sensitivity; 0 when exact).
    clipping_range, scale : float, int
        SecAgg+'s c for the description and the fixed-point scale of the sum cells.
    delta : float
        The study's delta, at which the ledger composes this release with the hospital's training.
    """

    layout: StatisticsLayout
    noise_multiplier: float | None
    noise_sd: float
    clipping_range: float
    scale: int
    delta: float


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
        z = None if cfg.describe.epsilon is None else calibrate(cfg.describe.epsilon, delta, 1.0, 1)
        sd = 0.0 if z is None else z * layout.sensitivity
        c = derive_secagg_params(cfg, 0.0).clipping_range
        scale = resolution(c, max(h.records for h in cfg.hospitals), sd)
        _cache.clear()
        _cache[key] = DescriptionTerms(layout, z, sd, c, scale, delta)
    return _cache[key]
