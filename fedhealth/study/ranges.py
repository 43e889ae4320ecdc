"""The range each float key of a study (and of a site policy) may take, with the reason for each bound.

Why ranges on top of "finite": a finite number can still be absurd and break the run far from the config
(`privacy.target_epsilon = 1e300` makes the noise calibration search forever, `privacy.noise_multiplier =
1e-300` divides by zero in the accounting, a timeout of 1e300 seconds overflows the timer). Each bound is
set where the value stops meaning anything for a study, well outside what any honest study uses (the
configs, tests and benchmarks of this repository stay far inside them). The table in docs/commands.md
lists them; `tests/unit/test_hostile_review.py` checks that it lists every key here.

The lower bound `0` of a key that must be positive stays the key's own `gt=0` (its pydantic message); the
ranges here bound what is left.
"""

from __future__ import annotations

from typing import Any

from pydantic import AfterValidator

DAY = 86_400.0  # seconds

_LEARNING = "a step below 1e-8 never moves the model and one above 10 makes training diverge"
_CLIP = ("a clipping norm below 1e-6 clips every gradient or update to nothing, and one above 1e6 clips "
         "nothing (the noise, scaled to it, then swamps the model)")
_CAP = "a cap below 0.01 allows no round and one above 1000 bounds nothing"
_WAIT = "a wait below 0.01 s gives up at once and one above a day (86400 s) is a hang"

# key -> (lowest, highest, why)
RANGES: dict[str, tuple[float, float, str]] = {
    "training.learning_rate": (1e-8, 10.0, _LEARNING),
    "training.weight_decay": (0.0, 10.0, "above 10 the penalty outweighs the data and drives every weight to 0"),
    "federation.strategy.proximal_mu": (
        0.0, 100.0, "above 100 the proximal term holds every hospital at the global model: local training does "
                    "nothing"),
    "federation.strategy.server_learning_rate": (1e-8, 10.0, _LEARNING),
    "federation.strategy.server_tau": (
        1e-9, 10.0, "FedAdam's adaptivity: below 1e-9 a near-zero second moment makes a step explode, above 10 "
                    "the server barely moves"),
    "federation.strategy.qffl_learning_rate": (
        1e-8, 1000.0, "q-FedAvg's 1/L: below 1e-8 the model never moves, above 1000 it jumps past every minimum"),
    "federation.secure_aggregation.timeout": (0.01, DAY, _WAIT),
    "federation.secure_aggregation.update_bound": (
        1e-6, 1e6, "the masked update is quantised into at most 2^30 steps over [-bound, bound]: below 1e-6 "
                   "every update is clipped to nothing, above 1e6 one step (2 x bound / 2^30) is coarser than an "
                   "update"),
    "federation.cpus_per_client": (
        0.01, 1e6, "Ray cannot schedule a share below 0.01 CPU, and no machine has a million cores"),
    "federation.wait_for_hospitals": (0.01, DAY, _WAIT),
    "federation.reply_timeout": (0.01, DAY, _WAIT),
    "privacy.noise_multiplier": (
        1e-6, 1e4, "below 1e-6 the noise protects nothing and the accounting overflows, above 10000 an update is "
                   "all noise"),
    "describe.epsilon": (
        0.01, 100.0, "below 0.01 the noise swamps every count of any cohort, above 100 the guarantee means "
                     "nothing"),
    "privacy.target_epsilon": (
        0.01, 100.0, "below 0.01 no noise level leaves a usable model, above 100 the guarantee means nothing "
                     "and the noise calibration cannot settle"),
    "privacy.delta": (1e-15, 1.0, "below 1e-15 the accounting loses precision"),
    "privacy.max_grad_norm": (1e-6, 1e6, _CLIP),
    "privacy.clipping_norm": (1e-6, 1e6, _CLIP),
    "privacy.max_epsilon": (0.01, 1000.0, _CAP),
    "policy.max_epsilon": (0.01, 1000.0, _CAP),
    "policy.max_hospital_epsilon": (0.01, 1000.0, _CAP),
    "policy.max_delta": (1e-15, 1.0, "below 1e-15 the accounting loses precision"),
}


def _g(x: float) -> str:
    return f"{x:g}"


def within(key: str) -> Any:
    """The validator bounding `key` to its range in `RANGES`: a ValueError whose message gives the reason
    and the range (the config's error formatter prefixes the key and the value)."""
    low, high, why = RANGES[key]

    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"{why}; give a value between {_g(low)} and {_g(high)}")
        return value

    return AfterValidator(check)
