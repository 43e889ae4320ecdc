"""What leaves a hospital when something goes wrong there: a reason, never its data.

Flower turns an exception in a ClientApp into an error reply carrying `str(exception)` to the server
(`flwr/supernode/runtime/run_clientapp.py`, `flwr/server/superlink/fleet/vce/vce_api.py`), and ours
name paths, row counts and values so that the hospital's own staff can fix them. This mod, the
outermost of the hospital's own, keeps that detail in the hospital's log and lets only a category out:
"the hospital's records do not match the study's declaration", not the file or the numbers.
"""

from __future__ import annotations

import logging

from flwr.app.message import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedhealth.errors import HospitalRefusedError

log = logging.getLogger(__name__)


class HospitalRefusal(HospitalRefusedError, RuntimeError):
    """An error whose message was written to leave the hospital: a reason with no path, count or value."""


def public_reason(err: BaseException) -> str:
    """The category of a hospital-side failure, in words that may reach the server."""
    if isinstance(err, HospitalRefusal):
        return str(err)
    kind = type(err).__name__
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError):
        return "the hospital could not read a file it needs (its staff can see which in its log)"
    if isinstance(err, ValueError | KeyError | IndexError):
        return ("the hospital's records or configuration do not match the study's declaration "
                "(its staff can see the detail in its log)")
    return f"the hospital could not complete this request ({kind}; its staff can see the detail in its log)"


def guard_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run the hospital's mods and client; an exception leaves as its category only, logged here in full."""
    try:
        return call_next(msg, ctxt)
    except HospitalRefusal:
        raise
    except Exception as err:  # noqa: BLE001 - every failure is reduced to its category before it leaves
        log.error("hospital-side failure on a %s message (kept at the hospital)", msg.metadata.message_type,
                  exc_info=True)
        raise HospitalRefusal(public_reason(err)) from None
