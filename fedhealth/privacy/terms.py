"""A study's privacy terms, fixed at each hospital by the first private round it is charged for, by study NAME.

Why the hospital keeps them: `--resume` checks that a run directory's config still matches the fingerprint
it was written with, but whoever runs the coordinator can edit `config.resolved.toml` and write the new
fingerprint into `state.json`; and the round number and the study name in each instruction are the
server's word too. A resumed study could then switch DP off (or lower its noise, raise its delta, recalibrate
a target epsilon over fewer rounds) for hospitals that are already past their cap, and the coordinator's own
check would agree. The hospital trusts only itself (docs/threat-model.md): it records the terms of a private
study in its ledger folder at the first charge of the study, and refuses any later request under that name
that asks for other terms.

The rules, each against one way a server tried to reset them (tests/unit/test_privacy_terms.py):
- Terms are keyed by the study's name, not by its fingerprinted id: an edited, re-fingerprinted config is
  the same study to the hospital.
- Once a name has terms (or the ledger holds a charge of a study of that name), every request of that name
  must ask the same terms, at ANY round: a "round 1" does not start the study afresh, and a request without
  DP is refused like one with less noise. A new study needs a new name (a renamed study is a new study: its
  releases are new spending under the hospital's overall cap, and its site policy's `dp_mode` and
  `max_epsilon` are the hospital's defence there).
- A terms file that is missing, unreadable or lacks the name while the ledger holds charges of that name is
  a refusal (restore it from backup), never a silent reset; deleting both is a reset only the hospital's
  backups can detect.
- The terms' digest is recorded in every ledger charge made under them (`LedgerEntry.terms`, inside the
  ledger's hash chain): an edited terms file no longer matches the charges, and is refused.
- Checked before anything is written; written (atomically, `fedhealth.durable`) only under the ledger's lock
  once the ledger accepts the first charge (`PrivacyLedger.charge(before_write=...)`), so a round the ledger
  declines (stale, over the cap) fixes nothing.

Which terms: the privacy mode and, under DP, delta, the noise (multiplier or target epsilon), the clipping
norm, the cap this hospital enforces and, in hospital-level DP, where the noise is added and for how many
contributors. Record-level DP adds what sets the noise actually used: the batch size, the sampling rate and
the DP steps per round; a target-epsilon study (either mode) adds the rounds its calibration planned. The
noise multiplier of the first charge is stored with them and used for every later round of the study: it is
never calibrated again (a request whose calibration would differ asks other terms, and is refused; refusing
is the explainable choice, since the fixed noise over more rounds would spend past the target).

A study that starts without DP fixes nothing (it has nothing to protect that a later switch could undo).

The file is `<ledger dir>/<hospital>.terms` (JSON: study name -> terms, noise, digest, round, fingerprint).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhealth.durable import atomic_write_text, inside
from fedhealth.errors import HospitalRefusedError
from fedhealth.privacy.ledger import LedgerError, PrivacyLedger
from fedhealth.study.config import StudyConfig

TERMS_SUFFIX = ".terms"
# The study keys that are privacy terms, per mode (a key of the other mode changes nothing in this one).
_KEYS = {
    "record": ("noise_multiplier", "target_epsilon", "max_grad_norm"),
    "hospital": ("noise_multiplier", "target_epsilon", "clipping_norm", "hospital_noise", "min_contributors",
                 "colluding_hospitals"),
}
# Reason the server may see (the detail, with the terms, stays in the hospital's log and audit trail).
TERMS_REASON = "this study's privacy terms differ from those this hospital fixed at its first round of it"


class TermsChanged(HospitalRefusedError, ValueError):
    """A request of a study asks for privacy terms other than those fixed at its first charge here."""


class TermsUnusable(LedgerError):
    """The terms file cannot be trusted: unreadable, missing (or lacking the study) while the ledger holds
    charges of the study, or edited (its digest no longer matches the charges). Nothing trains until the
    hospital restores it."""


def terms_path(folder: Path, hospital: str) -> Path:
    return inside(folder, f"{hospital}{TERMS_SUFFIX}")


def study_terms(cfg: StudyConfig, cap: float, index: int) -> dict[str, Any]:
    """The study's privacy terms at hospital `index`; `cap` is the epsilon cap it enforces (its policy wins)."""
    mode = cfg.privacy.mode
    if mode == "none":
        return {"mode": "none"}
    privacy = cfg.privacy.model_dump(mode="json")
    terms: dict[str, Any] = {"mode": mode, "delta": cfg.privacy_delta(), **{k: privacy[k] for k in _KEYS[mode]},
                             "cap": cap if math.isfinite(cap) else None}
    if mode == "record":  # what, with the noise multiplier, sets what one round spends
        from fedhealth.privacy.round import schedule_for

        schedule = schedule_for(cfg, index)
        terms.update(batch_size=cfg.training.batch_size, sample_rate=schedule.sample_rate,
                     steps_per_round=cfg.training.local_epochs * schedule.steps_per_epoch)
    if cfg.privacy.target_epsilon is not None and cfg.privacy.noise_multiplier is None:
        terms["rounds_planned"] = cfg.federation.rounds  # the calibration spreads the target over them
    return terms


