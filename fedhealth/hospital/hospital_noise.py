"""The hospital's side of hospital-level DP: clip the update before it leaves (Flower's
`fixedclipping_mod`) at the study's clipping norm; the mechanism and its guarantee are in
`fedhealth.privacy.hospital_level`."""

from __future__ import annotations

from flwr.app.message import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM


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
