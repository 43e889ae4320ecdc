"""Which hospitals a round waits for, and for how long: a hospital that never connects must not hang a
study for Flower's default day.

Flower's `SimpleClientManager.sample` waits up to 24 hours for the strategy's minimum number of
connected nodes, silently, and then samples nothing. In a deployment a hospital whose SuperNode never
starts (a firewall, a holiday) would stall every round that way. This manager waits at most
`federation.wait_for_hospitals` seconds for everyone, logs who is still missing while it waits, then
goes on with the hospitals present if there are at least `federation.min_hospitals`, and otherwise
stops the study with a message saying how many are connected, how many are needed and what to change.

It also decides which connected nodes are the study's hospitals at all. A SuperLink may have nodes
registered for other studies (or a hospital dropped from this one); Flower's manager would sample every
connected node and send each the global model. In a deployment each node is registered under its
hospital's name (`server/deploy.sh register` passes `flwr supernode register --name`, taken from the
operator's `PKI/hospitals/NAME/` folder: the same filing that vouches for the key), and the SuperLink
reports that name with the node; here only nodes whose name is one of the study's hospitals, one node per
hospital, are counted, waited for and sampled. Any other node is logged once and is never sent anything.
In simulation every node is one of the study's partitions and no name is looked up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion

from fedhealth.errors import FederationError

log = logging.getLogger(__name__)


class HospitalsMissing(FederationError, RuntimeError):
    """Too few hospitals connected within the wait: the study stops rather than hang or run unsafely."""


NodeNames = Callable[[], dict[int, str]]  # node id -> the name it was registered under ("" for none)


class StudyClientManager(SimpleClientManager):
    """`hospitals` and `node_names` (both or neither): the study's hospital names, and how to ask the SuperLink
    which name each connected node was registered under; then only those nodes take part (see the module)."""

    def __init__(self, expected: int, min_hospitals: int, wait_seconds: float, report_every: float = 30.0,
                 hospitals: Sequence[str] | None = None, node_names: NodeNames | None = None) -> None:
        super().__init__()
        if not 1 <= min_hospitals <= expected:
            raise ValueError(f"min_hospitals must be in 1..{expected}, got {min_hospitals}")
        if (hospitals is None) != (node_names is None):
            raise ValueError("hospitals and node_names go together")
        self.expected = expected
        self.min_hospitals = min_hospitals
        self.wait_seconds = wait_seconds
        self.report_every = report_every
        self.hospitals = set(hospitals) if hospitals is not None else None
        self.node_names = node_names
        self.hospital_of: dict[str, str] = {}  # cid -> hospital, for the study's nodes
        self.outsiders: dict[str, str] = {}  # cid -> why it takes no part

    def register(self, client: ClientProxy) -> bool:
        """Count `client` only if it is one of the study's hospitals; otherwise remember why not and say so once.
        (Flower's node updater treats False as an error, so a node left out is still acknowledged.)"""
        if self.hospitals is None or self.node_names is None:
            return super().register(client)
        if client.cid in self.clients or client.cid in self.outsiders:
            return False
        name = self.node_names().get(int(client.cid), "")
        if name not in self.hospitals:
            why = (f"registered as {name!r}, not one of this study's hospitals ({', '.join(sorted(self.hospitals))})"
                   if name else "registered without a hospital name (server/deploy.sh register names each key "
                                "after its PKI/hospitals/NAME folder)")
        elif name in self.hospital_of.values():
            why = f"registered as {name!r}, which another connected node already is"
        else:
            self.hospital_of[client.cid] = name
            return super().register(client)
        self.outsiders[client.cid] = why
        log.warning("node %s is %s: it is not sent the model or anything else in this study", client.cid, why)
        return True

    def unregister(self, client: ClientProxy) -> None:
        self.hospital_of.pop(client.cid, None)
        self.outsiders.pop(client.cid, None)
        super().unregister(client)

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
                others = (f" ({len(self.outsiders)} other connected node(s) are not this study's hospitals: "
                          f"{'; '.join(sorted(set(self.outsiders.values())))})" if self.outsiders else "")
                raise HospitalsMissing(
                    f"only {present} of {self.expected} hospitals connected after {self.wait_seconds:g} s{others}; "
                    f"the study needs at least {self.min_hospitals} (federation.min_hospitals). Ask the missing "
                    "hospitals to start their SuperNode, then submit the study again; or lower "
                    "federation.min_hospitals, or raise federation.wait_for_hospitals")
            log.warning("going on with %d of %d hospitals: the others did not connect within %g s",
                        present, self.expected, self.wait_seconds)
            num_clients = min(num_clients, present)
            min_num_clients = present
        return super().sample(num_clients, min_num_clients, criterion)
