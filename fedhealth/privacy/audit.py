"""A hospital's audit trail: one signed, hash-chained JSON line per round it takes part in.

Why: the privacy ledger (`ledger.py`) stops the hospital's own software from overspending, but a
data-protection officer or an auditor needs evidence they can check without trusting that
software: which global model came in, which update went out (or why none did), how many records
were used and what it cost in epsilon. Each entry is chained to the previous one by hash and
signed with the hospital's own audit-signing key (`audit_signing`, a P-384 EC key that `fedhealth
certs hospital-keys` makes at the hospital, separate from its SuperNode authentication key), so an
edited, removed, reordered or forged entry shows on verification. Why a key of its own: the operator
never holds it, and the credential the network sees is not the one that vouches for the evidence.

Entry fields (one JSON object per line, UTF-8)::

    seq                  0, 1, 2, ... consecutive
    time                 UTC, ISO-8601 ("2025-01-31T12:00:00.123Z")
    round, run_id, hospital
    global_model_sha256  `hash_arrays` of the global model received
    update_sha256        `hash_arrays` of the update handed to Flower (before SecAgg+ masking); null if none sent
    records_used         training records (rows) used this round
    epsilon_charged      epsilon this round added at `delta` (null without record-level DP)
    epsilon_total        the hospital's cumulative epsilon at `delta` after this round (null without DP)
    delta
    policy_checks        check name -> bool or short string (the site policy's verdicts)
    decision             "sent" or "declined: <reason>"
    prev                 the previous entry's `hash` (GENESIS for the first)
    signer               the signing key's OpenSSH fingerprint ("SHA256:..."), null when unsigned
    hash                 SHA-256 (hex) of the canonical JSON of every field above
    signature            base64 DER ECDSA-with-SHA-256 signature of the ASCII `hash`, null when unsigned
                         (the same scheme as Flower's `flwr.supercore.primitives.asymmetric.sign_message`)

Optional fields (logs written before them verify as they are), between `decision` and `prev`, in the hash::

    study                the study ("name:config fingerprint") the round belongs to
    attempt, retry_of    on a line that re-records a round of `study` already in the log (a round the server
                         sent again, e.g. after a crash and `--resume`): attempt 2, 3, ... and the `seq` of the
                         round's first entry. A retry is the same entry again, not a new one: `entries` and
                         `--expected-entries` count entries, not lines. A second line for the same study and
                         round without them fails verification.

Damage that is recovered: an incomplete last line (no newline, not JSON: a write that a crash cut short)
is not an entry; verification skips it with a warning (`AuditReport.skipped`), and the writer moves its
bytes to `<log>.torn` before appending, so the chain goes on from the last complete entry.

Never patient values: only hashes, counts and privacy figures. `append` accepts no other fields.

What verification cannot see: removing the *last* entries (truncating the tail) leaves a valid
shorter chain, and nothing in the file alone shows it. What covers it is an independent count:
the hospital's privacy ledger (`ledger.py`, its own hash chain) lists every round it charged, and
each "sent" entry here must have one there; `verify_audit_log(..., expected_entries=N)` checks a
count kept elsewhere. The ledger sits on the same disk, so someone who can rewrite both can
truncate both; the strong cover is a count or latest hash held by another party (the federation
operator's round records, or the last `hash` sent to the data-protection officer).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedhealth.errors import PrivacyRecordsError
from fedhealth.security.certs import load_node_private_key, load_node_public_key, public_key_fingerprint

GENESIS = "0" * 64  # `prev` of the first entry
CONTENT_FIELDS = ("round", "run_id", "hospital", "global_model_sha256", "update_sha256", "records_used",
                  "epsilon_charged", "epsilon_total", "delta", "policy_checks", "decision")
ENTRY_FIELDS = ("seq", "time", *CONTENT_FIELDS, "prev", "signer", "hash", "signature")
RETRY_FIELDS = ("attempt", "retry_of")
OPTIONAL_FIELDS = ("study", *RETRY_FIELDS)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_TEXT = 500  # characters in a free-text value: room for a reason, not for data


class AuditError(PrivacyRecordsError, ValueError):
    """An audit log that cannot be trusted or appended to; the message names the file and line."""


def entries_text(count: int) -> str:
    """'1 entry', '2 entries': verification messages are read by auditors, not parsed."""
    return f"{count} entr{'y' if count == 1 else 'ies'}"


@dataclass(frozen=True)
class AuditProblem:
    line: int | None  # 1-based line of the file; None when the problem is the log as a whole (its length)
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


@dataclass(frozen=True)
class AuditReport:
    """What `verify_audit_log` found. `entries` counts the entries that verified before any problem (a retry
    of an entry is that entry again: `lines` counts every verified line, `retries` the retry lines)."""

    path: Path
    entries: int
    signed: bool  # every verified entry carries a signature
    signatures_checked: bool  # ... and it was checked against a public key given by the caller
    signer: str | None  # the fingerprint the entries name (None if unsigned)
    last_hash: str  # the `hash` of the last verified entry, GENESIS for an empty log
    sent_rounds: tuple[int, ...]  # rounds whose decision is "sent": each must be charged in the privacy ledger
    problem: AuditProblem | None = None
    lines: int = 0  # verified lines (the next entry's seq)
    retries: int = 0  # lines that are retries of an earlier entry (attempt 2, 3, ...)
    skipped: tuple[AuditProblem, ...] = ()  # an incomplete last line, not an entry: recovered, with a warning
    torn_at: int | None = field(default=None, repr=False)  # byte offset where that incomplete line starts
    firsts: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.problem is None


# ---------------------------------------------------------------- hashing


def hash_arrays(arrays: Sequence[np.ndarray]) -> str:
    """SHA-256 (hex) of a list of arrays (a model's parameters): dtype, shape and bytes of each, in order.

    Deterministic across machines: every array is hashed as C-ordered little-endian bytes, and each
    part is length-prefixed, so no two different lists of arrays share an encoding."""
    digest = hashlib.sha256(b"fedhealth-arrays-v1")
    digest.update(len(arrays).to_bytes(8, "big"))
    for i, a in enumerate(arrays):
        arr = np.asarray(a)
        if arr.dtype.hasobject:
            raise TypeError(f"array {i} has dtype object; only numeric arrays (model parameters) can be hashed")
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        header = json.dumps({"dtype": arr.dtype.str, "shape": list(arr.shape)}, separators=(",", ":")).encode()
        data = np.ascontiguousarray(arr).tobytes()
        for part in (header, data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of every field but `hash` and `signature` (so `prev` and `signer` too)."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k not in ("hash", "signature")})).hexdigest()


# ---------------------------------------------------------------- field checks (no patient data gets in)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _plain(value: Any) -> Any:
    """NumPy scalars (a float32 epsilon, an int64 count) as the Python values JSON writes exactly."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _content_problem(e: Mapping[str, Any]) -> str | None:
    """What is wrong with an entry's content fields, or None."""
    if not isinstance(e.get("round"), int) or isinstance(e["round"], bool) or e["round"] < 0:
        return f"round must be a non-negative integer, got {e.get('round')!r}"
    for key in ("run_id", "hospital"):
        if not isinstance(e.get(key), str) or not e[key] or len(e[key]) > _MAX_TEXT:
            return f"{key} must be a non-empty string, got {e.get(key)!r}"
    if not isinstance(e.get("global_model_sha256"), str) or not _HEX64.match(e["global_model_sha256"]):
        return "global_model_sha256 must be 64 lower-case hex digits (use hash_arrays)"
    update = e.get("update_sha256")
    if update is not None and (not isinstance(update, str) or not _HEX64.match(update)):
        return "update_sha256 must be 64 lower-case hex digits (use hash_arrays) or null"
    records = e.get("records_used")
    if not isinstance(records, int) or isinstance(records, bool) or records < 0:
        return f"records_used must be a non-negative integer (a count of rows), got {records!r}"
    for key in ("epsilon_charged", "epsilon_total", "delta"):
        value = e.get(key)
        if value is not None and (not _is_number(value) or value < 0):
            return f"{key} must be a finite non-negative number or null, got {value!r}"
    checks = e.get("policy_checks")
    if not isinstance(checks, dict) or not all(
            isinstance(k, str) and (isinstance(v, bool) or (isinstance(v, str) and len(v) <= _MAX_TEXT))
            for k, v in checks.items()):
        return "policy_checks must map check names to true/false or a short string"
    decision = e.get("decision")
    if decision == "sent":
        if update is None:
            return "decision is 'sent' but update_sha256 is null: say which update was sent"
    elif isinstance(decision, str) and decision.startswith("declined: ") and decision[10:].strip() \
            and len(decision) <= _MAX_TEXT:
        if update is not None:
            return "decision is declined but update_sha256 is set: a declined round sends nothing"
    else:
        return f"decision must be 'sent' or 'declined: <reason>', got {decision!r}"
    return None


# ---------------------------------------------------------------- signatures


def _sign(key: ec.EllipticCurvePrivateKey, digest_hex: str) -> str:
    return base64.b64encode(key.sign(digest_hex.encode("ascii"), ec.ECDSA(hashes.SHA256()))).decode("ascii")


def _signature_valid(key: ec.EllipticCurvePublicKey, digest_hex: str, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), digest_hex.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------- verification


def _check_entry(entry: Any, expected_seq: int, prev: str, public_key: ec.EllipticCurvePublicKey | None,
                 key_fingerprint: str | None, first_signer: str | None, first_hospital: str | None) -> str | None:
    """What is wrong with one parsed line, or None. The order matters: a changed byte anywhere in an
    entry shows as a hash mismatch ("edited"); an intact entry in the wrong place as a seq/prev one."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    missing = [k for k in ENTRY_FIELDS if k not in entry]
    extra = sorted(set(entry) - set(ENTRY_FIELDS) - set(OPTIONAL_FIELDS))
    if missing or extra:
        return (f"missing fields {missing}" if missing else "") + ("; " if missing and extra else "") + \
            (f"unknown fields {extra}" if extra else "")
    try:
        recomputed = entry_hash(entry)
    except ValueError:
        return "holds a non-finite number (NaN or Infinity), which no writer of this log produces"
    except RecursionError:
        return "nested too deeply to be an entry of this log"
    if not isinstance(entry["hash"], str) or entry["hash"] != recomputed:
        return "hash does not match the entry's content: the entry was edited after it was written"
    if entry["seq"] != expected_seq:
        return (f"seq is {entry['seq']!r}, expected {expected_seq}: an entry before this line was removed, "
                "or entries were reordered")
    if entry["prev"] != prev:
        return ("prev does not match the hash of the entry before: an entry was removed, inserted or "
                "reordered here")
    if not isinstance(entry["time"], str):
        return f"time must be an ISO-8601 string, got {entry['time']!r}"
    content = _content_problem(entry)
    if content:
        return content
    if first_hospital is not None and entry["hospital"] != first_hospital:
        return f"hospital is {entry['hospital']!r}, earlier entries are {first_hospital!r}: one log per hospital"
    signer, signature = entry["signer"], entry["signature"]
    if (signer is None) != (signature is None):
        return "signer and signature must both be set or both be null"
    if public_key is not None:
        if signature is None:
            return "entry is not signed, but a public key was given: a signed log must sign every entry"
        if signer != key_fingerprint:
            return f"signed by {signer}, not by the given key {key_fingerprint}"
        if not isinstance(signature, str) or not _signature_valid(public_key, entry["hash"], signature):
            return "bad signature: it was not made by the given key over this entry's hash"
    elif expected_seq > 0 and signer != first_signer:
        return f"signer changes from {first_signer} to {signer}: a log has one signer (or none)"
    return None


def _read_lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AuditError(f"{path}: audit log not found") from None
    except OSError as err:
        raise AuditError(f"{path}: audit log cannot be read ({err.strerror})") from None
    return data.splitlines(keepends=True)


def _retry_problem(entry: dict[str, Any], firsts: dict[tuple[str, int], tuple[int, int]]) -> str | None:
    """What is wrong with an entry's study / attempt / retry_of, or None (see the module docstring)."""
    study = entry.get("study")
    if study is not None and (not isinstance(study, str) or not study or len(study) > _MAX_TEXT):
        return "study must be a non-empty string"
    present = [k for k in RETRY_FIELDS if k in entry]
    if present and (len(present) < len(RETRY_FIELDS) or study is None):
        return "attempt and retry_of must both be set, with the study, or both be absent"
    key = (study, entry["round"]) if study is not None else None
    if not present:
        if key is not None and key in firsts:
            return (f"a second entry for round {entry['round']} of study {study!r} (the first is seq "
                    f"{firsts[key][0]}): a re-sent round must be recorded as a retry of that entry")
        return None
    attempt, retry_of = entry["attempt"], entry["retry_of"]
    if key not in firsts or firsts[key][0] != retry_of:
        return f"retry_of is {retry_of!r}, but round {entry['round']} of this study has no entry with that seq"
    expected = firsts[key][1] + 1
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt != expected:
        return f"attempt is {attempt!r}, expected {expected}: an attempt of this entry was removed or reordered"
    return None


def _verify_lines(path: Path, lines: Sequence[bytes], public_key: ec.EllipticCurvePublicKey | None,
                  expected_entries: int | None = None) -> AuditReport:
    fingerprint = public_key_fingerprint(public_key) if public_key is not None else None
    prev, signer, hospital, sent = GENESIS, None, None, []
    count = retries = 0
    firsts: dict[tuple[str, int], tuple[int, int]] = {}  # (study, round) -> (first seq, attempts so far)
    problem: AuditProblem | None = None
    skipped: list[AuditProblem] = []
    torn_at: int | None = None
    for number, raw in enumerate(lines, start=1):
        incomplete = not raw.endswith(b"\n")
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            if incomplete:  # the last line, cut short by a crash mid-write: not an entry, nothing of the chain
                skipped.append(AuditProblem(number, "skipped: an incomplete last line (a write the writer did not "
                                                    "finish); the entries before it are the log"))
                torn_at = sum(len(line) for line in lines[:number - 1])
                break
            why = ("nested too deeply to be an entry" if isinstance(err, RecursionError) else
                   f"not valid JSON ({err})" if isinstance(err, json.JSONDecodeError) else "not UTF-8 text")
            problem = AuditProblem(number, f"malformed: {why}")
            break
        what = _check_entry(entry, count, prev, public_key, fingerprint, signer, hospital)
        if what is None:
            what = _retry_problem(entry, firsts)
        if what is None and incomplete:
            what = "the last line has no newline: it may be incomplete"
        if what is not None:
            problem = AuditProblem(number, what)
            break
        if count == 0:
            signer, hospital = entry["signer"], entry["hospital"]
        prev, count = entry["hash"], count + 1
        if "study" in entry:
            key = (entry["study"], entry["round"])
            first, attempts = firsts.get(key, (entry["seq"], 0))
            firsts[key] = (first, attempts + 1)
        if "retry_of" in entry:
            retries += 1
        if entry["decision"] == "sent" and entry["round"] not in sent:
            sent.append(entry["round"])
    entries = count - retries
    if problem is None and public_key is not None and entries == 0:
        problem = AuditProblem(None, "holds no entries: a log checked against a public key must hold at least one "
                                     "signed entry (an emptied or truncated log cannot vouch for anything)")
    if problem is None and expected_entries is not None and entries != expected_entries:
        missing = expected_entries - entries
        problem = AuditProblem(None, f"holds {entries_text(entries)}, expected {expected_entries}" + (
            f": the last {missing} entr{'y was' if missing == 1 else 'ies were'} removed (truncated), or never "
            "written" if missing > 0 else ": more entries than the independent count"))
    return AuditReport(path, entries, signed=count > 0 and signer is not None,
                       signatures_checked=public_key is not None and count > 0, signer=signer, last_hash=prev,
                       sent_rounds=tuple(sent), problem=problem, lines=count, retries=retries,
                       skipped=tuple(skipped), torn_at=torn_at, firsts=firsts)


def verify_audit_log(path: str | Path, public_key: str | Path | ec.EllipticCurvePublicKey | None = None,
                     expected_entries: int | None = None) -> AuditReport:
    """Verify a hospital's audit log; the report names the first bad line and what is wrong with it.

    Detects an edited entry (hash mismatch), a removed, inserted or reordered entry (seq/prev
    mismatch), a malformed line, and, when `public_key` (the hospital's `audit_signing.pub` file or key)
    is given, a missing or bad signature and a signer other than that key. Without a key only the
    chain is checked: anyone can rebuild a valid unsigned chain, so a signed log proves more.

    Cannot detect from the file alone: removal of the last entries (a shorter chain is still a valid
    chain). Pass `expected_entries` from an independent count, and check `sent_rounds` against the
    rounds charged in the hospital's privacy ledger (see the module docstring).
    Raises `AuditError` only when the log cannot be read at all; a bad log gives a report with a problem.
    """
    log_path = Path(path)
    key = load_node_public_key(public_key, "audit public key") if isinstance(public_key, str | Path) else public_key
    return _verify_lines(log_path, _read_lines(log_path), key, expected_entries)


# ---------------------------------------------------------------- writing


class AuditLog:
    """The hospital's append-only audit log. Opening verifies the whole existing file and resumes its chain.

    `private_key`: the hospital's audit-signing key (OpenSSH file path, or a loaded EC key)
    to sign each entry; None (simulation) writes a chained but unsigned log. Refuses (AuditError) to
    append to a log that fails verification, that was signed by another key, or whose signing mode
    differs, because appending would bury the evidence of what went wrong under fresh valid entries.
    """

    def __init__(self, path: str | Path, private_key: str | Path | ec.EllipticCurvePrivateKey | None = None) -> None:
        self.path = Path(path)
        key = (load_node_private_key(private_key, "audit signing key") if isinstance(private_key, str | Path)
               else private_key)
        self._key = key
        self._public = key.public_key() if key is not None else None
        self.signer = public_key_fingerprint(key) if key is not None else None
        self._seq, self._prev = 0, GENESIS
        self._firsts: dict[tuple[str, int], tuple[int, int]] = {}  # (study, round) -> (first seq, attempts)
        self._locked = False  # whether `append` holds the file's lock
        self._size, self._mtime_ns = 0, 0  # the file as this writer last saw it: a change means re-verify
        if self.path.exists():
            self._resume()

    def _resume(self) -> None:
        lines = _read_lines(self.path)
        report = _verify_lines(self.path, lines, None)
        if report.problem is None and report.torn_at is not None:
            lines = self._set_aside_torn_tail(lines, report.torn_at)
        if report.problem is not None:
            raise AuditError(f"{self.path}: audit log fails verification at {report.problem}; refusing to append. "
                             "Keep the file as evidence, find out what changed it, and start a new log")
        if report.entries and report.signer != self.signer:
            theirs = report.signer or "nobody (unsigned)"
            ours = self.signer or "no key (unsigned)"
            raise AuditError(f"{self.path}: existing entries are signed by {theirs}, this writer signs with {ours}; "
                             "refusing to mix signers in one log. Use the hospital's own key, or a new log")
        if self._public is not None and report.entries:
            signed = _verify_lines(self.path, lines, self._public)
            if signed.problem is not None:
                raise AuditError(f"{self.path}: audit log fails signature verification at {signed.problem}; "
                                 "refusing to append. Keep the file as evidence and start a new log")
        self._seq, self._prev = report.lines, report.last_hash
        self._firsts = dict(report.firsts)
        self._size = sum(len(line) for line in lines)
        self._mtime_ns = self.path.stat().st_mtime_ns

    def _set_aside_torn_tail(self, lines: list[bytes], offset: int) -> list[bytes]:
        """Move an incomplete last line (a write a crash cut short) to `<log>.torn` and cut it from the log,
        so the next entry starts on a line of its own. Its bytes are kept, never an entry's."""
        import logging

        torn = self.path.with_name(self.path.name + ".torn")
        with self.path.open("r+b") as f:
            if not self._locked:  # inside `append` the lock is held already, on another descriptor
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            f.seek(offset)
            tail = f.read()
            if tail and not tail.endswith(b"\n"):
                with torn.open("ab") as out:
                    out.write(tail + b"\n")
                    out.flush()
                    os.fsync(out.fileno())
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
        logging.getLogger(__name__).warning(
            "%s: line %d was incomplete (a write cut short by a crash): its bytes moved to %s, the log continues "
            "from the entry before it", self.path, len(lines), torn)
        return lines[:-1]

    @property
    def entries(self) -> int:
        """How many lines the log holds (the next entry's `seq`); a retry line counts here."""
        return self._seq

    def append(self, **fields: Any) -> dict[str, Any]:
        """Append one entry (the `CONTENT_FIELDS`, all required, and optionally `study`) and return it as written.

        With `study`, a round of that study the log already holds is written as a retry of its first entry
        (`attempt`, `retry_of`), not as a second entry. The line is written with one `write` on an O_APPEND
        descriptor, then fsync'ed, under an exclusive lock; if the file changed since this object last saw
        it, it is verified again first.
        """
        study = fields.pop("study", None)
        if study is not None and (not isinstance(study, str) or not study or len(study) > _MAX_TEXT):
            raise AuditError(f"{self.path}: audit entry: study must be a non-empty string")
        unknown = sorted(set(fields) - set(CONTENT_FIELDS))
        missing = [k for k in CONTENT_FIELDS if k not in fields]
        if unknown or missing:
            raise AuditError(f"{self.path}: audit entry " + (f"has unknown fields {unknown} (the log holds only "
                             "hashes, counts and privacy figures, never patient values)" if unknown else "")
                             + ("; " if unknown and missing else "") + (f"lacks fields {missing}" if missing else ""))
        fields = {k: _plain(v) for k, v in fields.items()}
        problem = _content_problem(fields)
        if problem:
            raise AuditError(f"{self.path}: audit entry for round {fields.get('round')!r}: {problem}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._locked = True
            stat = os.fstat(fd)
            size = stat.st_size
            if size < self._size:
                raise AuditError(f"{self.path}: audit log shrank from {self._size} to {size} bytes since this "
                                 "writer last appended: entries were removed. Refusing to append; keep the file "
                                 "as evidence")
            if (size, stat.st_mtime_ns) != (self._size, self._mtime_ns) and size > 0:
                # another writer or an edit since this writer looked: trust nothing unverified
                self._resume()
            entry: dict[str, Any] = {"seq": self._seq,
                                     "time": datetime.now(UTC).isoformat(timespec="milliseconds")
                                     .replace("+00:00", "Z"),
                                     **{k: fields[k] for k in CONTENT_FIELDS}}
            key = (study, fields["round"])
            if study is not None:
                entry["study"] = study
                if key in self._firsts:  # the round again: a retry of its first entry, not a second entry
                    first, attempts = self._firsts[key]
                    entry.update(attempt=attempts + 1, retry_of=first)
            entry.update(prev=self._prev, signer=self.signer)
            entry["hash"] = entry_hash(entry)
            entry["signature"] = _sign(self._key, entry["hash"]) if self._key is not None else None
            line = (json.dumps(entry, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode()
            if os.write(fd, line) != len(line):
                raise AuditError(f"{self.path}: short write while appending entry {entry['seq']} (disk full?); "
                                 "the last line is incomplete and the log must be inspected")
            os.fsync(fd)
            stat = os.fstat(fd)
            self._size, self._mtime_ns = stat.st_size, stat.st_mtime_ns
        finally:
            self._locked = False
            os.close(fd)  # closing releases the lock
        if created:  # the new directory entry must survive a crash too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._seq, self._prev = self._seq + 1, entry["hash"]
        if study is not None:
            first, attempts = self._firsts.get(key, (entry["seq"], 0))
            self._firsts[key] = (first, attempts + 1)
        return entry
