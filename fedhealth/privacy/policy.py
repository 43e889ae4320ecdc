"""A hospital's site policy: limits its data-protection officer sets and the server cannot raise.

In deployment the policy is a TOML file next to the hospital's data; in simulation each hospital
may carry one inline (`[hospitals.policy]`). The client checks it before every round and declines,
with the reason, any round that breaks it.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float | None = Field(default=None, gt=0,
                                      description="hard cap on cumulative epsilon; also requires record-level DP")
    max_delta: float | None = Field(default=None, gt=0, lt=1, description="largest delta the hospital accepts")
    allowed_models: list[Literal["logreg", "mlp"]] | None = None
    min_hospitals: int = Field(default=1, ge=1, description="fewest hospitals an aggregate may hold")
    require_secure_aggregation: bool = Field(
        default=True, description="send updates only under SecAgg+ (masked); false allows plain aggregation")

    @classmethod
    def from_file(cls, path: Path) -> SitePolicy:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: site policy file not found")
        try:
            return cls.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, ValidationError) as err:
            raise ValueError(f"{path}: invalid site policy: {err}") from None


def policy_violation(policy: SitePolicy | None, *, model: str, dp_mode: str, delta: float,
                     hospitals_per_round: int, secure: bool = True) -> str | None:
    """Why this round breaks the hospital's policy, or None. The server's wishes never enter here.

    `secure` is what the hospital's own SecAgg+ mod observed, not what the server claims."""
    if policy is None:
        return None
    if policy.require_secure_aggregation and not secure:
        return ("the server asked for plain aggregation (the update would be visible to it) and the site "
                "policy requires secure aggregation")
    if policy.allowed_models is not None and model not in policy.allowed_models:
        return f"model {model!r} is not allowed by the site policy (allowed: {', '.join(policy.allowed_models)})"
    if policy.max_epsilon is not None and dp_mode != "record":
        return "the site policy caps epsilon, so it requires record-level DP (privacy.mode = 'record')"
    if policy.max_delta is not None and dp_mode == "record" and delta > policy.max_delta:
        return f"study delta {delta:g} is above the site policy's max_delta {policy.max_delta:g}"
    if hospitals_per_round < policy.min_hospitals:
        return (f"an aggregate of {hospitals_per_round} hospital(s) is below the site policy's "
                f"min_hospitals {policy.min_hospitals}")
    return None


def effective_cap(policy: SitePolicy | None, study_default: float) -> float:
    """The hospital's epsilon cap: its policy's when it sets one (the server cannot raise it), else the study's."""
    return policy.max_epsilon if policy is not None and policy.max_epsilon is not None else study_default


def hospitals_per_round(n_hospitals: int, fraction_fit: float) -> int:
    return max(1, math.ceil(fraction_fit * n_hospitals))
