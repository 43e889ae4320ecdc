"""A hospital's site policy: limits its data-protection officer sets and the server cannot raise.

In deployment the policy is a TOML file next to the hospital's data; in simulation each hospital
may carry one inline (`[hospitals.policy]`). The client checks it before every round and declines,
with the reason, any round that breaks it.

Safe defaults: every field a policy leaves out takes the cautious value, and a deployed hospital with no
policy file at all gets `SitePolicy()` — SecAgg+ required, no aggregate below 3 hospitals, no delta above
1 / (10 x its training records). Nothing the server sends can loosen them. The reasons a decline gives
the server name the rule, never the hospital's own figures (its limits, its record count).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedhealth.study.ranges import within
from fedhealth.study.schema import NOT_FINITE
from fedhealth.study.textfile import NotTomlError, TextFileError, read_toml

if TYPE_CHECKING:
    from fedhealth.study.config import StudyConfig


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # an inf cap is no cap

    max_epsilon: Annotated[float, within("policy.max_epsilon")] | None = Field(default=None, gt=0,
                                      description="hard cap on cumulative epsilon; also requires record-level DP")
    max_hospital_epsilon: Annotated[float, within("policy.max_hospital_epsilon")] | None = Field(
        default=None, gt=0, description="hard cap on this hospital's hospital-level epsilon over all its studies")
    max_delta: Annotated[float, within("policy.max_delta")] | None = Field(
        default=None, gt=0, lt=1,
        description="largest delta the hospital accepts; unset: 1 / (10 x its training records)")
    allowed_models: list[Literal["logreg", "mlp"]] | None = None
    min_hospitals: int = Field(default=3, ge=1, description="fewest hospitals an aggregate may hold")
    share_evaluation: bool = Field(
        default=True, description="send held-out test figures (not covered by DP; the server picks the models)")
    share_site_statistics: bool = Field(
        default=False, description="a cohort description: also release this hospital's own Table 1 column in the "
                                   "clear, computed by the hospital from the vector it noised for the secure sum "
                                   "(no further epsilon), its counts below min_cell withheld")
    min_cell: int = Field(default=5, ge=0, description="site statistics: counts below this are withheld")
    share_group_statistics: bool = Field(
        default=False, description="a cohort description: fill its tier's and region's slots; the hospital list is "
                                   "the server's, so against a deviating server a group slot is this hospital's own "
                                   "(noised) vector")
    require_secure_aggregation: bool = Field(
        default=True, description="send updates only under SecAgg+ (masked); false allows plain aggregation")

    @classmethod
    def from_file(cls, path: Path) -> SitePolicy:
        if not path.exists():  # a FIFO or a device is refused by read_utf8, naming what it is
            raise FileNotFoundError(f"{path}: site policy file not found")
        try:
            return cls.model_validate(read_toml(path))
        except NotTomlError as err:
            raise ValueError(f"{path}: invalid site policy: {err.why}") from None
        except TextFileError as err:
            raise ValueError(str(err)) from None
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'policy'}{_shown(e.get('input'))}: "
                f"{NOT_FINITE if e['type'] == 'finite_number' else e['msg'].removeprefix('Value error, ')}"
                for e in err.errors())
            raise ValueError(f"{path}: invalid site policy: {problems}") from None


def _shown(value: object) -> str:
    """` = value` after a key in an error (a policy is the hospital's own settings, never a record)."""
    return "" if isinstance(value, dict) else f" = {value!r}"


DEFAULT_DELTA_FACTOR = 10  # unset max_delta: delta at most 1 / (10 x records)


def delta_limit(policy: SitePolicy, records: int) -> float:
    """The largest delta this hospital accepts: its policy's, else 1 / (10 x its training records).

    Why that default: a delta near 1/n allows mechanisms that publish a record outright with
    probability delta per record; a tenth of that keeps every patient's chance of it small."""
    if policy.max_delta is not None:
        return policy.max_delta
    return 1.0 / (DEFAULT_DELTA_FACTOR * max(1, records))


# Why a round breaks a policy: the text a decline sends, and the two keys that clash (the policy's, the study's)
PLAIN_AGGREGATION = ("the server asked for plain aggregation (the update would be visible to it) and the site "
                     "policy requires secure aggregation")
MODEL_NOT_ALLOWED = "is not allowed by the site policy"
NEEDS_RECORD_DP = "the site policy caps epsilon, so it requires record-level DP (privacy.mode = 'record')"
DELTA_TOO_LARGE = "the study's delta is above the largest delta the site policy accepts"
TOO_FEW_HOSPITALS = "the planned aggregate holds fewer hospitals than the site policy's min_hospitals"
CLASHING_KEYS = {
    PLAIN_AGGREGATION: ("require_secure_aggregation (default true)", "federation.secure_aggregation.enabled"),
    MODEL_NOT_ALLOWED: ("allowed_models", "model.name"),
    NEEDS_RECORD_DP: ("max_epsilon", "privacy.mode"),
    DELTA_TOO_LARGE: ("max_delta", "privacy.delta"),
    TOO_FEW_HOSPITALS: ("min_hospitals", "federation.strategy.fraction_fit"),
}


def policy_violation(policy: SitePolicy | None, *, model: str, dp_mode: str, delta: float,
                     hospitals_per_round: int, secure: bool = True, records: int | None = None) -> str | None:
    """Why this round breaks the hospital's policy, or None. The server's wishes never enter here.

    `secure` is what the hospital's own SecAgg+ mod observed, not what the server claims; `records` is the
    hospital's training-record count (for the default delta limit). The reason may be sent to the server:
    it names the rule broken, not the hospital's limits or counts."""
    if policy is None:
        return None
    if policy.require_secure_aggregation and not secure:
        return PLAIN_AGGREGATION
    if policy.allowed_models is not None and model not in policy.allowed_models:
        return f"model {model!r} {MODEL_NOT_ALLOWED}"
    if policy.max_epsilon is not None and dp_mode != "record":
        return NEEDS_RECORD_DP
    if dp_mode != "none" and (policy.max_delta is not None or records is not None) \
            and delta > delta_limit(policy, records or 1):
        return DELTA_TOO_LARGE
    if hospitals_per_round < policy.min_hospitals:
        return TOO_FEW_HOSPITALS
    return None


def refused_by_every_policy(cfg: StudyConfig) -> str | None:
    """Why a simulated study cannot aggregate a single update, or None: every hospital carries an inline
    policy and every one of those policies refuses the study as configured (so each would decline every
    round, and the run would fail only after its federation). One hospital refusing is not an error: a
    hospital's own policy winning over the study is what a simulation shows. The default delta limit
    (which needs the hospital's training count) is left to the hospital; a policy's own `max_delta` is checked."""
    if not cfg.hospitals or any(h.policy is None for h in cfg.hospitals):
        return None
    per_round = hospitals_per_round(len(cfg.hospitals), cfg.federation.strategy.fraction_fit)
    reasons = []
    for i, h in enumerate(cfg.hospitals):
        why = policy_violation(h.policy, model=cfg.model.name, dp_mode=cfg.privacy.mode, delta=cfg.privacy_delta(),
                               hospitals_per_round=per_round, secure=cfg.federation.secure_aggregation.enabled)
        if why is None:
            return None
        ours, theirs = next(keys for text, keys in CLASHING_KEYS.items() if text in why)
        reasons.append(f"hospitals[{i}].policy.{ours} against {theirs}")
    return ("hospitals: every hospital's own site policy refuses this study, so no round could aggregate ("
            + "; ".join(reasons) + "); change the study's key or the policies")


DEFAULT_MAX_EPSILON = 10.0  # a policy without max_epsilon: the study's cap, but never above this


def effective_cap(policy: SitePolicy | None, study_default: float) -> float:
    """The hospital's epsilon cap: its policy's when it sets one (the server cannot raise it); a policy (or a
    deployed hospital's default policy) that sets none takes the study's cap, but at most DEFAULT_MAX_EPSILON,
    so a server cannot lift a hospital's cap by sending a large `privacy.max_epsilon`. A simulated hospital
    without any policy takes the study's cap."""
    if policy is None:
        return study_default
    return policy.max_epsilon if policy.max_epsilon is not None else min(study_default, DEFAULT_MAX_EPSILON)


def hospitals_per_round(n_hospitals: int, fraction_fit: float) -> int:
    return max(1, math.ceil(fraction_fit * n_hospitals))
