"""Which hospitals a round waits for, and for how long: a hospital that never connects must not hang a
study for Flower's default day.

Flower's `SimpleClientManager.sample` waits up to 24 hours for the strategy's minimum number of
connected nodes, silently, and then samples nothing. In a deployment a hospital whose SuperNode never
starts (a firewall, a holiday) would stall every round that way. This manager waits at most
`federation.wait_for_hospitals` seconds for everyone, logs who is still missing while it waits, then
goes on with the hospitals present if there are at least `federation.min_hospitals`, and otherwise
stops the study with a message saying how many are connected, how many are needed and what to change.
"""

from __future__ import annotations

import logging
import time

from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion

from fedhealth.errors import FederationError

log = logging.getLogger(__name__)


class HospitalsMissing(FederationError, RuntimeError):
    """Too few hospitals connected within the wait: the study stops rather than hang or run unsafely."""


class StudyClientManager(SimpleClientManager):
    def __init__(self, expected: int, min_hospitals: int, wait_seconds: float, report_every: float = 30.0) -> None:
        super().__init__()
        if not 1 <= min_hospitals <= expected:
            raise ValueError(f"min_hospitals must be in 1..{expected}, got {min_hospitals}")
        self.expected = expected
        self.min_hospitals = min_hospitals
        self.wait_seconds = wait_seconds
        self.report_every = report_every

    def wait_for(self, num_clients: int, timeout: int | float = 86400) -> bool:
        """Wait for `num_clients`, at most `wait_seconds` (never Flower's day), saying who is missing."""
        deadline = time.monotonic() + min(float(timeout), self.wait_seconds)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return len(self) >= num_clients
            if super().wait_for(num_clients, timeout=min(left, self.report_every)):  # type: ignore[arg-type]
                return True
            if deadline - time.monotonic() > 0:
                log.warning("waiting for hospitals: %d of %d connected, %.0f s left before the study goes on with "
                            "at least %d (federation.wait_for_hospitals, federation.min_hospitals)", len(self),
                            num_clients, deadline - time.monotonic(), self.min_hospitals)

    def sample(self, num_clients: int, min_num_clients: int | None = None,
               criterion: Criterion | None = None) -> list[ClientProxy]:
        wanted = min_num_clients if min_num_clients is not None else num_clients
        if not self.wait_for(wanted):
            present = len(self)
            if present < self.min_hospitals:
                raise HospitalsMissing(
                    f"only {present} of {self.expected} hospitals connected after {self.wait_seconds:g} s; the "
                    f"study needs at least {self.min_hospitals} (federation.min_hospitals). Ask the missing "
                    "hospitals to start their SuperNode, then submit the study again; or lower "
                    "federation.min_hospitals, or raise federation.wait_for_hospitals")
            log.warning("going on with %d of %d hospitals: the others did not connect within %g s",
                        present, self.expected, self.wait_seconds)
            num_clients = min(num_clients, present)
            min_num_clients = present
        return super().sample(num_clients, min_num_clients, criterion)
