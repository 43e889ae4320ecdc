"""Flower's simulation engine with its ClientApps run in this process: a `Backend` for small federations.

Flower's simulation engine (the Simulation Runtime behind `run_simulation`) drives its virtual
SuperNodes through a `Backend` (`flwr.server.superlink.fleet.vce.backend.Backend`: `build`,
`num_workers`, `process_message`, `terminate`). Its only shipped backend is Ray's: every federation
starts Ray (about 7 processes), an actor per CPU, and imports torch, Flower and Opacus again in each
actor; on 2 cores that fixed cost is most of a small study's time (FLOWER-NOTES: `ray.init` 4.5 s,
actors and round 1 7.1 s, shutdown 3.7 s, against well under a second of training).

`InProcessBackend` is the same interface with no second process: the engine's worker thread calls
the ClientApp directly. Everything else is Flower's own — the LinkState, the in-memory Grid, the
ServerApp thread, the worker loop, the per-node Contexts, error replies — so a federation behaves as
it does on Ray, minus the start-up. Two things keep it honest:

- **The wire is kept.** Each message is serialised to Flower's protobuf and parsed back on the way in
  and on the way out, so a hospital receives the bytes a SuperNode would, and the server (or an
  adversarial ServerApp in a test) gets back bytes, never a reference into a hospital's objects.
- **One message at a time** (`num_workers` 1). Hospitals share the interpreter, so concurrent
  ClientApps would share NumPy's global generator (Flower's SecAgg+ stochastic rounding draws from
  it) and the GIL; serialising them keeps a seeded run reproducible and costs little on 2 cores.

What it does not give: process isolation between simulated hospitals (a simulation is one trust
domain by construction, see docs/threat-model.md), parallel training on several cores, or a
cluster. For those, `federation.backend = "ray"` is Flower's Ray backend, unchanged.

Flower 1.41's `start_vce` takes a backend name but always builds `RayBackend`; the one place the
engine accepts a backend factory is `vce_api.run_api(app_fn, backend_fn, ...)`. `selected()` wraps
that function once, and the wrapper swaps in this backend only for federations started inside
`selected()` on the same thread, so a Ray federation elsewhere in the process is untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig

__all__ = ["InProcessBackend", "over_the_wire", "selected"]


def over_the_wire(message: Message) -> Message:
    """The message as the receiver would parse it off the network: serialised and parsed back."""
    data = message_to_proto(message).SerializeToString()
    return message_from_proto(ProtoMessage.FromString(data))


class InProcessBackend(Backend):
    """Run each ClientApp call in the engine's worker thread, one message at a time, through the wire format.

    Parameters
    ----------
    backend_config : dict
        Flower's backend config; read for nothing (client resources are Ray's notion), accepted so
        the engine can build it as it builds any backend.
    """

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        self.app_fn: Callable[[], ClientApp] | None = None

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """Keep the engine's ClientApp loader; there is nothing to start."""
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        """One: ClientApps never run concurrently (see the module's docstring)."""
        return 1

    def is_worker_idle(self) -> bool:
        """The single worker is the engine's own thread; it only asks for work when it is free."""
        return True

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        """The ClientApp's reply to `message`, as Ray's actor would return it: an exception in the app is a
        `ClientAppException` (the engine turns it into an error reply), a loading error passes as it is."""
        if self.app_fn is None:
            raise ValueError("InProcessBackend.process_message called before build()")
        try:
            app = self.app_fn()
            reply = app(message=over_the_wire(message), context=context)
        except LoadClientAppError:
            raise
        except Exception as ex:
            raise ClientAppException(str(ex)) from ex
        return over_the_wire(reply), context

    def terminate(self) -> None:
        """Nothing runs outside the engine's threads, so nothing is left to stop."""


_chosen = threading.local()  # the backend factory for federations started on this thread, if any
_install_lock = threading.Lock()
_original_run_api: Callable[..., Any] | None = None


def _run_api(app_fn: Callable[[], ClientApp], backend_fn: Callable[[], Backend], *args: Any, **kwargs: Any) -> Any:
    factory = getattr(_chosen, "factory", None)
    assert _original_run_api is not None
    return _original_run_api(app_fn, factory or backend_fn, *args, **kwargs)


def _install() -> None:
    global _original_run_api
    with _install_lock:
        if _original_run_api is None:
            _original_run_api = vce_api.run_api
            vce_api.run_api = _run_api


@contextmanager
def selected(backend_config: BackendConfig | None = None) -> Iterator[None]:
    """Federations that Flower's simulation engine starts on this thread, inside the block, use
    `InProcessBackend` instead of Ray."""
    _install()
    previous = getattr(_chosen, "factory", None)
    _chosen.factory = lambda: InProcessBackend(backend_config or {})
    try:
        yield
    finally:
        _chosen.factory = previous
