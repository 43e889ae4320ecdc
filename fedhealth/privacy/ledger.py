"""A hospital's privacy ledger: every release it ever made, on disk, charged before the release leaves.

Why a file and not the accountant object: the common Flower + Opacus recipe builds a new PrivacyEngine
every round, so its epsilon covers one round and silently resets. Here the accountant is rebuilt from the
ledger for every question, so epsilon composes over every release the hospital ever made, across rounds,
studies, process restarts and `--resume`.

What a charge is: one *release*, keyed by (study, round, hash of the global model received, training
settings) — see `fedhealth.privacy.release`. The same key again is a retry of that release (the hospital
re-sends the stored, byte-identical update) and costs nothing; any other key is new spending, charged
before it leaves and refused at the cap. A server that re-sends round r with other weights therefore pays
for every release it gets.

Durable and exclusive: every charge holds an exclusive lock on `<ledger>.lock` (flock), re-reads the
ledger under it, and writes with fsync and an atomic rename, so two processes charging one hospital at
once (two studies, or a study and its retry) can never pass its cap together, and a crash or power loss
after a charge cannot lose it. `PrivacyLedger.locked` keeps the lock from the charge until the release is
stored, so no other process can slip a charge in between.

Each entry records everything needed to recompute epsilon independently (e.g. with Google's
dp-accounting): noise multiplier, sample rate, steps, delta, clipping norm, the accountant, and the
cumulative epsilon after this charge, and the digest of the study's privacy terms it was charged under
(`fedhealth.privacy.terms`: so an edited terms file no longer matches). Entries of the two privacy units
compose separately: `unit = "record"` (DP-SGD: neighbouring datasets differ in one patient record of this hospital) and
`unit = "hospital"` (hospital-level DP: they differ in this hospital's whole contribution).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fedhealth.durable import atomic_write_text, regular_file_problem
from fedhealth.errors import HospitalRefusedError, PrivacyBudgetError, PrivacyRecordsError

ACCOUNTANT = "rdp"
UNITS = ("record", "hospital")
# Ledgers whose epsilon this process already recomputed (or wrote), by (path, last chain hash): the chain
# check runs on every read, the RDP recomputation (the costly part) once per ledger state and process.
_verified: set[tuple[str, str]] = set()


class LedgerError(PrivacyRecordsError, ValueError):
    """A ledger that cannot be trusted (unreadable, edited, reordered): nothing trains on that hospital."""


class LedgerUnreadable(LedgerError):
    """A ledger file that cannot be read or parsed at all (truncated, not JSON, not a ledger's form)."""


class BudgetExceeded(PrivacyBudgetError, RuntimeError):
    """The next release would take a hospital past its epsilon cap; the hospital declines it."""


class StaleRound(HospitalRefusedError, ValueError):
    """A request for a round older than one this study already charged: refused, the ledger unchanged."""


@dataclass(frozen=True)
class LedgerEntry:
    round: int
    noise_multiplier: float
    sample_rate: float  # Poisson sampling probability of each record per step (1.0: no sampling)
    steps: int  # DP steps charged by this release
    delta: float
    max_grad_norm: float  # L2 clipping norm: per sample (record unit) or per update (hospital unit)
    epsilon: float  # cumulative epsilon of this entry's unit at `delta` after this entry
    accountant: str = ACCOUNTANT
    charged_at: float = 0.0  # unix time
    chain: str = ""  # SHA-256 over the previous entry's chain and this entry: edits and removals show
    study: str = ""  # which study charged it ("name:config fingerprint"); a hospital's ledger outlives studies
    release: str = ""  # the release key (see fedhealth.privacy.release); a retry with the same key is free
    unit: str = "record"  # "record" (DP-SGD) or "hospital" (hospital-level DP)
    # SHA-256 of the privacy terms the study fixed at this hospital (fedhealth.privacy.terms): binds the terms
    # file to this chained record, so an edited terms file no longer matches the charges made under it
    terms: str = ""


def _chain(previous: str, entry: LedgerEntry) -> str:
    # Fields that joined the entry later are left out of the hash at their old default, so older ledgers verify.
    defaults = {"study": "", "release": "", "unit": "record", "terms": ""}
    body = {k: v for k, v in asdict(entry).items() if k != "chain" and not (k in defaults and v == defaults[k])}
    return hashlib.sha256((previous + json.dumps(body, sort_keys=True)).encode()).hexdigest()


def study_name(study: str) -> str:
    """The name part of a ledger entry's study ("name:config fingerprint"): the key a study's privacy terms
    are fixed under, whatever its fingerprint (names never hold a ':')."""
    return study.rsplit(":", 1)[0] if ":" in study else study


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at `delta` of a sequence of (noise multiplier, sample rate, steps), by Opacus's RDP accountant
    (`fedhealth.privacy.rdp.epsilon`: the same number, each (sigma, q)'s one-step RDP computed once)."""
    if not history:
        return 0.0
    # RDP is additive in steps, so runs of equal (sigma, q) merge into one entry: the same epsilon,
    # computed once instead of once per round (the ledger grows by an entry every round).
    merged: list[tuple[float, float, int]] = []
    for s, q, n in history:
        if merged and merged[-1][:2] == (float(s), float(q)):
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + int(n))
        else:
            merged.append((float(s), float(q), int(n)))
    from fedhealth.privacy.rdp import epsilon

    return epsilon(merged, delta)


def _unreadable(path: Path, hospital: str | None, why: str) -> LedgerUnreadable:
    whose = f" of hospital {hospital!r}" if hospital is not None else ""
    return LedgerUnreadable(f"{path}: privacy ledger{whose} cannot be read ({why}); "
                            + ("refusing to train until it is restored" if hospital is not None
                               else "restore it from a backup"))


def read_ledger_file(path: Path, hospital: str | None = None) -> dict[str, Any]:
    """The ledger file's JSON object, or LedgerUnreadable naming the file and why (a FIFO or a device, never
    opened; not UTF-8; not JSON; nested too deeply; not an object). The one reader of a ledger file, for
    the hospital before a charge and for `fedhealth budget` alike; `hospital` names whose ledger it is in
    the message when known."""
    problem = regular_file_problem(path)
    if problem:
        raise _unreadable(path, hospital, problem.removeprefix("is "))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise _unreadable(path, hospital, f"not UTF-8 text at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise _unreadable(path, hospital, f"not valid JSON at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise _unreadable(path, hospital, "JSON nested too deeply to be a ledger") from None
    except OSError as err:
        raise _unreadable(path, hospital, err.strerror or type(err).__name__) from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string"}.get(type(data), f"a {type(data).__name__}")
        raise _unreadable(path, hospital, f"it holds {kind}, not a ledger's JSON object")
    return data


class PrivacyLedger:
    """One hospital's ledger file. `cap`: its record-level epsilon cap; `hospital_cap`: its hospital-level one.

    Reading needs no lock; every charge takes it (see the module docstring). Use `PrivacyLedger.locked`
    to hold the lock from a charge until its release is stored."""

    def __init__(self, path: Path, hospital: str, cap: float, delta: float,
                 hospital_cap: float = math.inf, *, load: bool = True) -> None:
        self.path = path
        self.hospital = hospital
        self.cap = cap
        self.hospital_cap = hospital_cap
        self.delta = delta
        self.entries: list[LedgerEntry] = []
        self.recorded_cap: float | None = None  # the cap the file says it was last charged under
        self._lock_fd: int | None = None
        if load:
            self._load()

    # ---- reading and verifying ----
    def _load(self) -> None:
        self.entries = []
        if not self.path.exists():
            return
        data = read_ledger_file(self.path, self.hospital)
        try:
            self.entries = [LedgerEntry(**e) for e in data.get("entries", [])]
        except (ValueError, TypeError, AttributeError) as err:
            raise _unreadable(self.path, self.hospital, f"an entry of the wrong form ({type(err).__name__})") from None
        cap = data.get("cap")
        self.recorded_cap = float(cap) if isinstance(cap, int | float) and not isinstance(cap, bool) else None
        if data.get("hospital") != self.hospital:
            raise LedgerError(f"{self.path}: ledger belongs to {data.get('hospital')!r}, not {self.hospital!r}")
        if float(data.get("delta", self.delta)) != self.delta:
            raise LedgerError(f"{self.path}: ledger was kept at delta={data['delta']}, this study asks {self.delta}; "
                             "epsilons at different deltas do not compose")
        self._verify()

    def _verify(self) -> None:
        """Detect edited, removed or reordered entries (hash chain, rounds that never go back within a study,
        release keys used once) and an epsilon that does not follow from the recorded steps. A keyless chain
        stops accidents and casual edits; the signed audit trail is what proves it to a third party."""
        previous, last_round, keys = "", {}, set()
        for entry in self.entries:
            track = (entry.study, entry.unit)
            if (entry.unit not in UNITS or entry.round < last_round.get(track, 0)
                    or (entry.release and entry.release in keys) or entry.chain != _chain(previous, entry)):
                raise LedgerError(f"{self.path}: privacy ledger of hospital {self.hospital!r} was altered at "
                                  f"round {entry.round}; refusing to train until it is restored")
            previous, last_round[track] = entry.chain, entry.round
            keys.add(entry.release)
        if self.entries and (str(self.path), self.entries[-1].chain) in _verified:
            return
        for unit in UNITS:
            own = [e for e in self.entries if e.unit == unit]
            if own:
                recomputed = epsilon_of(self.history(unit), self.delta)
                if not math.isclose(recomputed, own[-1].epsilon, rel_tol=1e-9, abs_tol=1e-12):
                    raise LedgerError(f"{self.path}: hospital {self.hospital!r}: recorded epsilon "
                                      f"{own[-1].epsilon} does not follow from its steps ({recomputed})")
        if self.entries:
            _verified.add((str(self.path), self.entries[-1].chain))

    def history(self, unit: str = "record") -> list[tuple[float, float, int]]:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries if e.unit == unit]

    def spent_in(self, unit: str) -> float:
        own = [e for e in self.entries if e.unit == unit]
        return own[-1].epsilon if own else 0.0

    @classmethod
    def reading(cls, path: Path, hospital: str) -> PrivacyLedger:
        """The ledger at `path`, verified, at the delta it was kept at: to read what it holds whatever delta a
        request asks (the terms check compares delta itself). Raises LedgerError as loading does."""
        delta = 0.0
        if path.exists():
            try:
                recorded = json.loads(path.read_text(encoding="utf-8"))["delta"]
                if isinstance(recorded, bool) or not isinstance(recorded, int | float):
                    raise TypeError(type(recorded).__name__)
                delta = float(recorded)
            except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
                raise LedgerUnreadable(f"{path}: privacy ledger of hospital {hospital!r} cannot be read "
                                       f"({type(err).__name__}); refusing to train until it is restored") from None
        return cls(path, hospital, math.inf, delta)

    def name_entries(self, name: str) -> list[LedgerEntry]:
        """Every entry (both units) of the studies named `name`, whatever their config fingerprint."""
        return [e for e in self.entries if study_name(e.study) == name]

    @property
    def spent(self) -> float:
        """Record-level epsilon spent over every study (the figure the hospital's cap bounds)."""
        return self.spent_in("record")

    def charged_rounds(self, study: str = "", unit: str = "record") -> set[int]:
        return {e.round for e in self.entries if e.study == study and e.unit == unit}

    def study_entries(self, study: str, unit: str = "record") -> list[LedgerEntry]:
        return [e for e in self.entries if e.study == study and e.unit == unit]

    def release_entry(self, release: str) -> LedgerEntry | None:
        return next((e for e in self.entries if release and e.release == release), None)

    # ---- the lock ----
    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        if self._lock_fd is not None:  # already held by `locked()`
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            self._load()  # another process may have charged since we read it
            yield
        finally:
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @classmethod
    @contextmanager
    def locked(cls, path: Path, hospital: str, cap: float, delta: float,
               hospital_cap: float = math.inf) -> Iterator[PrivacyLedger]:
        """The ledger with its lock held for the whole block (charge, train, store the release)."""
        ledger = cls(path, hospital, cap, delta, hospital_cap, load=False)  # read under the lock only
        with ledger._exclusive():
            yield ledger

    # ---- charging ----
    def charge(self, server_round: int, noise_multiplier: float, sample_rate: float, steps: int,
               max_grad_norm: float, study: str = "", release: str = "", unit: str = "record", terms: str = "",
               before_write: Callable[[PrivacyLedger], None] | None = None) -> LedgerEntry:
        """Charge one release before it leaves; raise BudgetExceeded (charging nothing) if it would pass the cap.

        `release` (its key) already charged: a retry of the same release, returned without a new charge — the
        caller must re-send the stored update, never a new one. Any other release is new spending, also within
        a round already charged: a server re-sending round r with other weights pays for each. A round older
        than the last this study charged raises StaleRound (that request only; nothing is written).

        `terms`: the digest of the privacy terms it is charged under (recorded in the entry). `before_write`
        runs under the lock once the charge is accepted (not stale, within the cap) and before it is written:
        what it raises aborts the charge, so the study's terms are fixed only by a round the ledger accepts.
        """
        if unit not in UNITS:
            raise ValueError(f"privacy unit must be one of {UNITS}, got {unit!r}")
        with self._exclusive():
            earlier = self.release_entry(release)
            if earlier is not None:
                return earlier
            charged = self.charged_rounds(study, unit)
            if charged and server_round < max(charged):
                raise StaleRound(f"hospital {self.hospital}: round {server_round} is older than round "
                                 f"{max(charged)}, which this study already charged; declining this request")
            cap = self.cap if unit == "record" else self.hospital_cap
            before = self.spent_in(unit)
            projected = epsilon_of([*self.history(unit), (noise_multiplier, sample_rate, steps)], self.delta)
            if projected > cap:
                raise BudgetExceeded(
                    f"hospital {self.hospital}: round {server_round} would raise its {unit}-level epsilon from "
                    f"{before:.3f} to {projected:.3f} (delta={self.delta:g}), above its cap of {cap:g}; "
                    "declining this round")
            if before_write is not None:
                before_write(self)
            entry = LedgerEntry(server_round, noise_multiplier, sample_rate, steps, self.delta, max_grad_norm,
                                projected, ACCOUNTANT, time.time(), study=study, release=release, unit=unit,
                                terms=terms)
            entry = replace(entry, chain=_chain(self.entries[-1].chain if self.entries else "", entry))
            self.entries.append(entry)
            self._save()
            _verified.add((str(self.path), entry.chain))  # its epsilon was computed just now
            return entry

    def _save(self) -> None:
        data = {"hospital": self.hospital, "cap": self.cap, "delta": self.delta, "accountant": ACCOUNTANT,
                "entries": [asdict(e) for e in self.entries]}
        atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class LedgerStanding:
    """What a hospital accepts of its own ledger, for a summary or report to show and nothing more.

    `status`: "accepted" (it verifies: `epsilon` is what the hospital spent), "refused" (the hospital's own
    check fails: edited, reordered, another hospital's, another delta; `epsilon` is None, never the
    file's figure), "unreadable" (truncated or not a ledger at all) or "absent" (no release was charged)."""

    status: str
    epsilon: float | None
    cap: float | None
    rounds: tuple[int, ...]
    problem: str | None = None


def ledger_standing(path: Path, hospital: str, delta: float, unit: str = "record") -> LedgerStanding:
    """The hospital's verdict on its ledger `path` (the very check it runs before every charge)."""
    if not path.exists():
        return LedgerStanding("absent", 0.0, None, ())
    try:
        ledger = PrivacyLedger(path, hospital, math.inf, delta)
    except LedgerUnreadable as err:
        return LedgerStanding("unreadable", None, None, (), str(err))
    except LedgerError as err:
        return LedgerStanding("refused", None, None, (), str(err))
    own = [e for e in ledger.entries if e.unit == unit]
    return LedgerStanding("accepted", ledger.spent_in(unit), ledger.recorded_cap, tuple(e.round for e in own))
