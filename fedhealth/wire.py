"""What travels with each Flower instruction besides the weights: the study config and the round.

The server sends the resolved study config with every fit/evaluate instruction, so a ClientApp
needs nothing but its hospital's identity (Flower's `partition-id` in simulation) to rebuild its
model and data. The same holds under `flwr run` and our own `fedhealth simulate`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from fedhealth.study.config import StudyConfig, parse_config

STUDY_KEY = "fedhealth.study"
ROUND_KEY = "fedhealth.round"
LEDGER_DIR_KEY = "fedhealth.ledger_dir"  # simulation: where each hospital keeps its privacy ledger
DECLINED_KEY = "declined"  # in FitRes metrics: why the hospital declined the round (e.g. its budget)
HOSPITAL_KEY = "hospital_index"  # in every FitRes/EvaluateRes metrics dict
SECURE_KEY = "fedhealth.secure"  # set by the hospital's own mod: is this fit request under SecAgg+?
# Metrics under this prefix are for the hospital's own audit trail and log: its audit mod reads them and
# removes them before the reply goes on, so they never leave the hospital.
LOCAL_PREFIX = "local."


def split_local(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics that may leave, the hospital's own figures with the prefix removed)."""
    shared = {k: v for k, v in metrics.items() if not k.startswith(LOCAL_PREFIX)}
    local = {k[len(LOCAL_PREFIX):]: v for k, v in metrics.items() if k.startswith(LOCAL_PREFIX)}
    return shared, local

_parsed: dict[str, StudyConfig] = {}


def study_payload(cfg: StudyConfig, server_round: int, ledger_dir: str = "") -> dict[str, Any]:
    payload: dict[str, Any] = {STUDY_KEY: cfg.model_dump_json(), ROUND_KEY: server_round, LEDGER_DIR_KEY: ledger_dir}
    if cfg.privacy.mode == "hospital":
        from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

        # Hospitals clip in both noise placements; Flower's central-noise wrapper sets the same value.
        payload[KEY_CLIPPING_NORM] = cfg.privacy.clipping_norm
    return payload


def study_from_payload(config: dict[str, Any]) -> StudyConfig:
    """Parse (once per process and study) the config sent by the server."""
    raw = config.get(STUDY_KEY)
    if not isinstance(raw, str):
        raise ValueError(f"instruction carries no {STUDY_KEY!r}: is this server a fedhealth server?")
    key = hashlib.sha256(raw.encode()).hexdigest()
    if key not in _parsed:
        _parsed.clear()
        _parsed[key] = parse_config(json.loads(raw), "server study config")
    return _parsed[key]


# ---- how a hospital's decline reads at the server: its index and a fixed category, nothing of its own

DECLINED_MARK = "fedhealth-declined"  # how a decline reads in the error reply the server receives

_PUBLIC_REASONS = (  # (pattern in the hospital's own reason, the category the server may read)
    ("federation.participants", "not a participant in this study"),
    ("too few hospitals", "too few hospitals in the round for its minimum aggregate"),
    ("reconstruction threshold", "the round's SecAgg+ threshold is too low for its minimum aggregate"),
    ("site policy", "its site policy"),
    ("ledger", "its privacy ledger"),
    ("epsilon|budget|cap", "its privacy budget"),
)


def public_decline_reason(index: int, reason: str) -> str:
    """What the server is told when a hospital declines: its index and a fixed category, never the
    hospital's own text (which may hold a path, a record count or an epsilon)."""
    category = next((public for pattern, public in _PUBLIC_REASONS if re.search(pattern, reason, re.I)),
                    "its own checks")
    return f"{DECLINED_MARK}: hospital {index} declined this round ({category})"


def declined_from_error(text: str) -> tuple[int, str] | None:
    """(hospital index, category) if an error reply is a hospital's decline, else None (server side)."""
    match = re.search(rf"{DECLINED_MARK}: hospital (\d+) declined this round \(([^)]*)\)", text)
    return (int(match.group(1)), match.group(2)) if match else None
