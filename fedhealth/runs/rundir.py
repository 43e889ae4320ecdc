"""The run directory: the one place a run writes, and the only source of what a user sees.

Layout::

    config.resolved.toml   the whole study config, populations expanded, defaults filled
    state.json             status (running / completed / failed / interrupted), last completed round, fingerprint,
                           the server process driving it (pid, host) and each resume
    driver.lock            locked (flock) by the one process driving the run; holds its pid
    metrics.jsonl          one JSON object per round per hospital (federated model on its test split)
    rounds.jsonl           one JSON object per round: who was aggregated, who failed and why
    checkpoints/round_NNNN.npz  global weights (and server optimiser state) after each completed round
    model.npz              the final global weights
    references.json        local-only and pooled reference results
    summary.json           overall and per-hospital AUROC of federated, local-only, pooled, best possible
    privacy/<hospital>.json  each hospital's privacy ledger (record-level DP runs)

Writes are atomic (temp file + rename), so an interrupted run never leaves a half-written file
that `--resume` could mistake for a completed round.

Reading a damaged directory (docs/run-directory.md, "Damage and recovery"): every error names the file (and
the line of a JSONL file) and says whether `fedhealth simulate --resume` can continue, never suggesting a
command that would fail the same way. The one damage that is recovered is an incomplete last line of an
append-only JSONL file (a write a crash cut short): it is skipped, with a warning naming the file and line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.durable import atomic_write_text as _durable_write_text
from fedhealth.durable import inside, regular_file_problem
from fedhealth.errors import RunDirectoryError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.resolved.toml"
STATE_FILE = "state.json"
LOCK_FILE = "driver.lock"  # flock'ed by the process driving the run, for as long as it drives it
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
    "equity": "equity.png", "contribution": "contribution.png", "risk_groups": "risk_groups.png",
    "cohort_kaplan_meier": "cohort_kaplan_meier.png",
}
SIBLING_DIR = "sibling-no-dp"  # the same federation without DP, inside a DP run's directory
MLFLOW_DIR = "mlruns"  # experiment tracking, when [tracking] backend = "mlflow" and no uri
TENSORBOARD_DIR = "tensorboard"  # when backend = "tensorboard" and no uri
# experiments over sibling federations: their own output directory
DESCRIPTION_FILE = "description.json"  # `fedhealth describe` (copied into a run with --report-into)
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


class RunDirError(RunDirectoryError, ValueError):
    """A run directory that cannot be created or resumed; the message says which and why."""


class RunDirDamaged(RunDirError):
    """A file of a run directory that cannot be read as fedhealth wrote it; the message names the file (and
    line), and says whether `fedhealth simulate --resume` can continue."""


_CHECKPOINT = re.compile(r"^round_(\d+)\.npz$")
_warned: set[tuple[str, int, int]] = set()  # (file, line, size): each skipped line is reported once per process


def _advice(path: Path) -> str:
    """What the user can do about a damaged `path`: whether --resume can continue, and never a command that
    would fail on the same file again."""
    name = path.name
    if name == STATE_FILE:
        return ("neither `fedhealth status` nor `fedhealth simulate --resume` can use this run directory until the "
                "file is restored from a backup; otherwise start a new run directory")
    if name in (METRICS_FILE, ROUNDS_FILE):
        return ("only an incomplete last line can be skipped, so `fedhealth report` and `fedhealth simulate "
                "--resume` cannot use this file; restore it from a backup or start a new run directory")
    if name == SUMMARY_FILE:
        return ("`fedhealth report` needs it; a run that is not completed writes it again on `fedhealth simulate "
                "--resume`, a completed one must have it restored from a backup or be run again")
    if path.parent.name == CHECKPOINT_DIR:
        return (f"`fedhealth simulate --resume` cannot continue from it; move it out of {CHECKPOINT_DIR}/ and "
                "`--resume` continues from the checkpoint before it, or start a "
                "new run directory")
    return "restore it from a backup, or start a new run directory"


def damaged(path: Path, why: str) -> RunDirDamaged:
    """The error for a damaged run-directory file: the file, what is wrong, and what can be done."""
    return RunDirDamaged(f"{path}: damaged: {why}; {_advice(path)}")


def _text(path: Path) -> str:
    problem = regular_file_problem(path)  # a FIFO would block the read forever, /dev/zero fill the memory
    if problem:
        raise damaged(path, problem)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise damaged(path, f"not UTF-8 text (byte {err.start})") from None
    except IsADirectoryError:
        raise damaged(path, "a directory where fedhealth writes a file") from None
    except OSError as err:
        raise damaged(path, f"cannot be read ({err.strerror})") from None


def _parse(text: str, one_line: bool = False) -> Any:
    """JSON, with the reason in words that hold no value of the file (the decoder's own messages do not)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"column {err.colno}" if one_line else f"line {err.lineno} column {err.colno}"
        raise ValueError(f"not valid JSON ({where}: {err.msg})") from None
    except RecursionError:
        raise ValueError("nested too deeply to be a file fedhealth wrote") from None


def read_json(path: Path) -> Any:
    """A JSON file of the run directory; RunDirDamaged naming it (and the line) when it is not valid JSON."""
    text = _text(path)
    try:
        return _parse(text)
    except ValueError as err:
        raise damaged(path, str(err)) from None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold one object (state.json, summary.json)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise damaged(path, f"holds a JSON {type(data).__name__.replace('list', 'array')}, not an object")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line. An incomplete last line (a crash cut the write short) is skipped with a
    warning naming the file and line; a bad line before it is damage that RunDirDamaged names."""
    if not path.exists():
        return []
    text = _text(path)
    lines = text.split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = _parse(line, one_line=True)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__.replace('list', 'array')}, not an object")
        except ValueError as err:
            if i != last:
                raise damaged(path, f"line {i + 1} is {err}") from None
            if (str(path), i + 1, len(text)) not in _warned:
                _warned.add((str(path), i + 1, len(text)))
                log.warning("%s: line %d skipped: an incomplete last line (%s), left by a write that a crash cut "
                            "short; the lines before it are used", path, i + 1, err)
            continue
        rows.append(row)
    return rows


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
    """Inverse of save_weights: (weights, {name: arrays}); RunDirDamaged naming the file when it is not one."""
    import zipfile

    problem = regular_file_problem(path)
    if problem:
        raise damaged(path, problem)
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = sorted(data.files)
            weights = [data[k] for k in keys if k.startswith("w")]
            extra: dict[str, list[np.ndarray]] = {}
            for k in keys:
                if not k.startswith("w"):
                    extra.setdefault(k[:-3], []).append(data[k])
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError, AttributeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise damaged(path, f"not a readable weights file ({reason})") from None
    if not weights:
        raise damaged(path, "holds no weights")
    return weights, extra


def last_completed_round(run_dir: Path) -> int:
    """The highest round whose checkpoint exists (0 when none). Only `round_<digits>.npz` names count:
    anything else in checkpoints/ (a stray copy, a temporary file) is not a checkpoint fedhealth wrote."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return 0
    rounds = [int(m.group(1)) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return max(rounds, default=0)


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
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory; a run directory must be a new or empty folder: "
                          "choose another --out")
    _refuse_non_empty(out, resume_hint)
    out.mkdir(parents=True, exist_ok=True)
    held = _hold(out)
    try:  # again under the lock: another process may have created the run between the check and the lock
        _refuse_non_empty(out, resume_hint)
    except RunDirError:
        if not held:
            release_run(out)
        raise
    atomic_write_text(out / CONFIG_FILE, config_to_toml(cfg))
    write_json(out / STATE_FILE, {"status": "running", "last_round": 0, "rounds": cfg.federation.rounds,
                                  "fingerprint": cfg.fingerprint(), "server": server_identity(),
                                  "updated_at": _now()})
    return out


def _refuse_non_empty(out: Path, resume_hint: str) -> None:
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        found = ""
        with contextlib.suppress(RunDirError, OSError, ValueError):
            found = f" ({describe_state(out)})"
        raise RunDirError(f"{out}: run directory exists and is not empty{found}; {resume_hint}")


# The locks this process holds, by resolved run directory: the open file each flock lives on. flock is the
# one record of "who drives this run" that cannot go stale: the kernel drops it when the process exits,
# SIGKILL included, where state.json can only say what the process wrote before it died.
_HELD: dict[Path, int] = {}


def _hold(run_dir: Path) -> bool:
    """Take the run's lock (LOCK_FILE) for this process, or RunDirError naming the process that has it.
    True when this process held it already (a run it created and now resumes itself: what it may do is
    then told by the state, as before)."""
    key = run_dir.resolve()
    if key in _HELD:
        return True
    try:
        fd = os.open(inside(run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise RunDirError(f"{run_dir / LOCK_FILE}: cannot open the run's lock file ({err.strerror}); "
                          "a run directory must be a folder this user can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        except OSError:
            pid = "?"
        os.close(fd)
        raise RunDirError(f"{run_dir}: is being driven by another process (pid {pid if pid.isdigit() else '?'}); "
                          "wait for it or stop it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd
    return False


def release_run(run_dir: Path) -> None:
    """Let go of the run's lock (the run ended, or this process stopped driving it); nothing if not held."""
    fd = _HELD.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor drops the flock


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def server_identity() -> dict[str, Any]:
    """Which process drives the run: a `running` state whose process is gone was interrupted (killed
    with its SuperLink, its host rebooted) and could not say so itself."""
    return process_identity(os.getpid())


def process_identity(pid: int) -> dict[str, Any]:
    """pid and host, and (Linux) the boot and the process's start time: a pid alone can be another
    process's after a restart or a reboot, so "the process that wrote this state is alive" compares all."""
    identity: dict[str, Any] = {"pid": pid, "host": socket.gethostname(), "started_at": _now()}
    start, boot = _process_start(pid), _boot_id()
    if start is not None:
        identity["process_start"] = start
    if boot is not None:
        identity["boot"] = boot
    return identity


def _process_start(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (/proc/PID/stat, field 22); None where /proc is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def server_alive(state: dict[str, Any]) -> bool | None:
    """Whether the process that last drove the run still lives: True, False, or None where this cannot be
    told (no process recorded, or it ran on another host). A live process with the recorded pid but another
    start time (or another boot) is another process: the one recorded is gone."""
    server = state.get("server") or {}
    if not server.get("pid") or server.get("host") != socket.gethostname():
        return None
    pid = int(server["pid"])
    if server.get("boot") is not None and _boot_id() not in (None, server["boot"]):
        return False
    if not _process_alive(pid):
        return False
    started, now = server.get("process_start"), _process_start(pid)
    return not (started is not None and now is not None and started != now)


def still_driven(state: dict[str, Any]) -> bool:
    """The run's process is alive and has not let go of it: it may still be training or writing, whatever
    its status says (a `failed` or `interrupted` state written by a process that has not stopped yet)."""
    return server_alive(state) is True and not (state.get("server") or {}).get("released_at")


def interrupted(state: dict[str, Any]) -> bool:
    """Stopped by a signal (`interrupted`, written by the process as it stopped), or a state that says
    `running` although the process that wrote it is gone (checked on this host only; a run driven from
    another host is taken at its word)."""
    if state.get("status") == "interrupted":
        return True
    return state.get("status") == "running" and server_alive(state) is False


def describe_state(run_dir: Path) -> str:
    """One line on where a run stands, for error messages and `fedhealth status`."""
    state = read_state(run_dir)
    status = state.get("status", "?")
    done = f"round {state.get('last_round', 0)} of {state.get('rounds', '?')} completed"
    server = state.get("server") or {}
    alive = f"; its process {server.get('pid')} is still alive" if status != "running" and still_driven(state) else ""
    if status == "interrupted":
        last, rounds = int(state.get("last_round", 0)), state.get("rounds")
        when = (f"during round {last + 1}" if not isinstance(rounds, int) or last < rounds
                else "after its last round, before its summary was written")
        return f"interrupted by {state.get('stopped_by', 'a signal')} {when}; {done}{alive}"
    if interrupted(state):
        return (f"interrupted: the state says running but its server process {server['pid']} is gone; {done}, "
                f"last update {state.get('updated_at', '?')}")
    if status == "failed":
        return f"failed: {state.get('error', 'no reason recorded')}; {done}{alive}"
    if status == "running":
        where = f" by process {server['pid']} on {server['host']}" if server.get("pid") else ""
        return f"running{where}; {done}"
    return f"{status}; {done}"


def reopen_run_dir(run_dir: Path, cfg=None) -> Path:
    """Continue a run directory from its last checkpoint, under a new server process.

    Refused, with the reason: not a run directory; its config no longer matches the fingerprint it was
    written with (or, when `cfg` is given, the study submitted now is another one: a resumed study must
    be the same study, or the hospitals' ledgers would charge it as new); already completed; or still
    being run by a live process (another process holds its lock, LOCK_FILE, whatever state.json says).
    The lock is taken before anything is read and kept while this process drives the run.
    """
    read_state(run_dir)  # "not a fedhealth run directory" before a lock file is created in any folder
    held = _hold(run_dir)
    try:
        return _reopen(run_dir, cfg)
    except BaseException:
        if not held:
            release_run(run_dir)
        raise


def _reopen(run_dir: Path, cfg) -> Path:
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
    if still_driven(state):  # failed or interrupted, but its process has not stopped: it may still train
        server = state["server"]
        raise RunDirError(f"{run_dir}: {describe_state(run_dir)} on {server['host']} and has not let go of the run; "
                          f"wait for it to exit or stop it (kill {server['pid']}) before resuming")
    check_resumable(run_dir)
    resumes = [*state.get("resumes", []), {"at": _now(), "after_round": last_completed_round(run_dir),
                                           "previous": describe_state(run_dir)}]
    state.update(status="running", server=server_identity(), resumes=resumes, updated_at=_now())
    for stale in ("error", "stopped_by", "interrupted_during"):
        state.pop(stale, None)
    write_json(run_dir / STATE_FILE, state)
    return run_dir


def check_resumable(run_dir: Path) -> None:
    """Read, before a resumed federation starts, what it will read: the last checkpoint, metrics.jsonl and
    rounds.jsonl. A damaged one is named now (RunDirDamaged), not as a crash inside the federation followed
    by a hint to resume that would fail the same way."""
    last = last_completed_round(run_dir)
    if last:
        load_weights(checkpoint_path(run_dir, last))
    for name in (METRICS_FILE, ROUNDS_FILE):
        for number, row in enumerate(read_jsonl(run_dir / name), start=1):
            if not isinstance(row.get("round"), int) or isinstance(row["round"], bool):
                raise damaged(run_dir / name, f"row {number} has no integer `round`")


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    for needed in (run_dir / CONFIG_FILE, path):  # there but not a file: damage, not "not a run directory"
        problem = regular_file_problem(needed)
        if problem:
            raise damaged(needed, problem)
    if not (run_dir / CONFIG_FILE).is_file() or not path.is_file():
        raise RunDirError(f"{run_dir}: not a fedhealth run directory (no {CONFIG_FILE} and {STATE_FILE})")
    state = read_json_object(path)
    problems = [f"{key} is a {type(state[key]).__name__}, not a {kind.__name__}"
                for key, kind in (("status", str), ("last_round", int))
                if key in state and not isinstance(state[key], kind)]
    if not isinstance(state.get("server") or {}, dict) or not isinstance(state.get("resumes", []), list):
        problems.append("server or resumes has the wrong form")
    if problems:
        raise damaged(path, "; ".join(problems))
    return state


def update_state(run_dir: Path, **fields: Any) -> None:
    """Change some fields of state.json, keeping the rest (who runs it, its resumes)."""
    state = read_state(run_dir)
    state.update(fields, updated_at=_now())
    write_json(run_dir / STATE_FILE, state)


def mark_status(run_dir: Path, status: str, released: bool = False, **extra: Any) -> None:
    """Record where the run stands. `released`: this process has stopped driving the run (its federation
    is over, nothing of it still trains or writes), so `--resume` need not wait for the process to exit."""
    if released:
        server = dict(read_state(run_dir).get("server") or {})
        extra["server"] = {**server, "released_at": _now()} if server else server
    update_state(run_dir, status=status, last_round=last_completed_round(run_dir), **extra)
    if released or status == "completed":
        release_run(run_dir)


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
