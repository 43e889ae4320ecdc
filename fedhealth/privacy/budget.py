"""A hospital's privacy budget as its data-protection officer reads it: spent and left, per study and in all.

Everything comes from the hospital's own ledger, verified first (hash chain, rounds, release keys, and
an epsilon that follows from the recorded steps): a ledger that does not verify gives no table, only the
reason. With the hospital's signed audit log (and its public key), every update the log says was sent
must be a release the ledger charged: an update that left without a charge is the worst failure there is.

Per-study epsilon composes that study's releases alone; the total composes every release of the unit
(record or hospital), which is what the cap bounds. The total is less than the sum of the studies'
epsilons (RDP composes tighter than adding epsilons).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedhealth.privacy.ledger import UNITS, LedgerUnreadable, PrivacyLedger, epsilon_of, read_ledger_file


@dataclass(frozen=True)
class StudyBudget:
    study: str  # the study's name (its config fingerprint shortened)
    unit: str
    releases: int
    rounds: tuple[int, ...]
    epsilon: float  # this study's releases composed alone


@dataclass
class Budget:
    hospital: str
    delta: float
    cap: float  # record-level cap the ledger was last charged under (or the policy's, when given)
    studies: list[StudyBudget]
    total: dict[str, float]  # unit -> epsilon over every release of that unit
    audit: str | None = None  # what the audit cross-check found (None: not asked)
    problems: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> float:
        return max(0.0, self.cap - self.total.get("record", 0.0))

    def as_dict(self) -> dict:
        return {"hospital": self.hospital, "delta": self.delta, "cap": self.cap, "remaining": self.remaining,
                "total": self.total, "studies": [s.__dict__ | {"rounds": list(s.rounds)} for s in self.studies],
                "audit": self.audit, "problems": self.problems}


def read_budget(ledger_path: Path, cap: float | None = None, audit_log: Path | None = None,
                audit_public_key: Path | None = None) -> Budget:
    """The verified budget of the hospital whose ledger is `ledger_path`. Raises LedgerError if it does not verify.

    `cap`: the hospital's cap from its policy (else the one recorded in the ledger)."""
    raw = read_ledger_file(ledger_path)  # LedgerUnreadable naming the file: special, not JSON, not an object
    hospital, delta, recorded_cap = raw.get("hospital", ""), raw.get("delta", 0.0), raw.get("cap", 0.0)
    if not isinstance(hospital, str) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                for v in (delta, recorded_cap)):
        raise LedgerUnreadable(f"{ledger_path}: privacy ledger cannot be read (its hospital is not a name, or "
                               "its delta or cap is not a number); restore it from a backup")
    delta = float(delta)
    ledger = PrivacyLedger(ledger_path, hospital, float(recorded_cap), delta)  # verifies or raises
    studies: list[StudyBudget] = []
    for unit in UNITS:
        names = list(dict.fromkeys(e.study for e in ledger.entries if e.unit == unit))
        for study in names:
            own = ledger.study_entries(study, unit)
            studies.append(StudyBudget(
                study=_short(study), unit=unit, releases=len(own), rounds=tuple(sorted({e.round for e in own})),
                epsilon=epsilon_of([(e.noise_multiplier, e.sample_rate, e.steps) for e in own], delta)))
    total = {unit: ledger.spent_in(unit) for unit in UNITS if any(e.unit == unit for e in ledger.entries)}
    budget = Budget(hospital, delta, cap if cap is not None else float(recorded_cap), studies, total)
    if audit_log is not None:
        budget.audit = _cross_check(ledger, audit_log, audit_public_key, budget.problems)
    return budget


def _short(study: str) -> str:
    name, _, fingerprint = study.partition(":")
    return f"{name} ({fingerprint[:8]})" if fingerprint else (name or "(unnamed)")


def _cross_check(ledger: PrivacyLedger, audit_log: Path, public_key: Path | None, problems: list[str]) -> str:
    """Every round the audit log says was sent must be charged in the ledger (same study name, same round)."""
    from fedhealth.privacy.audit import verify_audit_log

    report = verify_audit_log(audit_log, public_key)
    if not report.ok:
        problems.append(f"audit log {audit_log} does not verify: {report.problem}")
        return "FAILED"
    charged = {e.round for e in ledger.entries}
    uncharged = sorted(set(report.sent_rounds) - charged)
    if uncharged:
        problems.append(f"the audit log says updates of rounds {uncharged} were sent, but the ledger charged "
                        "none for them: report this to the study coordinator and stop the node")
        return "FAILED"
    signed = "signed, signature checked" if report.signatures_checked else (
        "signed (give the public key to check it)" if report.signed else "unsigned")
    return f"verified: {report.entries} entries, {signed}; every sent update is charged"
