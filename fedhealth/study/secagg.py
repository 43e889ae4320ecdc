"""SecAgg+ parameters derived from the study, never guessed, and checked before round 1.

Flower's `SecAggPlusWorkflow` takes six numbers and trusts them. Wrong ones fail in ways that are
hard to see: an even share count below the number of clients breaks the protocol inside every
round (Flower tells the clients one count and uses another), a weight above `max_weight` or too
many clients for the modulus overflow the masked sum and corrupt the model without an error.
Here each number follows from the study:

- hospitals per round `m`: the number of masked vectors summed;
- shares `k` (the neighbourhood of each hospital, itself included) and threshold `t`: every
  hospital in a small federation (`m <= FULL_GRAPH_UP_TO`) is everyone's neighbour, as in the
  original SecAgg; beyond that `k` grows like `2 log2 m`, as SecAgg+ prescribes, and is widened
  until, at the configured dropout rate, a round fails to unmask with probability below
  `ROUND_FAILURE_TARGET`. `t` is the largest threshold that still meets that target, and never
  below a strict majority of the neighbourhood (below it a server that lies about who dropped
  could collect both secrets of one hospital);
- `max_weight`: FedAvg weights are training-record counts, so the largest hospital's record
  count (1 in hospital-level DP and q-FedAvg, where weights are equal);
- `clipping_range`: a per-coordinate bound on the (weighted) model *update*; exact in
  hospital-level DP, where each update is L2-clipped, and a declared bound otherwise, which each
  hospital checks and reports if its update exceeds it;
- `quantization_range`: as fine as the modulus allows: the largest power of two `Q` with
  `m * Q < modulus`, so the sum of `m` quantised values (each in `[0, Q]`) never wraps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedhealth.study.config import StudyConfig

MODULUS = 2**32  # Flower's largest modulus (masks are drawn below it)
MAX_QUANTIZATION = 2**30  # Flower quantises into int32
MIN_QUANTIZATION = 2**16
FULL_GRAPH_UP_TO = 15  # up to this many hospitals per round, everyone is everyone's neighbour
ROUND_FAILURE_TARGET = 1e-3  # chance a round cannot unmask at the configured dropout rate
MAX_CLIPPING_RANGE = 1e6  # per-coordinate bound: at 2^30 steps, one step is about 2e-3
DEFAULT_UPDATE_BOUND = 8.0  # per-coordinate bound on an update when DP does not bound it
DISTRIBUTED_NOISE_TAIL = 8.0  # standard deviations of distributed DP noise kept inside the clipping range
KEY = "federation.secure_aggregation"


SECAGG_MINIMUM = 3  # with 2, each hospital can subtract its own update from the sum and read the other's


@dataclass(frozen=True)
class SecAggParams:
    hospitals_per_round: int
    num_shares: int
    reconstruction_threshold: int
    max_weight: int
    clipping_range: float
    quantization_range: int
    modulus_range: int
    timeout: float
    round_failure_probability: float  # at the configured dropout rate (union bound over hospitals)
    quantization_std: float  # bound on the rounding error's std per coordinate of the weighted sum
    noise_std_per_hospital: float = 0.0  # distributed hospital-level DP: Gaussian noise each hospital adds

    @property
    def tolerated_dropouts(self) -> int:
        """Hospitals that may vanish from any one neighbourhood and the round still unmasks."""
        return self.num_shares - self.reconstruction_threshold

    def workflow_kwargs(self) -> dict[str, Any]:
        return {
            "num_shares": self.num_shares,
            "reconstruction_threshold": self.reconstruction_threshold,
            "max_weight": float(self.max_weight),
            "clipping_range": float(self.clipping_range),
            "quantization_range": self.quantization_range,
            "modulus_range": self.modulus_range,
            "timeout": self.timeout,
        }

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tolerated_dropouts": self.tolerated_dropouts}


def _tail(k: int, p: float, more_than: int) -> float:
    """P(X > more_than) for X ~ Binomial(k, p): the chance more than `more_than` of k hospitals drop."""
    return sum(math.comb(k, j) * p**j * (1 - p) ** (k - j) for j in range(more_than + 1, k + 1))


def _failure_probability(m: int, k: int, t: int, p: float) -> float:
    if k >= m:  # one neighbourhood: the round fails iff more than k - t of all m drop
        return _tail(m, p, m - t)
    return min(1.0, m * _tail(k, p, k - t))  # any neighbourhood short of t survivors fails the round


def _best_threshold(m: int, k: int, p: float) -> int | None:
    """The largest threshold, at least a strict majority of k and below k, meeting the failure target."""
    for t in range(k - 1, k // 2, -1):
        if _failure_probability(m, k, t, p) <= ROUND_FAILURE_TARGET:
            return t
    return None


def _shares(m: int, p: float) -> int:
    if m <= FULL_GRAPH_UP_TO:
        return m
    k = max(3, 2 * math.ceil(math.log2(m)) + 1) | 1
    while k < m and _best_threshold(m, k, p) is None:
        k += 2
    return min(k, m)


def _majority(k: int) -> int:
    return k // 2 + 1


def shares_and_threshold(m: int, dropout_rate: float, num_shares: int | None = None,
                         threshold: int | None = None) -> tuple[int, int]:
    """(num_shares, reconstruction_threshold) for m hospitals per round; overrides are checked."""
    if num_shares is not None:
        if num_shares > m:
            raise ValueError(f"{KEY}.num_shares = {num_shares} exceeds the {m} hospitals per round; "
                             f"use at most {m}, or remove it to derive")
        if num_shares % 2 == 0 and num_shares != m:
            raise ValueError(f"{KEY}.num_shares = {num_shares} is even: SecAgg+ needs an odd neighbourhood "
                             f"(Flower tells the hospitals one count and uses another, and every round fails); "
                             f"use {num_shares - 1} or {num_shares + 1}")
        k = num_shares
    else:
        k = _shares(m, dropout_rate)
    if threshold is not None:
        if threshold >= k:
            raise ValueError(f"{KEY}.reconstruction_threshold = {threshold} must be below the {k} shares "
                             f"(at most {k - 1}); a threshold of all shares tolerates no dropout")
        if threshold < _majority(k):
            raise ValueError(f"{KEY}.reconstruction_threshold = {threshold} is not a strict majority of "
                             f"{k} shares: a server lying about dropouts could unmask one hospital's update; "
                             f"use at least {_majority(k)}")
        return k, threshold
    t = _best_threshold(m, k, dropout_rate)
    return k, t if t is not None else _majority(k)


def quantization_range(m: int) -> int:
    """The finest power-of-two quantisation whose sum over m hospitals cannot wrap the modulus."""
    q = MAX_QUANTIZATION
    while m * q >= MODULUS:
        q //= 2
    return q


def derive_secagg_params(cfg: StudyConfig, noise_std_per_hospital: float) -> SecAggParams:
    """All SecAgg+ numbers for a study; ValueError (naming the key and the fix) if they cannot work.

    A plain function of the study and one number the privacy layer calibrates: the noise std each
    hospital adds before masking under distributed hospital-level DP
    (`fedhealth.privacy.hospital_level.secagg_noise_std`, 0 otherwise), which widens the clipping range.
    """
    from fedhealth.study.policy import hospitals_per_round

    sa = cfg.federation.secure_aggregation
    m = hospitals_per_round(len(cfg.hospitals), cfg.federation.strategy.fraction_fit)
    if m < 3:
        raise ValueError(f"{KEY}: secure aggregation needs at least 3 hospitals per round, this study has {m}: "
                         "with 2, each can subtract its own update from the sum and read the other's. Add "
                         f"hospitals, or set {KEY}.enabled = false to aggregate in the clear")
    k, t = shares_and_threshold(m, sa.dropout_rate, sa.num_shares, sa.reconstruction_threshold)
    q = quantization_range(m)
    if q < MIN_QUANTIZATION:
        raise ValueError(f"{KEY}: {m} hospitals per round leave only {q} quantisation levels in a 32-bit "
                         f"modulus; lower federation.strategy.fraction_fit")

    if cfg.describe is not None:
        # A cohort description sends integers (`fedhealth.statistics.transport`) with weight 1: with the
        # clipping range at half the quantisation range, Flower's quantiser adds c and scales by exactly 1, and
        # its stochastic rounding leaves an integer as it is, so the unmasked sum is the exact sum.
        return SecAggParams(
            hospitals_per_round=m, num_shares=k, reconstruction_threshold=t, max_weight=1,
            clipping_range=float(q // 2), quantization_range=q, modulus_range=MODULUS, timeout=sa.timeout,
            round_failure_probability=_failure_probability(m, k, t, sa.dropout_rate), quantization_std=0.0)

    hospital_mode = cfg.privacy.mode == "hospital"
    if hospital_mode or cfg.federation.strategy.name == "qfedavg":
        why = "hospital-level DP" if hospital_mode else "q-FedAvg"
        if sa.max_weight not in (None, 1):
            raise ValueError(f"{KEY}.max_weight = {sa.max_weight}: {why} weighs every hospital 1; "
                             "remove the key")
        max_weight = 1
    else:
        largest = max(cfg.hospitals, key=lambda h: h.records)
        if sa.max_weight is not None and sa.max_weight < largest.records:
            raise ValueError(f"{KEY}.max_weight = {sa.max_weight} is below hospital {largest.name!r}'s "
                             f"{largest.records} records: its weight would overflow the masked sum; use at least "
                             f"{largest.records}, or remove the key to derive it")
        max_weight = sa.max_weight or largest.records

    noise_std = 0.0
    if hospital_mode:
        clip = cfg.privacy.clipping_norm  # an L2 clip bounds every coordinate
        if sa.update_bound is not None and sa.update_bound < clip:
            raise ValueError(f"{KEY}.update_bound = {sa.update_bound} is below privacy.clipping_norm = {clip}: "
                             "clipped updates would be clipped again; remove the key")
        bound = max(clip, sa.update_bound or 0.0)
        if cfg.privacy.hospital_noise == "distributed":
            # privacy.min_contributors - privacy.colluding_hospitals honest shares add up to the noise
            # sigma * C on the sum; more only add noise (see fedhealth.privacy.hospital_level).
            noise_std = float(noise_std_per_hospital)
            bound += DISTRIBUTED_NOISE_TAIL * noise_std
    else:
        bound = sa.update_bound or DEFAULT_UPDATE_BOUND
    if not math.isfinite(bound) or not math.isfinite(noise_std):
        # The config refuses inf and nan, but the noise share comes from the privacy calibration: a clipping
        # range that is not finite would quantise every update to the same value, silently.
        raise ValueError(f"{KEY}: the clipping range of the masked updates ({bound}) or the noise share per "
                         f"hospital ({noise_std}) is not a finite number; check privacy.clipping_norm, "
                         f"{KEY}.update_bound and the noise settings")
    if bound > MAX_CLIPPING_RANGE:
        # quantised into at most 2^30 steps over [-bound, bound], one step would be coarser than an update
        raise ValueError(f"{KEY}: the clipping range of the masked updates ({bound:g}) is above "
                         f"{MAX_CLIPPING_RANGE:g}: "
                         f"quantised into 2^30 steps, one step ({2 * bound / MAX_QUANTIZATION:.3g}) would be "
                         f"coarser than a model update; lower privacy.clipping_norm, privacy.noise_multiplier or "
                         f"{KEY}.update_bound")

    return SecAggParams(
        hospitals_per_round=m, num_shares=k, reconstruction_threshold=t, max_weight=max_weight,
        clipping_range=float(bound), quantization_range=q, modulus_range=MODULUS, timeout=sa.timeout,
        round_failure_probability=_failure_probability(m, k, t, sa.dropout_rate),
        quantization_std=math.sqrt(m) * bound / q, noise_std_per_hospital=noise_std,
    )
