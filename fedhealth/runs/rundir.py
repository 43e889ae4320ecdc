"""The run directory: the one place a run writes, and the only source of what a user sees.

Layout::

    config.resolved.toml   the whole study config, populations expanded, defaults filled
    state.json             status (running / completed / failed), last completed round, fingerprint,
                           the server process driving it (pid, host) and each resume
    metrics.jsonl          one JSON object per round per hospital (federated model on its test split)
    rounds.jsonl           one JSON object per round: who was aggregated, who failed and why
    checkpoints/round_NNNN.npz  global weights (and server optimiser state) after each completed round
    model.npz              the final global weights
    references.json        local-only and pooled reference results
    summary.json           overall and per-hospital AUROC of federated, local-only, pooled, best possible
    privacy/<hospital>.json  each hospital's privacy ledger (record-level DP runs)

Writes are atomic (temp file + rename), so an interrupted run never leaves a half-written file
that `--resume` could mistake for a completed round.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.durable import atomic_write_text as _durable_write_text
from fedhealth.durable import inside
from fedhealth.errors import RunDirectoryError

CONFIG_FILE = "config.resolved.toml"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
ROUNDS_FILE = "rounds.jsonl"
CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.npz"
REFERENCES_FILE = "references.json"
SUMMARY_FILE = "summary.json"
SECAGG_FILE = "secure_aggregation.json"  # the derived SecAgg+ parameters
PRIVACY_AUDIT_FILE = "privacy_audit.json"  # membership-inference attacks on the final model
PRIVACY_DIR = "privacy"  # one ledger per hospital (simulation): <hospital>.json
AUDIT_DIR = "audit"  # each simulated hospital's audit trail: <hospital>.jsonl
REPORT_FILE = "report.html"
FIGURES = {  # report figures, next to report.html
    "learning_curves": "learning_curves.png", "final_comparison": "final_comparison.png",
    "calibration": "calibration.png", "privacy": "privacy.png", "secure_aggregation": "secure_aggregation.png",
    "equity": "equity.png", "contribution": "contribution.png",
}
SIBLING_DIR = "sibling-no-dp"  # the same federation without DP, inside a DP run's directory
MLFLOW_DIR = "mlruns"  # experiment tracking, when [tracking] backend = "mlflow" and no uri
TENSORBOARD_DIR = "tensorboard"  # when backend = "tensorboard" and no uri
# experiments over sibling federations: their own output directory
CONTRIBUTION_FILE = "contribution.json"  # `fedhealth contribution` (copied into a run with --report-into)
COALITIONS_DIR = "coalitions"
SWEEP_FILE = "sweep.json"
PRIVACY_UTILITY_FIGURE = "privacy_utility.png"
FAIRNESS_FILE = "fairness.json"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    """JSON with NaN written as null, so every file is standard JSON other tools can read."""
    return json.dumps(_nan_to_none(obj), default=_json_default, allow_nan=False)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` atomically and durably (fsync'ed; see fedhealth.durable), readable as before (0644)."""
    _durable_write_text(path, text, mode=0o644)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_nan_to_none(obj), default=_json_default, indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append whole lines and flush them to disk: a crash leaves complete lines only."""
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl_after_round(path: Path, last_round: int) -> None:
    """Drop lines of rounds after `last_round` (a round that was interrupted before its checkpoint)."""
    rows = [r for r in read_jsonl(path) if int(r.get("round", 0)) <= last_round]
    atomic_write_text(path, "".join(dumps(r) + "\n" for r in rows))


def hospital_file(run_dir: Path, folder: str, hospital: str, suffix: str) -> Path:
    """A hospital's own file in the run directory (`privacy/<name>.json`, `audit/<name>.jsonl`), refused
    (PathEscapeError) if the name would put it outside that folder."""
    return inside(Path(run_dir) / folder, f"{hospital}{suffix}")


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"round_{server_round:04d}.npz"


def save_weights(path: Path, weights: list[np.ndarray], extra: dict[str, list[np.ndarray]] | None = None) -> None:
    """Save weights (and named optimiser-state lists such as FedAdam's m_t, v_t) atomically."""
    arrays = {f"w{i:03d}": w for i, w in enumerate(weights)}
    for name, values in (extra or {}).items():
        arrays.update({f"{name}{i:03d}": v for i, v in enumerate(values)})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(path: Path) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """Inverse of save_weights: (weights, {name: arrays})."""
    with np.load(path) as data:
        keys = sorted(data.files)
        weights = [data[k] for k in keys if k.startswith("w")]
        extra: dict[str, list[np.ndarray]] = {}
        for k in keys:
            if not k.startswith("w"):
                extra.setdefault(k[:-3], []).append(data[k])
    return weights, extra


def last_completed_round(run_dir: Path) -> int:
    """The highest round whose checkpoint exists (0 when none)."""
    found = sorted((run_dir / CHECKPOINT_DIR).glob("round_*.npz"))
    return int(found[-1].stem.split("_")[1]) if found else 0


class RunDirError(RunDirectoryError, ValueError):
    """A run directory that cannot be created or resumed; the message says which and why."""


def create_run_dir(cfg, out: Path | None = None, base: Path = Path("runs"),
                   resume_hint: str = "choose another --out or --resume it") -> Path:
    """Create a fresh run directory holding the resolved config; refuses to reuse a non-empty one."""
    from datetime import datetime

    from fedhealth.study.config import config_to_toml

    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = inside(base, f"{stamp}-{cfg.name}")
        suffix = 1
        while out.exists():
            suffix += 1
            out = inside(base, f"{stamp}-{cfg.name}-{suffix}")
    if out.exists() and any(out.iterdir()):
        found = ""
        with contextlib.suppress(RunDirError, OSError, ValueError):
            found = f" ({describe_state(out)})"
        raise RunDirError(f"{out}: run directory exists and is not empty{found}; {resume_hint}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, config_to_toml(cfg))
    write_json(out / STATE_FILE, {"status": "running", "last_round": 0, "rounds": cfg.federation.rounds,
                                  "fingerprint": cfg.fingerprint(), "server": server_identity(),
                                  "updated_at": _now()})
    return out


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def server_identity() -> dict[str, Any]:
    """Which process drives the run: a `running` state whose process is gone was interrupted (killed
    with its SuperLink, its host rebooted) and could not say so itself."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now()}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def interrupted(state: dict[str, Any]) -> bool:
    """A state that says `running` although the process that wrote it is gone (checked on this host only;
    a run driven from another host is taken at its word)."""
    server = state.get("server") or {}
    if state.get("status") != "running" or not server.get("pid"):
        return False
    if server.get("host") != socket.gethostname():
        return False
    return server["pid"] != os.getpid() and not _process_alive(int(server["pid"]))


def describe_state(run_dir: Path) -> str:
    """One line on where a run stands, for error messages and `fedhealth status`."""
    state = read_state(run_dir)
    status = state.get("status", "?")
    done = f"round {state.get('last_round', 0)} of {state.get('rounds', '?')} completed"
    if interrupted(state):
        server = state["server"]
        return (f"interrupted: the state says running but its server process {server['pid']} is gone; {done}, "
                f"last update {state.get('updated_at', '?')}")
    if status == "failed":
        return f"failed: {state.get('error', 'no reason recorded')}; {done}"
    if status == "running":
        server = state.get("server") or {}
        where = f" by process {server['pid']} on {server['host']}" if server.get("pid") else ""
        return f"running{where}; {done}"
    return f"{status}; {done}"


def reopen_run_dir(run_dir: Path, cfg=None) -> Path:
    """Continue a run directory from its last checkpoint, under a new server process.

    Refused, with the reason: not a run directory; its config no longer matches the fingerprint it was
    written with (or, when `cfg` is given, the study submitted now is another one: a resumed study must
    be the same study, or the hospitals' ledgers would charge it as new); already completed; or still
    being run by a live process.
    """
    state = read_state(run_dir)
    from fedhealth.data.study_file import load_config

    saved = load_config(run_dir / CONFIG_FILE)
    if state.get("fingerprint") != saved.fingerprint():
        raise RunDirError(f"{run_dir}: {CONFIG_FILE} no longer matches the run that wrote it; cannot resume")
    if cfg is not None and cfg.fingerprint() != saved.fingerprint():
        raise RunDirError(f"{run_dir}: the study submitted now (fingerprint {cfg.fingerprint()}) is not the one "
                          f"this directory ran (fingerprint {saved.fingerprint()}); resume it with its own config "
                          "or start a new run directory")
    if state.get("status") == "completed":
        raise RunDirError(f"{run_dir}: the run already completed ({describe_state(run_dir)}); nothing to resume")
    if state.get("status") == "running" and not interrupted(state):
        raise RunDirError(f"{run_dir}: {describe_state(run_dir)}; stop that process before resuming")
    resumes = [*state.get("resumes", []), {"at": _now(), "after_round": last_completed_round(run_dir),
                                           "previous": describe_state(run_dir)}]
    state.update(status="running", server=server_identity(), resumes=resumes, updated_at=_now())
    for stale in ("error", "stopped_by"):
        state.pop(stale, None)
    write_json(run_dir / STATE_FILE, state)
    return run_dir


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not (run_dir / CONFIG_FILE).is_file() or not path.is_file():
        raise RunDirError(f"{run_dir}: not a fedhealth run directory (no {CONFIG_FILE} and {STATE_FILE})")
    return read_json(path)


def update_state(run_dir: Path, **fields: Any) -> None:
    """Change some fields of state.json, keeping the rest (who runs it, its resumes)."""
    state = read_state(run_dir)
    state.update(fields, updated_at=_now())
    write_json(run_dir / STATE_FILE, state)


def mark_status(run_dir: Path, status: str, **extra: Any) -> None:
    update_state(run_dir, status=status, last_round=last_completed_round(run_dir), **extra)


@contextlib.contextmanager
def failed_on_signal(run_dir: Path) -> Iterator[None]:
    """Record in the run directory that a signal stopped the study, then let Flower's own handler exit.

    The ServerApp process is stopped by signal when its SuperLink shuts down, when `flwr stop` is used, or
    when Flower gives up reaching a SuperLink that is gone (it sends itself SIGINT). Flower's handler exits
    the process before an exception could reach `main`, so without this the state would say `running`
    forever. SIGKILL cannot be caught: state.json then names a process that no longer exists, which
    `fedhealth status` and `resume=true` recognise as interrupted.
    """
    if threading.current_thread() is not threading.main_thread():  # simulation runs the ServerApp in a thread
        yield
        return
    signals = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGQUIT", None)) if s is not None]
    previous = {s: signal.getsignal(s) for s in signals}

    def record(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        with contextlib.suppress(Exception):
            mark_status(run_dir, "failed", stopped_by=name,
                               error=f"the server process received {name} during round "
                                     f"{last_completed_round(run_dir) + 1} (SuperLink stopped or restarted, "
                                     "`flwr stop`, or the server host shut down); resume it with resume=true")
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for s in signals:
        signal.signal(s, record)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def mark_completed(run_dir: Path) -> None:
    mark_status(run_dir, "completed")
