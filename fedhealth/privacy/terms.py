"""A study's privacy terms, fixed at each hospital by the first private round it takes part in.

Why the hospital keeps them: `--resume` checks that a run directory's config still matches the fingerprint
it was written with, but whoever runs the coordinator can edit `config.resolved.toml` and write the new
fingerprint into `state.json`. A resumed study could then switch DP off (or lower its noise, raise its
delta) for hospitals that are already past their cap, and the coordinator's own check would agree. The
hospital trusts only itself (docs/threat-model.md): it records the terms of a private study in its ledger
folder the first time the study reaches it, and refuses a later round of that study that asks for other
terms. Only a round 1 can set terms anew (a new run of a study under the same name is a new study: its
releases are charged as new spending).

Which terms: the privacy mode and, under DP, delta, the noise (multiplier or target epsilon), the clipping
norm, the cap this hospital enforces and, in hospital-level DP, where the noise is added and for how many
contributors. A study that starts without DP fixes nothing (it has nothing to protect that a later switch
could undo), but a later round of a private study arriving without DP is refused.

The file is `<ledger dir>/<hospital>.terms` (JSON: study name -> terms, fingerprint, round), written
atomically under an exclusive lock. A file that cannot be read is a refusal, as an unreadable ledger is.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from fedhealth.durable import atomic_write_text
from fedhealth.errors import HospitalRefusedError
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
    """A later round of a study asks for privacy terms other than those fixed at its first round here."""


def terms_path(folder: Path, hospital: str) -> Path:
    return folder / f"{hospital}{TERMS_SUFFIX}"


def study_terms(cfg: StudyConfig, cap: float) -> dict[str, Any]:
    """The study's privacy terms at this hospital; `cap` is the epsilon cap it enforces (its policy wins)."""
    mode = cfg.privacy.mode
    if mode == "none":
        return {"mode": "none"}
    privacy = cfg.privacy.model_dump(mode="json")
    return {"mode": mode, "delta": cfg.privacy_delta(), **{k: privacy[k] for k in _KEYS[mode]},
            "cap": cap if math.isfinite(cap) else None}


def _describe(terms: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k} {terms.get(k)!r}" for k in keys)


def fix_or_check(folder: Path, hospital: str, cfg: StudyConfig, server_round: int, cap: float) -> None:
    """Record a private study's terms at its first round at this hospital, or raise TermsChanged when a later
    round asks for other terms. A round 1 is a study starting: its terms replace those of an earlier run
    of the same name. Raises TermsChanged too when the file cannot be read (nothing is trusted then)."""
    path = terms_path(folder, hospital)
    terms = study_terms(cfg, cap)
    if terms["mode"] == "none" and not path.exists():
        return  # nothing was fixed here, and a study without DP fixes nothing
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        studies = _read(path, hospital)
        known = studies.get(cfg.name)
        if known is not None and server_round > 1 and known.get("terms") != terms:
            fixed = known.get("terms") or {}
            changed = sorted(k for k in set(fixed) | set(terms) if fixed.get(k) != terms.get(k))
            if "mode" in changed:  # another mode: its other terms say nothing more
                changed = ["mode"]
            raise TermsChanged(
                f"hospital {hospital}: study {cfg.name!r} fixed its privacy terms at round "
                f"{known.get('round')} ({_describe(fixed, changed)}); round {server_round} asks "
                f"{_describe(terms, changed)} (config fingerprint {cfg.fingerprint()}, was "
                f"{known.get('fingerprint')}). A resumed study cannot change its privacy terms; declining")
        if terms["mode"] == "none" or (known is not None and known.get("terms") == terms):
            return
        studies[cfg.name] = {"terms": terms, "round": server_round, "fingerprint": cfg.fingerprint(),
                             "fixed_at": time.time()}
        atomic_write_text(path, json.dumps({"hospital": hospital, "studies": studies}, indent=2) + "\n")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read(path: Path, hospital: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        studies = data["studies"]
        if data.get("hospital") != hospital or not isinstance(studies, dict):
            raise ValueError("not this hospital's terms")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise TermsChanged(f"{path}: the privacy terms this hospital fixed cannot be read ({type(err).__name__}); "
                           "refusing private rounds until it is restored") from None
    return studies
