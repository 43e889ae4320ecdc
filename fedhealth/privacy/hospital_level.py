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

from flwr.app.message import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedhealth.privacy.ledger import epsilon_of
from fedhealth.study.config import StudyConfig

DEFAULT_MIN_CONTRIBUTORS = 3  # the SecAgg+ floor: a secure aggregate of 2 hides neither update from the other


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


def min_contributors(cfg: StudyConfig) -> int:
    """m: the fixed, announced number of contributors the noise is calibrated to."""
    return cfg.privacy.min_contributors or DEFAULT_MIN_CONTRIBUTORS


def distributed_noise_std(cfg: StudyConfig, noise_multiplier: float | None = None) -> float:
    """Each hospital's share of the noise, sigma * C / sqrt(m - k): the m - k honest hospitals that at
    least contribute to any released aggregate supply the full sigma * C between them."""
    sigma = hospital_noise(cfg) if noise_multiplier is None else noise_multiplier
    honest = min_contributors(cfg) - cfg.privacy.colluding_hospitals
    return sigma * cfg.privacy.clipping_norm / honest**0.5


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
                         f"{DEFAULT_MIN_CONTRIBUTORS} hospitals; use at least {DEFAULT_MIN_CONTRIBUTORS}")
    k = p.colluding_hospitals
    if k and p.hospital_noise != "distributed":
        raise ValueError("privacy.colluding_hospitals applies only to privacy.hospital_noise = 'distributed' (with "
                         "central noise the server adds all of it, and hospitals hold none back); remove it")
    if k >= m:
        raise ValueError(f"privacy.colluding_hospitals = {k} must be below privacy.min_contributors = {m}: the "
                         "honest hospitals alone must supply the noise; raise min_contributors or lower "
                         "colluding_hospitals")


def clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's fixedclipping_mod on every training message of a hospital-level DP study, at the study's
    `privacy.clipping_norm` (whatever clipping key the server sends or leaves out).

    A hospital that declines the round (or sends the model back unchanged) has a zero update, whose
    norm Flower divides by: it is passed on as it is, never clipped (there is nothing to clip), so a
    decline reaches `secure_aggregation_mod` as a decline (a dropout) instead of a crash."""
    if msg.metadata.message_type != MessageType.TRAIN or "fitins.config" not in msg.content.config_records:
        return call_next(msg, ctxt)
    from fedhealth.wire import study_from_payload

    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    cfg = study_from_payload(fit_ins.config)
    if cfg.privacy.mode != "hospital":
        return call_next(msg, ctxt)
    # The norm the noise share and the ledger entry assume, never a separate key the server could omit or
    # inflate (Flower's mod would clip to whatever `KEY_CLIPPING_NORM` says, or not at all).
    msg.content.config_records["fitins.config"][KEY_CLIPPING_NORM] = float(cfg.privacy.clipping_norm)
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    from fedhealth.wire import DECLINED_KEY

    fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    if DECLINED_KEY in fit_res.metrics:
        return reply
    received = parameters_to_ndarrays(fit_ins.parameters)
    sent = parameters_to_ndarrays(fit_res.parameters)
    if all(float(abs(a - b).max(initial=0.0)) == 0.0 for a, b in zip(sent, received, strict=True)):
        return reply  # a zero update is within any clipping norm
    return fixedclipping_mod(msg, ctxt, lambda _m, _c: reply)
