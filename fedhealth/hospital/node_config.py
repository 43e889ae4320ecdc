"""The node config keys a hospital sets for itself, declared in one place with their types and meaning.

A hospital's SuperNode carries them (`flower-supernode --node-config "hospital-name='...' ..."`, written
by `clients/deploy.sh`); nothing the server sends can set or change them. Every module of the hospital
side reads its settings through `NodeSettings`, never the raw mapping.

The mode is explicit: a node is *simulated* exactly when Flower's simulation engine gave it a
`partition-id` and `num-partitions` (the only keys that engine sets), and *deployed* otherwise.
A node config that mixes the two (a `partition-id` next to a `data-file`, say) is refused: a deployed
hospital must never fall back to the simulation's conveniences (the study's inline policy, an audit log
beside the server's run directory).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedhealth.errors import DeploymentError
from fedhealth.study.names import name_problem, shown

Mode = Literal["simulation", "deployment"]

# key -> (type, what it means). Paths are the hospital's own; relative ones resolve against the SuperNode's
# working directory.
DEPLOYMENT_KEYS: dict[str, tuple[type, str]] = {
    "hospital-name": (str, "this hospital's name in the study's hospital list"),
    "hospital-index": (int, "this hospital's position in the study's hospital list (instead of its name)"),
    "data-file": (Path, "its CSV or Parquet file of patient records"),
    "schema-file": (Path, "its copy of the study schema; it trains only if the study uses the same schema"),
    "policy-file": (Path, "its site policy (TOML): limits the server cannot raise; safe defaults if unset"),
    "ledger-dir": (Path, "the folder of its privacy ledger (its epsilon spent, across studies)"),
    "audit-log": (Path, "its signed audit trail of every release (JSON lines)"),
    "audit-key": (Path, "the private key that signs the audit trail"),
}
SIMULATION_KEYS: dict[str, tuple[type, str]] = {
    "partition-id": (int, "set by Flower's simulation engine: the simulated hospital's index"),
    "num-partitions": (int, "set by Flower's simulation engine: the number of simulated hospitals"),
}


class NodeConfigError(DeploymentError, ValueError):
    """A hospital's node config is wrong: the message names the key and how to fix it."""


@dataclass(frozen=True)
class NodeSettings:
    """What this hospital says about itself. `None`: the key is not set."""

    mode: Mode
    hospital_name: str | None = None
    hospital_index: int | None = None
    data_file: Path | None = None
    schema_file: Path | None = None
    policy_file: Path | None = None
    ledger_dir: Path | None = None
    audit_log: Path | None = None
    audit_key: Path | None = None

    @property
    def simulated(self) -> bool:
        return self.mode == "simulation"

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> NodeSettings:
        """Read and check a node config (Flower's `context.node_config`)."""
        known = DEPLOYMENT_KEYS.keys() | SIMULATION_KEYS.keys()
        unknown = sorted(set(node) - known)
        if unknown:
            raise NodeConfigError(f"node config: unknown key(s) {', '.join(map(repr, unknown))}; the keys a "
                                  f"hospital sets are {', '.join(DEPLOYMENT_KEYS)}")
        simulated = "partition-id" in node
        if simulated:
            mixed = sorted(set(node) & (DEPLOYMENT_KEYS.keys() - {"hospital-index"}))
            if mixed:
                raise NodeConfigError(f"node config: partition-id (Flower's simulation engine) next to "
                                      f"{', '.join(mixed)} (a deployed hospital's keys); a deployed hospital "
                                      "sets hospital-name, never partition-id")
        values: dict[str, Any] = {}
        for key, (kind, _) in {**DEPLOYMENT_KEYS, **SIMULATION_KEYS}.items():
            raw = node.get(key)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            try:
                values[key] = kind(str(raw).strip()) if kind is not int else int(raw)
            except (TypeError, ValueError):
                raise NodeConfigError(f"node config {key}: expected {kind.__name__}, got {type(raw).__name__}; "
                                      f"{DEPLOYMENT_KEYS.get(key, SIMULATION_KEYS.get(key))[1]}") from None
        name = values.get("hospital-name")
        problem = None if name is None else name_problem(name)
        if problem is not None:  # it names this hospital's ledger, secret and audit files
            raise NodeConfigError(f"node config hospital-name {shown(name)}: {problem}")
        index = values.get("hospital-index", values.get("partition-id"))
        return cls(mode="simulation" if simulated else "deployment", hospital_name=values.get("hospital-name"),
                   hospital_index=index, data_file=values.get("data-file"), schema_file=values.get("schema-file"),
                   policy_file=values.get("policy-file"), ledger_dir=values.get("ledger-dir"),
                   audit_log=values.get("audit-log"), audit_key=values.get("audit-key"))

    @classmethod
    def simulated_hospital(cls, index: int) -> NodeSettings:
        """A simulated hospital by index (tests, and the simulation's own client)."""
        return cls(mode="simulation", hospital_index=index)


def settings_of(context: Any) -> NodeSettings:
    """The settings of a Flower `Context`, a node config mapping, or settings already read."""
    if isinstance(context, NodeSettings):
        return context
    node = context if isinstance(context, Mapping) else context.node_config
    return NodeSettings.from_node_config(node)
