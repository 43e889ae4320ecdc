"""Hospital-level (client-level) DP with Flower's own pieces: clipping on the client, noise on the server.

Each hospital's model update is clipped to L2 norm C on the client (Flower's `fixedclipping_mod`),
updates are averaged with equal weights, and the server adds Gaussian noise of standard deviation
sigma * C / m to the mean of m updates (Flower's `DifferentialPrivacyClientSideFixedClipping`).
That is the Gaussian mechanism on the sum with sensitivity C, so each round is (sigma)-Gaussian-DP
with respect to adding or removing one whole hospital, and rounds compose by RDP.

Two choices make that statement true here, where Flower alone would not:
- equal weights: FedAvg's record-count weights would let a large hospital move the mean by more
  than C/m, so in this mode every hospital reports one "example";
- noise for the hospitals actually aggregated: Flower's wrapper calibrates to the number sampled
  and only warns when fewer reply; we set it to the number aggregated each round.
No amplification by sampling is claimed (q = 1): the epsilon reported is an upper bound.
Under SecAgg+ (the default) the server sees only the un-noised mean of the clipped updates, never
one of them. With `privacy.hospital_noise = "distributed"` each hospital adds its share of the
noise before masking instead (see `fedhealth.federation.secagg_client`), so the server sees only
the noised sum.
"""

from __future__ import annotations

from flwr.app.message import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedhealth.config import StudyConfig
from fedhealth.privacy.ledger import epsilon_of


def hospital_noise(cfg: StudyConfig) -> float:
    """Noise multiplier on the mean update: as configured, or calibrated to the target over all rounds."""
    if cfg.privacy.noise_multiplier is not None:
        return cfg.privacy.noise_multiplier
    from fedhealth.privacy.dp import calibrate_noise

    assert cfg.privacy.target_epsilon is not None
    return calibrate_noise(cfg.privacy.target_epsilon, cfg.privacy_delta(), 1.0, cfg.federation.rounds)


def hospital_epsilon(cfg: StudyConfig, rounds: int) -> float:
    """Epsilon (at the study's delta) after `rounds` noised aggregations, for any one hospital."""
    return epsilon_of([(hospital_noise(cfg), 1.0, rounds)], cfg.privacy_delta()) if rounds else 0.0


def clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's fixedclipping_mod, applied to the training messages that ask for clipping (hospital mode)."""
    if msg.metadata.message_type == MessageType.TRAIN:
        fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        if KEY_CLIPPING_NORM in fit_ins.config:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)
