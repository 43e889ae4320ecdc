"""`fedhealth deploy supernode ARGS`: flower-supernode, plus a record of every app it was asked to run.

Why: with `--trusted-entities`, Flower 1.41's SuperNode refuses an app whose FAB carries no
signature by a trusted key, and it does so *before* any app process starts (in
`flwr/supernode/start_client_internal.py`, `_pull_and_store_message`: the error reply is sent in
place of the message, and the FAB is never stored, so no ClientApp can load it). That is the
enforcement, and it is Flower's. But its log says only "FAB verification failed" or "App
verification is not supported by the connected SuperLink": it does not name the app. This launcher
is the hospital's own code (installed at the hospital, never shipped in a FAB): it wraps the
SuperNode's FAB download so that each app it is sent is named, with its hash, the keys that signed
it and Flower's verdict computed by Flower's own `_verify_fab`, in the SuperNode's log and as one
JSON line in the hospital's app-check log (`FEDHEALTH_APP_LOG`). It changes no decision Flower
makes. It is tied to flwr 1.41's internals and refuses to start if they are not what it expects.

Two more things it does for speed, both outside Flower's files: it pulls again every
`FEDHEALTH_SUPERNODE_POLL_INTERVAL` seconds (default 0.5) while no message comes, where Flower's loop sleeps a
fixed 3 s (`install`); and with `--isolation process` and `FEDHEALTH_CLIENTAPP=forkserver` (what
clients/deploy.sh passes by default) it starts fedhealth's SuperExec beside the node, which forks each message's
`flwr-clientapp` from a warm fork server (fedhealth/deployment/superexec.py, `start_superexec`).

It also explains the one refusal a hospital cannot read: when the SuperLink will not activate the node,
Flower exits with `[code: 2004] Failed to activate SuperNode.` for two different causes (the key is not
registered, or the SuperLink still counts the node online after an unclean stop), and only the SuperLink's
log, which the hospital does not see, says which. The launcher notices that exit and prints both causes,
the key's fingerprint for the operator to compare, and how to tell them apart (`activation_refused`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

from fedhealth.deployment.superexec_watch import SuperExecWatch, watch_flowers_superexec
from fedhealth.errors import DeploymentError

APP_LOG_ENV = "FEDHEALTH_APP_LOG"
HOSPITAL_ENV = "FEDHEALTH_HOSPITAL"
ACTIVATION_REFUSED = "[code: 2004]"  # flwr 1.41: FLEET_NODE_ACTIVATION_FAILED, in the SuperNode's exit message
HEARTBEAT_WINDOW_S = 60  # flwr 1.41 keeps a node online for 2 x its 30 s heartbeat interval after its last one
POLL_ENV = "FEDHEALTH_SUPERNODE_POLL_INTERVAL"
DEFAULT_POLL_S = 0.5  # a few Fleet API requests a second per hospital while idle
FLOWER_POLL_S = 3.0  # flwr 1.41's fixed sleep after an empty pull (start_client_internal.py)
CLIENTAPP_ENV = "FEDHEALTH_CLIENTAPP"  # "forkserver": start fedhealth's SuperExec beside a --isolation process node


def app_verdict(fab: Any, trusted: dict[str, str] | None) -> dict[str, Any]:
    """What Flower will decide about `fab` (a `flwr.supercore.fab.Fab`), and why, with Flower's own check."""
    from flwr.supernode.start_client_internal import _verify_fab

    from fedhealth.deployment.app_trust import AppTrustError, summarize_fab

    signed_by = sorted(k for k in fab.verifications if k != "valid_license")
    try:
        summary = summarize_fab(fab.content)
        app_id, version = summary.app_id, summary.version
    except AppTrustError:
        app_id, version = None, None
    verified = []
    if trusted:
        for key_id in signed_by:
            if key_id in trusted:
                try:
                    if _verify_fab(fab, {key_id: trusted[key_id]}):
                        verified.append(key_id)
                except (ValueError, TypeError, KeyError):
                    pass
    if not trusted:
        decision = "runs unchecked: this SuperNode has no --trusted-entities"
    elif not fab.verifications.get("valid_license", ""):
        decision = "refused: the FAB carries no signature (an unsigned `flwr run` of a local app)"
    elif verified:
        decision = "approved"
    else:
        decision = (f"refused: signed by {', '.join(signed_by) or 'nobody'}, no signature verifies with a key "
                    "this hospital trusts")
    return {"fab_sha256": fab.hash_str, "app_id": app_id, "version": version, "signed_by": signed_by,
            "verified_by": verified, "decision": decision}


