"""Which hospital this node is, and whether the study it was sent uses the hospital's own schema.

Its own module so that every part of the hospital side (the client, its audit and SecAgg+ mods) asks
the same question the same way, without importing the ClientApp."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flwr.common import Context

from fedhealth.hospital.node_config import NodeSettings, settings_of
from fedhealth.study.config import StudyConfig


def hospital_index(context: Context | Mapping | NodeSettings) -> int:
    """Which hospital this node is: Flower's `partition-id` in simulation, `hospital-index` if set."""
    index = settings_of(context).hospital_index
    if index is None:
        raise ValueError("node config names no hospital: set hospital-name (deployment) or partition-id")
    return index


def resolve_hospital(context: Context | Mapping | NodeSettings, cfg: StudyConfig) -> int:
    """This node's position in the study's hospital list: by `hospital-name` (deployment: the study's order
    is the coordinator's business), else by index."""
    settings = settings_of(context)
    name = settings.hospital_name
    if name:
        names = [h.name for h in cfg.hospitals]
        if name not in names:
            raise ValueError(f"this node is hospital {name!r}, which study {cfg.name!r} does not list "
                             f"({', '.join(names)}); check hospital-name in the node config")
        return names.index(name)
    index = hospital_index(settings)
    if not 0 <= index < len(cfg.hospitals):
        raise ValueError(f"hospital index {index} outside the study's {len(cfg.hospitals)} hospitals")
    return index


_schema_checked: set[tuple[str, str]] = set()


def check_own_schema(cfg: StudyConfig, schema_file: str, hospital: str) -> None:
    """A hospital that keeps its own copy of the schema trains only if the server's study uses that schema:
    otherwise its columns would be read with another study's units and ranges."""
    key = (cfg.fingerprint(), schema_file)
    if key in _schema_checked:
        return
    from fedhealth.study.schema import load_schema

    own = load_schema(Path(schema_file))
    if cfg.study_schema is None or cfg.study_schema.fingerprint() != own.fingerprint():
        theirs = "none (generated hospitals)" if cfg.study_schema is None else repr(cfg.study_schema.study.name)
        raise ValueError(f"hospital {hospital}: the study's schema ({theirs}) differs from this hospital's "
                         f"{schema_file} ({own.study.name!r}); refusing to read its records with another schema")
    _schema_checked.add(key)