def noise_used(cfg: StudyConfig, index: int) -> float:
    """The noise multiplier the study's terms give at hospital `index` (calibrated for a target epsilon)."""
    if cfg.privacy.mode == "record":
        from fedhealth.privacy.round import noise_for

        return noise_for(cfg, index)
    from fedhealth.privacy.hospital_level import hospital_noise

    return hospital_noise(cfg)


def digest(terms: dict[str, Any], noise: float | None) -> str:
    """What a ledger charge records of the terms it was made under: SHA-256 of the terms and the noise."""
    return hashlib.sha256(json.dumps({"terms": terms, "noise": noise}, sort_keys=True).encode()).hexdigest()


def _describe(terms: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k} {terms.get(k)!r}" for k in keys)


@dataclass
class FixedTerms:
    """The terms a request of a study runs under at this hospital, once `check_terms` accepted them.

    `noise`: the noise multiplier to use (the fixed one; None without DP); `digest`: what each charge records;
    `pending`: the record to add to the terms file (a study's first charge here), None when already fixed.
    `bind` is what the ledger runs under its lock before writing a charge (`PrivacyLedger.charge`)."""

    path: Path
    hospital: str
    name: str
    terms: dict[str, Any]
    noise: float | None = None
    digest: str = ""
    pending: dict[str, Any] | None = field(default=None, repr=False)
    server_round: int = 0  # the request's round and config fingerprint, for the hospital's log
    fingerprint: str = ""

    def bind(self, ledger: PrivacyLedger) -> None:
        """Under the ledger's lock: the terms file and the ledger's charges of this name are read again
        (another request may have charged since `check_terms`) and must agree with these terms; then the
        terms are written, if this is their first charge. Raises TermsChanged or TermsUnusable, which aborts
        the charge."""
        charges = ledger.name_entries(self.name)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            known = _read(self.path, self.hospital).get(self.name)
            if known is not None:  # fixed already, or meanwhile by another request of the study
                _check_known(self.path, self.hospital, self.name, known, charges, self.terms,
                             self.server_round, self.fingerprint)
                return
            if charges:
                raise _missing(self.path, self.name, charges)
            if self.pending is not None:
                studies = _read(self.path, self.hospital)
                studies[self.name] = self.pending
                atomic_write_text(self.path,
                                  json.dumps({"hospital": self.hospital, "studies": studies}, indent=2) + "\n")
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _missing(path: Path, name: str, charges: list) -> TermsUnusable:
    where = "is missing" if not path.exists() else "holds no terms for it"
    return TermsUnusable(f"{path}: the terms file {where} while the ledger holds {len(charges)} charge(s) for study "
                         f"{name!r}; restore it from backup (refusing every round of the study until then)")


