"""The hospital's audit trail, written as each training reply leaves: what came in, what went out.

It is also where the hospital's own figures (`local.*` metrics: its total epsilon, training loss, exact
counts, the full reason for a decline) are recorded and removed from the reply, so they never leave.

Why a mod: it sits just outside `update_mod`, so the update it hashes is exactly what is handed to
SecAgg+ for masking (or sent in the clear), after every check, and a round the hospital declined is
logged as declined. One entry per training request (the SecAgg+ stage that carries the update),
appended and fsync'ed before the reply goes on: a reply that could not be logged is not sent.

Where the log lives: the node config's `audit-log` (deployment; signed with `audit-key`, the
hospital's own audit-signing key, separate from its SuperNode authentication key), else
`<run dir>/audit/<hospital>.jsonl` (simulation, chained but unsigned: there is no hospital key in a
simulation).
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app.message import Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fedhealth.hospital.node_config import settings_of
from fedhealth.runs import rundir
from fedhealth.wire import (
    DECLINED_KEY,
    LEDGER_DIR_KEY,
    ROUND_KEY,
    SECURE_KEY,
    split_local,
    study_from_payload,
)

log = logging.getLogger(__name__)
FIT_CONFIG = "fitins.config"
_logs: dict[tuple[str, str], object] = {}


def audit_log_for(ctxt: Context, hospital: str, config: dict):
    """The hospital's AuditLog (one writer per process and file), or None when there is nowhere to write."""
    from fedhealth.privacy.audit import AuditLog

    settings = settings_of(ctxt)
    path = str(settings.audit_log or "")
    key = str(settings.audit_key or "")
    if not path:
        ledger_dir = str(config.get(LEDGER_DIR_KEY, ""))
        if not ledger_dir or not settings.simulated:
            # Deployment without `audit-log`: the server's run directory is not the hospital's disk.
            log.warning("hospital %s keeps no audit log: set audit-log (and audit-key) in its node config", hospital)
            return None
        path = str(rundir.hospital_file(Path(ledger_dir).parent, rundir.AUDIT_DIR, hospital, ".jsonl"))
    cache_key = (path, key)
    if cache_key not in _logs:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _logs[cache_key] = AuditLog(path, key or None)
    return _logs[cache_key]


def audit_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN or FIT_CONFIG not in msg.content.config_records:
        return call_next(msg, ctxt)
    from fedhealth.hospital.identity import resolve_hospital
    from fedhealth.privacy.audit import hash_arrays
    from fedhealth.study.policy import SitePolicy, effective_cap

    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    received = hash_arrays(parameters_to_ndarrays(fit_ins.parameters))
    cfg = study_from_payload(fit_ins.config)
    index = resolve_hospital(ctxt, cfg)
    hospital = cfg.hospitals[index]
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    metrics, local = split_local(dict(fit_res.metrics))
    if local:  # the hospital's own figures end here: the reply goes on without them
        fit_res.metrics = metrics
        reply.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    audit = audit_log_for(ctxt, hospital.name, fit_ins.config)
    if audit is None:
        return reply
    declined = metrics.get(DECLINED_KEY)
    policy_file = settings_of(ctxt).policy_file
    policy = SitePolicy.from_file(policy_file) if policy_file else hospital.policy
    checks: dict[str, object] = {
        "secure_aggregation": bool(fit_ins.config.get(SECURE_KEY, False)),
        "site_policy": "declined" if declined else "passed",
        "update_checked": declined is None,  # finite, agreed shapes, weight within max_weight (update_mod)
    }
    if cfg.privacy.mode == "record":
        checks["epsilon_cap"] = f"{effective_cap(policy, cfg.privacy.max_epsilon):g}"
    from fedhealth.data.hospitals import load_hospital

    entry = audit.append(
        round=int(fit_ins.config.get(ROUND_KEY, 0)), run_id=str(msg.metadata.run_id), hospital=hospital.name,
        # the study, not Flower's run id (new after a restart): a round re-sent after `--resume` is a retry
        study=f"{cfg.name}:{cfg.fingerprint()}",
        global_model_sha256=received,
        update_sha256=None if declined else hash_arrays(parameters_to_ndarrays(fit_res.parameters)),
        records_used=0 if declined else len(load_hospital(cfg, index, _data_file(ctxt)).y_train),
        epsilon_charged=float(local.get("epsilon_charged", 0.0)),
        epsilon_total=float(local["epsilon_total"]) if "epsilon_total" in local else None,
        delta=float(metrics["delta"]) if "delta" in metrics else None,
        policy_checks=checks,
        decision=f"declined: {str(local.get('detail') or declined)[:400]}" if declined else "sent")
    log.info("audit: hospital %s round %s %s (entry %d)", hospital.name, entry["round"], entry["decision"][:8],
             entry["seq"])
    return reply


def _data_file(ctxt: Context) -> str | None:
    value = settings_of(ctxt).data_file
    return str(value) if value is not None else None
