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

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from opacus.accountants import RDPAccountant

from fedhealth.rundir import atomic_write_text

ACCOUNTANT = "rdp"


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


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at `delta` of a sequence of (noise multiplier, sample rate, steps), by Opacus's RDP accountant."""
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(accountant.get_epsilon(delta=delta))


class PrivacyLedger:
    def __init__(self, path: Path, hospital: str, cap: float, delta: float) -> None:
        self.path = path
        self.hospital = hospital
        self.cap = cap
        self.delta = delta
        self.entries: list[LedgerEntry] = []
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("hospital") != hospital:
                raise ValueError(f"{path}: ledger belongs to {data.get('hospital')!r}, not {hospital!r}")
            if float(data.get("delta", delta)) != delta:
                raise ValueError(f"{path}: ledger was kept at delta={data['delta']}, this study asks {delta}; "
                                 "epsilons at different deltas do not compose")
            self.entries = [LedgerEntry(**e) for e in data.get("entries", [])]

    def history(self) -> list[tuple[float, float, int]]:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries]

    @property
    def spent(self) -> float:
        return self.entries[-1].epsilon if self.entries else 0.0

    def charged_rounds(self) -> set[int]:
        return {e.round for e in self.entries}

    def charge(self, server_round: int, noise_multiplier: float, sample_rate: float, steps: int,
               max_grad_norm: float) -> LedgerEntry:
        """Charge a round before it runs; raise BudgetExceeded (charging nothing) if it would pass the cap.

        A round already charged (a retry after a crash) is not charged twice: its budget was spent.
        """
        if server_round in self.charged_rounds():
            return next(e for e in self.entries if e.round == server_round)
        projected = epsilon_of([*self.history(), (noise_multiplier, sample_rate, steps)], self.delta)
        if projected > self.cap:
            raise BudgetExceeded(
                f"hospital {self.hospital}: round {server_round} would raise epsilon from {self.spent:.3f} to "
                f"{projected:.3f} (delta={self.delta:g}), above its cap of {self.cap:g}; declining this round")
        entry = LedgerEntry(server_round, noise_multiplier, sample_rate, steps, self.delta, max_grad_norm,
                            projected, ACCOUNTANT, time.time())
        self.entries.append(entry)
        self._save()
        return entry

    def _save(self) -> None:
        data = {"hospital": self.hospital, "cap": self.cap, "delta": self.delta, "accountant": ACCOUNTANT,
                "entries": [asdict(e) for e in self.entries]}
        atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")