def _check_known(path: Path, hospital: str, name: str, known: dict[str, Any], charges: list,
                 terms: dict[str, Any], server_round: int, fingerprint: str) -> None:
    """The request's terms are the fixed ones (else TermsChanged), and those are the terms the ledger's
    charges were made under (else TermsUnusable: the file was edited)."""
    if known.get("digest") != digest(known.get("terms") or {}, known.get("noise")):
        raise TermsUnusable(f"{path}: the terms of study {name!r} do not match their digest (edited); "
                            "restore the file from backup (refusing every round of the study until then)")
    _check_charges(path, name, charges, str(known["digest"]), known.get("noise"),
                   (known.get("terms") or {}).get("mode"))
    _compare(path, hospital, name, known, terms, server_round, fingerprint)


def check_terms(folder: Path, hospital: str, cfg: StudyConfig, index: int, server_round: int,
                cap: float) -> FixedTerms:
    """The terms this request of study `cfg.name` runs under, checked against those fixed here; writes nothing.

    Raises TermsChanged (other terms than those fixed, DP off included, at any round), TermsUnusable (the
    terms file unreadable, missing or edited while the ledger holds charges of the study) or LedgerError
    (the ledger itself cannot be trusted: whether the study was private here cannot be told)."""
    path = terms_path(folder, hospital)
    terms = study_terms(cfg, cap, index)
    studies = _read(path, hospital)
    known = studies.get(cfg.name)
    ledger_path = inside(folder, f"{hospital}.json")
    charges = PrivacyLedger.reading(ledger_path, hospital).name_entries(cfg.name) if ledger_path.exists() else []
    if known is None:
        if charges:
            raise _missing(path, cfg.name, charges)
        if terms["mode"] == "none":
            return FixedTerms(path, hospital, cfg.name, terms, server_round=server_round)
        noise = noise_used(cfg, index)
        pending = {"terms": terms, "noise": noise, "digest": digest(terms, noise), "round": server_round,
                   "fingerprint": cfg.fingerprint(), "fixed_at": time.time()}
        return FixedTerms(path, hospital, cfg.name, terms, noise, pending["digest"], pending, server_round,
                          cfg.fingerprint())
    _check_known(path, hospital, cfg.name, known, charges, terms, server_round, cfg.fingerprint())
    return FixedTerms(path, hospital, cfg.name, terms, known.get("noise"), str(known["digest"]), None, server_round,
                      cfg.fingerprint())


def _compare(path: Path, hospital: str, name: str, known: dict[str, Any], terms: dict[str, Any], server_round: int,
             fingerprint: str) -> None:
    fixed = known.get("terms") or {}
    if fixed == terms:
        return
    changed = sorted(k for k in set(fixed) | set(terms) if fixed.get(k) != terms.get(k))
    if "mode" in changed:  # another mode: its other terms say nothing more
        changed = ["mode"]
    raise TermsChanged(
        f"hospital {hospital}: study {name!r} fixed its privacy terms at round {known.get('round')} "
        f"({_describe(fixed, changed)}); round {server_round} asks {_describe(terms, changed)} (config "
        f"fingerprint {fingerprint}, was {known.get('fingerprint')}). A study cannot change its privacy terms, "
        "not by a resume nor by a new round 1 under its name; declining")


def _check_charges(path: Path, name: str, charges: list, fixed_digest: str, noise: float | None,
                   mode: str | None) -> None:
    """The ledger's charges of study `name` were made under the terms fixed for it: the same digest (where
    one was recorded) and the same noise multiplier. Else the terms file was edited after them."""
    if not charges:
        return
    if mode == "none":  # terms say no DP while the ledger holds private releases of the study
        bad = charges[0]
    else:
        bad = next((e for e in charges if (e.terms and e.terms != fixed_digest)
                    or (noise is not None and e.noise_multiplier != noise)), None)
    if bad is not None:
        raise TermsUnusable(
            f"{path}: the terms of study {name!r} are not those its round-{bad.round} charge in the ledger was "
            f"made under (edited); restore the file from backup (refusing every round of the study until then)")


def _read(path: Path, hospital: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        studies = data["studies"]
        if data.get("hospital") != hospital or not isinstance(studies, dict) \
                or not all(isinstance(v, dict) for v in studies.values()):
            raise ValueError("not this hospital's terms")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise TermsUnusable(f"{path}: the privacy terms this hospital fixed cannot be read ({type(err).__name__}); "
                            "refusing private rounds until it is restored from backup") from None
    return studies