def poll_interval() -> float | None:
    """Seconds between the SuperNode's pulls for messages while none comes (`FEDHEALTH_SUPERNODE_POLL_INTERVAL`,
    default 0.5), or None for Flower's own fixed 3 s (a value of 3 or more, or `flower`)."""
    raw = os.environ.get(POLL_ENV, "").strip()
    if raw.lower() == "flower":
        return None
    try:
        value = float(raw) if raw else DEFAULT_POLL_S
    except ValueError:
        raise LauncherError(f"{POLL_ENV}={raw!r}: give seconds between 0.05 and 3, or 'flower'") from None
    if not 0.05 <= value <= FLOWER_POLL_S:
        raise LauncherError(f"{POLL_ENV}={raw!r}: give seconds between 0.05 and 3, or 'flower'")
    return None if value >= FLOWER_POLL_S else value


def install(app_log: Path | None, hospital: str, poll: float | None = None) -> None:
    """Wrap flwr 1.41's `_pull_and_store_message` so the FAB it downloads for a new run is recorded, and, with
    `poll`, so that it pulls again every `poll` seconds until a message comes.

    Why the second: Flower's SuperNode loop (`start_client_internal`) sleeps a fixed 3 s after every pull that
    brought nothing, with no flag to change it, and a SecAgg+ round is five exchanges that each wait for that
    pull. Pulling again inside the wrapper means Flower's loop only ever sees a message (it never reaches its
    sleep); each pull is the same single Fleet API request Flower makes."""
    import time

    from flwr.supercore import log as flwr_log
    from flwr.supernode import start_client_internal as sci

    original: Callable[..., Any] = sci._pull_and_store_message
    if getattr(original, "_fedhealth_wrapped", False):
        return
    seen: set[tuple[int, str]] = set()

    def pull_and_store_message(*args: Any, **kwargs: Any) -> Any:
        get_fab = kwargs["get_fab"]
        trusted = kwargs.get("trusted_entities")

        def recorded_get_fab(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            verdict = app_verdict(fab, trusted)
            text = (f"fedhealth app check: hospital {hospital}, run {run_id}: app {verdict['app_id']} "
                    f"{verdict['version']} (FAB sha256 {verdict['fab_sha256']}): {verdict['decision']}")
            flwr_log(INFO if verdict["decision"] == "approved" else ERROR, text)
            if app_log is not None and (run_id, fab.hash_str) not in seen:
                seen.add((run_id, fab.hash_str))
                entry = {"time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                         "hospital": hospital, "run_id": str(run_id), **verdict}
                app_log.parent.mkdir(parents=True, exist_ok=True)
                with open(app_log, "a", encoding="utf-8") as out:
                    out.write(json.dumps(entry) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
            return fab

        kwargs["get_fab"] = recorded_get_fab
        while True:
            run_id = original(*args, **kwargs)
            if run_id is not None or poll is None:
                return run_id
            time.sleep(poll)

    pull_and_store_message._fedhealth_wrapped = True  # type: ignore[attr-defined]
    pull_and_store_message.__wrapped__ = original  # type: ignore[attr-defined]
    sci._pull_and_store_message = pull_and_store_message


class LauncherError(DeploymentError, RuntimeError):
    """The installed Flower is not the one this launcher was written against."""


def check_flower() -> None:
    """Raise LauncherError unless flwr is 1.41.0 with the internals `install` wraps."""
    import flwr
    from flwr.supernode import start_client_internal as sci

    pull = sci._pull_and_store_message
    pull = getattr(pull, "__wrapped__", pull)  # Flower's own, if `install` already wrapped it
    starts_superexec = "subprocess" in sci.start_client_internal.__code__.co_names  # superexec_watch wraps it
    if flwr.__version__ != "1.41.0" or "trusted_entities" not in pull.__code__.co_varnames or not starts_superexec:
        raise LauncherError(f"fedhealth's SuperNode launcher was written against flwr 1.41.0 (found "
                            f"{flwr.__version__}); check flwr/supernode/start_client_internal.py and update "
                            "fedhealth/deployment/supernode.py before deploying")


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in flower-supernode's arguments."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def activation_refused(hospital: str, key_path: str | None, superlink: str | None) -> list[str]:
    """What a hospital reads when the SuperLink refused to activate its node: the two causes Flower's one code
    stands for, the fingerprint the operator compares, and how to tell the causes apart."""
    from fedhealth.security.certs import CertificateError, load_node_private_key, public_key_fingerprint

    try:
        fingerprint = public_key_fingerprint(load_node_private_key(key_path)) if key_path else "unknown"
    except CertificateError:
        fingerprint = f"unreadable ({key_path})"
    where = f"the SuperLink at {superlink}" if superlink else "the SuperLink"
    return [
        f"hospital {hospital}: {where} refused to activate this SuperNode ({ACTIVATION_REFUSED} Failed to activate "
        "SuperNode.). Flower gives this one code for two causes; the SuperLink's log says which:",
        f"  1. its key is not registered there: ask the operator to check that the key with fingerprint "
        f"{fingerprint} is filed for hospital {hospital} and registered (fedhealth certs add-hospital, then "
        "server/deploy.sh register; `ssh-keygen -lf PKI/hospitals/NAME/supernode_auth.pub` prints the same "
        "fingerprint). The SuperLink logs: No SuperNode found with the given public key.",
        f"  2. the SuperLink still counts this node online: it stopped less than {HEARTBEAT_WINDOW_S} s ago "
        "without deregistering (killed, crashed, its host restarted). Wait for its heartbeat window, "
        f"{HEARTBEAT_WINDOW_S} s, and start it again. The SuperLink logs: SuperNode with node ID ... could not "
        "be activated.",
        f"  To tell them apart: start it again after {HEARTBEAT_WINDOW_S} s; refused again means cause 1.",
    ]


class _Refusals(logging.Handler):
    """Remembers whether Flower logged the activation refusal (its exit message goes through its logger)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if ACTIVATION_REFUSED in record.getMessage():
            self.seen = True


def start_superexec(args: Sequence[str]) -> subprocess.Popen | None:
    """fedhealth's SuperExec (fedhealth/deployment/superexec.py) for this node, when the node runs with
    `--isolation process` and `$FEDHEALTH_CLIENTAPP` is `forkserver`; None otherwise (in subprocess isolation
    Flower starts its own SuperExec; with `process` and no fedhealth one, whoever set it up runs theirs).

    It is started as Flower starts its own in subprocess isolation: plain HTTP to this node's Runtime API on
    loopback, `--parent-pid` this process (it exits when the node does), in this process group (stopping the
    group stops it)."""
    mode = os.environ.get(CLIENTAPP_ENV, "")
    if mode not in ("", "forkserver", "subprocess"):
        raise LauncherError(f"{CLIENTAPP_ENV}={mode!r}: give forkserver or subprocess")
    if _option(args, "--isolation") != "process" or mode != "forkserver":
        return None
    address = f"{_option(args, '--host') or '127.0.0.1'}:{_option(args, '--port') or '9094'}"
    return subprocess.Popen(superexec_command(address, os.getpid()))


SUPEREXEC_PROGRAM = "flower-superexec"  # superexec_command's first argument, on the command line for kill_tree


def superexec_command(runtime_api_address: str, parent_pid: int) -> list[str]:
    """fedhealth's SuperExec for a SuperNode whose Runtime API is at `runtime_api_address` (plain HTTP on
    loopback, as the SuperExec a SuperNode starts itself in subprocess isolation), stopping when `parent_pid`
    exits. Its command line names flower-superexec and the node's `--runtime-api-address`, which is how
    `fedhealth.deployment.processes.kill_tree` and `pgrep -af 'flower-|flwr-'` find a node's processes."""
    return [sys.executable, "-m", "fedhealth.cli", "deploy", "superexec", SUPEREXEC_PROGRAM, "--runtime-api-address",
            runtime_api_address, "--insecure", "--parent-pid", str(parent_pid)]


def launch(args: Sequence[str]) -> None:
    """Install the record, then run Flower's own `flower-supernode` entry point with `args`, unchanged.

    The app-check log is `$FEDHEALTH_APP_LOG` (none if unset), the hospital's name `$FEDHEALTH_HOSPITAL`.
    Returns or exits as flower-supernode does (after an activation refusal, with `activation_refused`'s
    explanation on stderr first); raises LauncherError before starting it on another flwr."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    check_flower()
    app_log = os.environ.get(APP_LOG_ENV)
    hospital = os.environ.get(HOSPITAL_ENV, "?")
    install(Path(app_log) if app_log else None, hospital, poll_interval())
    from flwr.common.logger import FLOWER_LOGGER
    from flwr.supernode.cli.flower_supernode import flower_supernode

    watch = SuperExecWatch(hospital)
    watch_flowers_superexec(watch)  # subprocess isolation: the SuperExec Flower starts
    superexec = start_superexec(args)
    if superexec is not None:  # --clientapp forkserver: fedhealth's own
        watch.track(superexec)
    refusals = _Refusals()
    FLOWER_LOGGER.addHandler(refusals)
    sys.argv = ["flower-supernode", *args]  # flower-supernode parses sys.argv itself
    try:
        flower_supernode()
    except SystemExit:
        if watch.gave_up:  # Flower exits 0 after the SIGTERM the watch sent: this is a failure
            raise SystemExit(1) from None
        if refusals.seen:
            for line in activation_refused(hospital, _option(args, "--auth-supernode-private-key"),
                                           _option(args, "--superlink")):
                print(f"error: {line}", file=sys.stderr, flush=True)
        raise
    finally:
        FLOWER_LOGGER.removeHandler(refusals)
        watch.terminate()  # the SuperExecs it watches, replacements included (Flower's own exits with the node)
