"""The rules a hospital-level DP study must meet, checked when the study is validated (no accounting
here: the noise is calibrated in `fedhealth.privacy.hospital_level`, which explains the mechanism)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedhealth.study.config import StudyConfig

DEFAULT_MIN_CONTRIBUTORS = 3  # the SecAgg+ floor: a secure aggregate of 2 hides neither update from the other


def min_contributors(cfg: StudyConfig) -> int:
    """m: the fixed, announced number of contributors the noise is calibrated to."""
    return cfg.privacy.min_contributors or DEFAULT_MIN_CONTRIBUTORS


def check_hospital_dp(cfg: StudyConfig) -> None:
    """ValueError naming the key and the fix if the hospital-level DP settings cannot hold."""
    p = cfg.privacy
    if p.mode != "hospital":
        for key, value in (("min_contributors", p.min_contributors), ("colluding_hospitals", p.colluding_hospitals)):
            if value:
                raise ValueError(f"privacy.{key} applies only to privacy.mode = 'hospital' (hospital-level DP); "
                                 "remove it")
        return
    from fedhealth.study.policy import hospitals_per_round

    m = min_contributors(cfg)
    per_round = hospitals_per_round(len(cfg.hospitals), cfg.federation.strategy.fraction_fit)
    if m > per_round:
        raise ValueError(f"privacy.min_contributors = {m}: only {per_round} hospitals take part in a round, so "
                         f"every round would be refused; lower it to at most {per_round}, or add hospitals")
    secure = cfg.federation.secure_aggregation.enabled
    if secure and m < DEFAULT_MIN_CONTRIBUTORS:
        raise ValueError(f"privacy.min_contributors = {m}: secure aggregation releases no aggregate of fewer than "
                         f"{DEFAULT_MIN_CONTRIBUTORS} hospitals; use at least {DEFAULT_MIN_CONTRIBUTORS}, or set "
                         "federation.secure_aggregation.enabled = false")
    k = p.colluding_hospitals
    if k and p.hospital_noise != "distributed":
        raise ValueError("privacy.colluding_hospitals applies only to privacy.hospital_noise = 'distributed' (with "
                         "central noise the server adds all of it, and hospitals hold none back); remove it")
    if k >= m:
        raise ValueError(f"privacy.colluding_hospitals = {k} must be below privacy.min_contributors = {m}: the "
                         "honest hospitals alone must supply the noise; raise min_contributors or lower "
                         "colluding_hospitals")
