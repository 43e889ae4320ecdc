"""Hospital-level (client-level) DP with Flower's own pieces: clipping on the client, noise calibrated to
a fixed, announced minimum number of contributors.

The mechanism, per round. Each contributing hospital's model update is clipped to L2 norm C on the
client (Flower's `fixedclipping_mod`) and weighted 1 (equal weights: a record-count weight would let a
large hospital move the aggregate by more than C). Let m = `privacy.min_contributors` (default 3), a
study constant every hospital reads before the round, and n >= m the hospitals actually aggregated
(the server refuses a round with fewer before unmasking or aggregating, and under SecAgg+ each
hospital refuses to help unmask one). The released value is

    mean = (sum of the n clipped updates + Z) / n,   Z Gaussian with std at least sigma * C per coordinate.

- central noise (`privacy.hospital_noise = "central"`): the server adds noise of std sigma * C / m to
  the mean (Flower's `DifferentialPrivacyClientSideFixedClipping`, told m, never the count observed),
  so Z has std n * sigma * C / m >= sigma * C.
- distributed noise (`"distributed"`, under SecAgg+ only): each hospital adds N(0, s^2) per coordinate
  before masking, s = sigma * C / sqrt(m - k), where k = `privacy.colluding_hospitals`. Hospitals that
  collude with the server may withhold (or reveal) their share; the at least n - k >= m - k honest
  shares alone carry variance (m - k) * s^2 = (sigma * C)^2. The server sees only the noised sum.

The epsilon reported (`hospital_epsilon`) is Opacus's RDP accountant with sample rate q = 1: at q = 1
it is the plain Gaussian mechanism, RDP(alpha) = alpha / (2 sigma^2) per round, composed over rounds,
converted at the study's delta. That bound holds for any two inputs whose sums differ by at most C in
L2 norm with the noise std sigma * C on the sum. So the exact neighbouring relation is: **two rounds
are neighbours if one hospital's clipped update is replaced by the zero vector (equivalently, added to
or removed from the sum) while the set and number of contributing hospitals, n, stay the same**
("zero-out" adjacency). n is not protected: the coordinator sees which hospitals sent a masked vector
or declined, and dividing by the public n is post-processing. It is not replace-one adjacency (one
hospital's update swapped for another's: sensitivity 2C, an epsilon about that of sigma / 2), and not
add/remove with n changing (the mean's scale would change with the data). No amplification by
sampling is claimed (q = 1; every sampled hospital is counted every round): the epsilon is an upper
bound for a hospital in every round, whether or not it contributed.

Who sees what. Under SecAgg+ with central noise the server unmasks the un-noised mean and adds the
noise itself: the DP holds against everyone downstream of the server (other hospitals, whoever gets the
model), not against the server. With distributed noise it holds against the server too, provided at
most k hospitals collude with it and the hospitals' own minimum checks hold (see
`fedhealth.hospital.secure_aggregation` for what those do not prevent). A hospital that declines a round
drops out of it (an error reply, as a dropout), so it adds neither an update nor noise.
"""

from __future__ import annotations

from fedhealth.privacy.ledger import epsilon_of
from fedhealth.study.config import StudyConfig
from fedhealth.study.hospital_dp import min_contributors
from fedhealth.study.secagg import SecAggParams, derive_secagg_params


def hospital_noise(cfg: StudyConfig) -> float:
    """Noise multiplier sigma: as configured, or calibrated to the target over all rounds (q = 1)."""
    if cfg.privacy.noise_multiplier is not None:
        return cfg.privacy.noise_multiplier
    from fedhealth.privacy.dp import calibrate_noise

    assert cfg.privacy.target_epsilon is not None
    return calibrate_noise(cfg.privacy.target_epsilon, cfg.privacy_delta(), 1.0, cfg.federation.rounds)


def hospital_epsilon(cfg: StudyConfig, rounds: int) -> float:
    """Epsilon (at the study's delta) after `rounds` noised aggregations, for any one hospital, under
    zero-out adjacency (see the module docstring)."""
    return epsilon_of([(hospital_noise(cfg), 1.0, rounds)], cfg.privacy_delta()) if rounds else 0.0


def distributed_noise_std(cfg: StudyConfig, noise_multiplier: float | None = None) -> float:
    """Each hospital's share of the noise, sigma * C / sqrt(m - k): the m - k honest hospitals that at
    least contribute to any released aggregate supply the full sigma * C between them."""
    sigma = hospital_noise(cfg) if noise_multiplier is None else noise_multiplier
    honest = min_contributors(cfg) - cfg.privacy.colluding_hospitals
    return sigma * cfg.privacy.clipping_norm / honest**0.5




def secagg_noise_std(cfg: StudyConfig) -> float:
    """The noise std each hospital adds before masking: `distributed_noise_std` under distributed
    hospital-level DP, else 0 (record-level DP noises inside DP-SGD; central noise is the server's)."""
    if cfg.privacy.mode == "hospital" and cfg.privacy.hospital_noise == "distributed":
        return distributed_noise_std(cfg)
    return 0.0


def calibrated_secagg_params(cfg: StudyConfig) -> SecAggParams:
    """The study's SecAgg+ parameters with the noise share calibrated here (what both the hospital and
    the coordinator derive, each on its own)."""
    return derive_secagg_params(cfg, secagg_noise_std(cfg))
