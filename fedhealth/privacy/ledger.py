"""A hospital's privacy ledger: the accountant's whole history, on disk, charged before any update leaves.

Why a file and not the accountant object: the common Flower + Opacus recipe builds a new
PrivacyEngine every round, so its epsilon covers one round and silently resets. Here the
accountant is rebuilt from the ledger for every question, so epsilon composes over all rounds the
hospital ever trained in for this study, across rounds, process restarts and `--resume`.

Each entry records everything needed to recompute epsilon independently (e.g. with Google's
dp-accounting): noise multiplier, sample rate, steps, delta, clipping norm, the accountant, and
the cumulative epsilon after this charge.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fedhealth.rundir import atomic_write_text

ACCOUNTANT = "rdp"


class LedgerError(ValueError):
    """A ledger that cannot be trusted (unreadable, edited, reordered): nothing trains on that hospital."""


class BudgetExceeded(RuntimeError):
    """The next round would take a hospital past its epsilon cap; the hospital declines it."""


@dataclass(frozen=True)
class LedgerEntry:
    round: int
    noise_multiplier: float
    sample_rate: float  # Poisson sampling probability of each record per step
    steps: int  # DP-SGD steps charged this round
    delta: float
    max_grad_norm: float  # per-sample clipping norm (L2)
    epsilon: float  # cumulative epsilon at `delta` after this entry
    accountant: str = ACCOUNTANT
    charged_at: float = 0.0  # unix time
    chain: str = ""  # SHA-256 over the previous entry's chain and this entry: edits and removals show
    study: str = ""  # which study charged it ("name:config fingerprint"); a hospital's ledger outlives studies


def _chain(previous: str, entry: LedgerEntry) -> str:
    # `study` joined the entry later: left out of the hash when empty, so older ledgers still verify.
    body = {k: v for k, v in asdict(entry).items() if k != "chain" and not (k == "study" and not v)}
    return hashlib.sha256((previous + json.dumps(body, sort_keys=True)).encode()).hexdigest()


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at `delta` of a sequence of (noise multiplier, sample rate, steps), by Opacus's RDP accountant."""
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
    from opacus.accountants import RDPAccountant  # here, not at import: every ClientApp process imports this module

    accountant = RDPAccountant()
    accountant.history = merged
    return float(accountant.get_epsilon(delta=delta))


class PrivacyLedger:
    def __init__(self, path: Path, hospital: str, cap: float, delta: float) -> None:
        self.path = path
        self.hospital = hospital
        self.cap = cap
        self.delta = delta
        self.entries: list[LedgerEntry] = []
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.entries = [LedgerEntry(**e) for e in data.get("entries", [])]
            except (OSError, ValueError, TypeError, AttributeError) as err:
                raise LedgerError(f"{path}: privacy ledger of hospital {hospital!r} cannot be read ({err}); "
                                  "refusing to train until it is restored") from None
            if data.get("hospital") != hospital:
                raise ValueError(f"{path}: ledger belongs to {data.get('hospital')!r}, not {hospital!r}")
            if float(data.get("delta", delta)) != delta:
                raise ValueError(f"{path}: ledger was kept at delta={data['delta']}, this study asks {delta}; "
                                 "epsilons at different deltas do not compose")
            self._verify()

    def _verify(self) -> None:
        """Detect edited, removed or reordered entries (hash chain, increasing rounds) and an epsilon
        that does not follow from the recorded steps. A keyless chain stops accidents and casual edits;
        the signed audit trail is what proves it to a third party."""
        previous, last_round = "", {}
        for entry in self.entries:
            if entry.round <= last_round.get(entry.study, 0) or entry.chain != _chain(previous, entry):
                raise LedgerError(f"{self.path}: privacy ledger of hospital {self.hospital!r} was altered at "
                                  f"round {entry.round}; refusing to train until it is restored")
            previous, last_round[entry.study] = entry.chain, entry.round
        if self.entries:
            recomputed = epsilon_of(self.history(), self.delta)
            if not math.isclose(recomputed, self.entries[-1].epsilon, rel_tol=1e-9, abs_tol=1e-12):
                raise LedgerError(f"{self.path}: hospital {self.hospital!r}: recorded epsilon "
                                  f"{self.entries[-1].epsilon} does not follow from its steps ({recomputed})")

    def history(self) -> list[tuple[float, float, int]]:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries]

    @property
    def spent(self) -> float:
        return self.entries[-1].epsilon if self.entries else 0.0

    def charged_rounds(self, study: str = "") -> set[int]:
        return {e.round for e in self.entries if e.study == study}

    def study_entries(self, study: str) -> list[LedgerEntry]:
        return [e for e in self.entries if e.study == study]

    def charge(self, server_round: int, noise_multiplier: float, sample_rate: float, steps: int,
               max_grad_norm: float, study: str = "") -> LedgerEntry:
        """Charge a round before it runs; raise BudgetExceeded (charging nothing) if it would pass the cap.

        A round of the same study already charged (a retry after a crash, the same seeded computation)
        is not charged twice: its budget was spent. Round 1 of another study is new spending: epsilon
        composes over every entry of every study, so the cap covers all the hospital ever released.
        """
        if server_round in self.charged_rounds(study):
            return next(e for e in self.entries if e.round == server_round and e.study == study)
        projected = epsilon_of([*self.history(), (noise_multiplier, sample_rate, steps)], self.delta)
        if projected > self.cap:
            raise BudgetExceeded(
                f"hospital {self.hospital}: round {server_round} would raise epsilon from {self.spent:.3f} to "
                f"{projected:.3f} (delta={self.delta:g}), above its cap of {self.cap:g}; declining this round")
        entry = LedgerEntry(server_round, noise_multiplier, sample_rate, steps, self.delta, max_grad_norm,
                            projected, ACCOUNTANT, time.time(), study=study)
        entry = replace(entry, chain=_chain(self.entries[-1].chain if self.entries else "", entry))
        self.entries.append(entry)
        self._save()
        return entry

    def _save(self) -> None:
        data = {"hospital": self.hospital, "cap": self.cap, "delta": self.delta, "accountant": ACCOUNTANT,
                "entries": [asdict(e) for e in self.entries]}
        atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")
