"""The hospital's signed, hash-chained audit log: what verification catches, and what it cannot."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedhealth.cli import app
from fedhealth.privacy.audit import (
    GENESIS,
    AuditError,
    AuditLog,
    entry_hash,
    hash_arrays,
    verify_audit_log,
)
from fedhealth.security.certs import NodeKeyFiles, init_hospital_keys, load_node_private_key

HOSPITAL = "north"


@dataclass
class AuditKeys:
    hospitals: dict[str, NodeKeyFiles]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> AuditKeys:
    """Each hospital's audit-signing key pair, as `fedhealth certs hospital-keys` makes it at the hospital."""
    root = tmp_path_factory.mktemp("keys")
    made = {h: init_hospital_keys(root / h, h) for h in (HOSPITAL, "south")}
    return AuditKeys({h: NodeKeyFiles(k.audit_private_key, k.audit_public_key, k.audit_fingerprint)
                      for h, k in made.items()})


@pytest.fixture
def key(pki: AuditKeys) -> Path:
    return pki.hospitals[HOSPITAL].private_key


@pytest.fixture
def pub(pki: AuditKeys) -> Path:
    return pki.hospitals[HOSPITAL].public_key


def _round(r: int, sent: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(r)
    model = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    update = [w + 0.01 for w in model]
    return {"round": r, "run_id": "run-1", "hospital": HOSPITAL, "global_model_sha256": hash_arrays(model),
            "update_sha256": hash_arrays(update) if sent else None, "records_used": 1200 if sent else 0,
            "epsilon_charged": 0.4 if sent else 0.0, "epsilon_total": 0.4 * r, "delta": 1e-5,
            "policy_checks": {"secure_aggregation": True, "model_allowed": True, "min_hospitals": "3 >= 2"},
            "decision": "sent" if sent else "declined: epsilon cap 2.0 would be exceeded"}


def _write(path: Path, key: Path | None, n: int = 5) -> list[dict[str, Any]]:
    log = AuditLog(path, key)
    return [log.append(**_round(r, sent=r != 3)) for r in range(1, n + 1)]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _edit(path: Path, line: int, **changes: Any) -> None:
    lines = _lines(path)
    entry = json.loads(lines[line - 1])
    entry.update(changes)
    lines[line - 1] = json.dumps(entry) + "\n"
    path.write_text("".join(lines))


# ---------------------------------------------------------------- a good log


def test_signed_log_verifies(tmp_path: Path, key: Path, pub: Path, pki: AuditKeys) -> None:
    log = tmp_path / "audit.jsonl"
    written = _write(log, key)
    report = verify_audit_log(log, pub)
    assert report.ok, report.problem
    assert report.entries == 5 and report.signed and report.signatures_checked
    assert report.signer == pki.hospitals[HOSPITAL].fingerprint
    assert report.sent_rounds == (1, 2, 4, 5)
    assert report.last_hash == written[-1]["hash"]
    assert [e["seq"] for e in written] == [0, 1, 2, 3, 4]
    assert written[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(written, written[1:], strict=False))
    assert written[2]["update_sha256"] is None and written[2]["decision"].startswith("declined: ")
    assert written[0]["time"].endswith("Z")
    # every line is exactly the entry returned, with every documented field
    assert [json.loads(line) for line in _lines(log)] == written
    assert set(written[0]) == {"seq", "time", "round", "run_id", "hospital", "global_model_sha256", "update_sha256",
                               "records_used", "epsilon_charged", "epsilon_total", "delta", "policy_checks",
                               "decision", "prev", "signer", "hash", "signature"}


def test_signature_is_ecdsa_sha256_over_the_hash_as_flower_signs(tmp_path: Path, key: Path, pub: Path) -> None:
    """The same scheme as Flower's sign_message/verify_signature, so Flower's own verifier accepts it."""
    from flwr.supercore.primitives.asymmetric import verify_signature

    entry = _write(tmp_path / "a.jsonl", key, n=1)[0]
    public = load_node_private_key(key).public_key()
    assert entry_hash(entry) == entry["hash"]
    assert verify_signature(public, entry["hash"].encode(), base64.b64decode(entry["signature"]))
    assert not verify_signature(public, GENESIS.encode(), base64.b64decode(entry["signature"]))


# ---------------------------------------------------------------- tampering, each named at its line


def _tamper_edit(path: Path) -> None:
    _edit(path, 3, records_used=999)


def _tamper_delete(path: Path) -> None:
    lines = _lines(path)
    del lines[2]
    path.write_text("".join(lines))


def _tamper_swap(path: Path) -> None:
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_text("".join(lines))


def _tamper_signature(path: Path) -> None:
    other = json.loads(_lines(path)[0])["signature"]  # a real signature, of another entry
    _edit(path, 4, signature=other)


def _tamper_rehash(path: Path) -> None:
    """An editor who recomputes the hash: the chain of this line holds, the signature does not."""
    lines = _lines(path)
    entry = json.loads(lines[4])
    entry["epsilon_total"] = 0.01
    entry["hash"] = entry_hash(entry)
    lines[4] = json.dumps(entry) + "\n"
    path.write_text("".join(lines))


def _tamper_malformed(path: Path) -> None:
    lines = _lines(path)
    lines.insert(1, "{not json\n")
    path.write_text("".join(lines))


def _tamper_unsigned(path: Path) -> None:
    _edit(path, 2, signature=None)


def _tamper_unsigned_and_unnamed(path: Path) -> None:
    _edit(path, 2, signature=None, signer=None)


@pytest.mark.parametrize(("tamper", "line", "message"), [
    (_tamper_edit, 3, "hash does not match.*edited"),
    (_tamper_delete, 3, "seq is 3, expected 2.*removed"),
    (_tamper_swap, 2, "seq is 2, expected 1.*reordered"),
    (_tamper_signature, 4, "bad signature"),
    (_tamper_rehash, 5, "bad signature"),
    (_tamper_malformed, 2, "malformed: not valid JSON"),
    (_tamper_unsigned, 2, "signer and signature must both be set"),
    (_tamper_unsigned_and_unnamed, 2, "hash does not match"),  # the signer is inside the hash
])
def test_tampering_is_found_at_its_line(tmp_path: Path, key: Path, pub: Path, tamper, line: int,
                                        message: str) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, key)
    assert verify_audit_log(log, pub).ok
    tamper(log)
    report = verify_audit_log(log, pub)
    assert not report.ok
    assert report.problem.line == line, report.problem
    assert re.search(message, report.problem.message), report.problem.message
    assert report.entries == line - 1


def test_an_entry_spliced_in_from_another_log_breaks_the_chain(tmp_path: Path, key: Path, pub: Path) -> None:
    """A genuine, validly signed entry with the right seq, taken from another log of the same hospital."""
    log, other = tmp_path / "audit.jsonl", tmp_path / "other.jsonl"
    _write(log, key)
    other_log = AuditLog(other, key)
    for r in (11, 12, 13):
        other_log.append(**_round(r))
    lines = _lines(log)
    lines[2] = _lines(other)[2]
    log.write_text("".join(lines))
    assert verify_audit_log(other, pub).ok
    report = verify_audit_log(log, pub)
    assert report.problem.line == 3 and "prev does not match" in report.problem.message


def test_chain_only_check_cannot_see_a_rehashed_edit_but_a_key_can(tmp_path: Path, key: Path, pub: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, key)
    _tamper_rehash(log)  # the last line, re-hashed: the chain alone still holds
    assert verify_audit_log(log).ok
    assert verify_audit_log(log, pub).problem.line == 5


def test_another_hospitals_key_fails_at_line_one(tmp_path: Path, key: Path, pki: AuditKeys) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, key)
    report = verify_audit_log(log, pki.hospitals["south"].public_key)
    assert report.problem.line == 1
    assert f"not by the given key {pki.hospitals['south'].fingerprint}" in report.problem.message


def test_truncated_tail_is_invisible_without_an_independent_count(tmp_path: Path, key: Path, pub: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, key)
    log.write_text("".join(_lines(log)[:3]))
    assert verify_audit_log(log, pub).ok  # documented: the file alone cannot show it
    report = verify_audit_log(log, pub, expected_entries=5)
    assert report.problem.line is None
    assert "holds 3 entries, expected 5: the last 2 entries were removed" in report.problem.message
    # a ledger-style check: rounds charged there that have no "sent" entry here
    assert {1, 2, 4, 5} - set(report.sent_rounds) == {4, 5}


def test_incomplete_last_line_is_skipped_with_a_warning_and_the_writer_continues(tmp_path: Path, key: Path,
                                                                                pub: Path) -> None:
    """A crash in the middle of writing the last line: that line is no entry; the four before it are the log,
    and the next writer sets the torn bytes aside (kept, in <log>.torn) and continues the chain after them."""
    log = tmp_path / "audit.jsonl"
    written = _write(log, key)
    text = log.read_text()
    log.write_text(text[:-40])
    report = verify_audit_log(log, pub)
    assert report.ok and report.entries == 4 and report.last_hash == written[3]["hash"]
    assert [s.line for s in report.skipped] == [5] and "incomplete last line" in report.skipped[0].message
    writer = AuditLog(log, key)
    again = writer.append(**_round(5))
    assert again["seq"] == 4 and again["prev"] == written[3]["hash"]
    assert (tmp_path / "audit.jsonl.torn").read_text() == text[-len(text) + len("".join(text.splitlines(
        keepends=True)[:4])):-40] + "\n"
    final = verify_audit_log(log, pub, expected_entries=5)
    assert final.ok and not final.skipped


def test_a_line_without_newline_that_is_an_entry_is_still_refused(tmp_path: Path, key: Path, pub: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, key)
    log.write_text(log.read_text()[:-1])
    report = verify_audit_log(log, pub)
    assert report.problem.line == 5 and "no newline" in report.problem.message


def test_an_emptied_signed_log_does_not_verify_against_its_key(tmp_path: Path, key: Path, pub: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, key)
    log.write_text("")
    assert verify_audit_log(log).ok  # the chain alone: an empty chain is a valid chain (documented)
    report = verify_audit_log(log, pub)
    assert not report.ok and report.problem.line is None and "holds no entries" in report.problem.message


def test_deeply_nested_json_is_a_malformed_line_not_a_crash(tmp_path: Path, key: Path, pub: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, key, n=2)
    with log.open("a") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
    report = verify_audit_log(log, pub)
    assert report.problem.line == 3 and "nested too deeply" in report.problem.message


STUDY = "smoke:0123456789abcdef"


def test_a_resent_round_is_a_retry_of_its_entry(tmp_path: Path, key: Path, pub: Path) -> None:
    """After a crash and resume the server sends round 2 again: the hospital records attempt 2 of round 2's
    entry (retry_of its seq), so the log holds 3 entries in 4 lines, and still verifies."""
    log = tmp_path / "audit.jsonl"
    writer = AuditLog(log, key)
    first = [writer.append(**_round(r), study=STUDY) for r in (1, 2)]
    restarted = AuditLog(log, key)  # the hospital's process after the restart
    retry = restarted.append(**_round(2), study=STUDY)
    assert retry["attempt"] == 2 and retry["retry_of"] == first[1]["seq"] and retry["seq"] == 2
    third = restarted.append(**_round(2), study=STUDY)
    assert (third["attempt"], third["retry_of"]) == (3, first[1]["seq"])
    restarted.append(**_round(3), study=STUDY)
    assert "attempt" not in restarted.append(**_round(1), study="another:study")
    report = verify_audit_log(log, pub, expected_entries=4)
    assert report.ok, report.problem
    assert (report.entries, report.lines, report.retries) == (4, 6, 2) and report.sent_rounds == (1, 2, 3)


@pytest.mark.parametrize(("change", "message"), [
    ({"attempt": 3}, "attempt is 3, expected 2"),
    ({"retry_of": 0}, "retry_of is 0"),  # the seq of round 1's entry, not round 2's
    ({"attempt": None, "retry_of": None}, "second entry for round 2"),
    ({"retry_of": None}, "must both be set"),
])
def test_a_tampered_retry_is_found(tmp_path: Path, key: Path, change: dict[str, Any], message: str) -> None:
    """Retries are inside the chain: edit one (and re-hash it, as an editor would) and it shows; without the
    re-hash the edit shows as a hash mismatch."""
    log = tmp_path / "audit.jsonl"
    writer = AuditLog(log, key)
    for r in (1, 2, 2):
        writer.append(**_round(r), study=STUDY)
    assert verify_audit_log(log).ok
    lines = _lines(log)
    entry = json.loads(lines[2])
    for k, v in change.items():
        if v is None:
            entry.pop(k)
        else:
            entry[k] = v
    entry["hash"] = entry_hash(entry)
    lines[2] = json.dumps(entry) + "\n"
    log.write_text("".join(lines))
    report = verify_audit_log(log)
    assert report.problem.line == 3 and message in report.problem.message, report.problem
    _edit(log, 3, attempt=5)  # no re-hash
    assert "hash does not match" in verify_audit_log(log).problem.message


# ---------------------------------------------------------------- writing: restart, refusal, unsigned


def test_restart_resumes_the_chain(tmp_path: Path, key: Path, pub: Path) -> None:
    log = tmp_path / "audit.jsonl"
    first = AuditLog(log, key)
    a = [first.append(**_round(1)), first.append(**_round(2))]
    second = AuditLog(log, key)  # a new process after a restart
    assert second.entries == 2
    c = second.append(**_round(3))
    assert c["seq"] == 2 and c["prev"] == a[1]["hash"]
    assert verify_audit_log(log, pub).entries == 3
    # the old writer notices the new line, verifies it, and continues after it
    d = first.append(**_round(4))
    assert d["seq"] == 3 and d["prev"] == c["hash"]
    assert verify_audit_log(log, pub).ok


def test_each_append_reaches_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedhealth.privacy.audit as audit

    synced: list[int] = []
    real_fsync = audit.os.fsync

    def fsync(fd: int) -> None:
        synced.append(audit.os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(audit.os, "fsync", fsync)
    log = tmp_path / "audit.jsonl"
    writer = AuditLog(log)
    writer.append(**_round(1))
    size_after_one = log.stat().st_size
    writer.append(**_round(2))
    # the file after each line (and, once, the directory that gained the new file)
    assert size_after_one in synced and log.stat().st_size in synced


def test_opening_a_tampered_log_is_refused(tmp_path: Path, key: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, key, n=3)
    _edit(log, 2, decision="declined: nothing to see")
    before = log.read_bytes()
    with pytest.raises(AuditError, match=rf"{log}: audit log fails verification at line 2: hash does not match"):
        AuditLog(log, key)
    assert log.read_bytes() == before


def test_tampering_between_appends_is_refused(tmp_path: Path, key: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditLog(log, key)
    for r in (1, 2, 3):
        writer.append(**_round(r))
    _tamper_swap(log)
    with pytest.raises(AuditError, match="line 2: seq is 2"):
        writer.append(**_round(4))
    log.write_text("".join(sorted(_lines(log), key=lambda s: json.loads(s)["seq"])[:2]))  # now truncate
    with pytest.raises(AuditError, match="shrank.*entries were removed"):
        writer.append(**_round(4))


def test_signers_are_not_mixed(tmp_path: Path, key: Path, pki: AuditKeys) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, key, n=2)
    with pytest.raises(AuditError, match="signed by SHA256:.*this writer signs with SHA256:"):
        AuditLog(log, pki.hospitals["south"].private_key)
    with pytest.raises(AuditError, match="this writer signs with no key"):
        AuditLog(log, None)


def test_unsigned_mode(tmp_path: Path, pub: Path) -> None:
    log = tmp_path / "audit.jsonl"
    written = _write(log, None)
    assert all(e["signature"] is None and e["signer"] is None for e in written)
    report = verify_audit_log(log)
    assert report.ok and report.entries == 5 and not report.signed and not report.signatures_checked
    assert AuditLog(log, None).append(**_round(6))["seq"] == 5
    with_key = verify_audit_log(log, pub)
    assert with_key.problem.line == 1 and "not signed" in with_key.problem.message
    _tamper_delete(log)
    assert verify_audit_log(log).problem.line == 3


@pytest.mark.parametrize(("change", "message"), [
    ({"patient_age": 54}, r"unknown fields \['patient_age'\].*never patient values"),
    ({"decision": "sent", "update_sha256": None}, "decision is 'sent' but update_sha256 is null"),
    ({"decision": "declined: cap"}, "a declined round sends nothing"),
    ({"decision": "maybe"}, "decision must be 'sent' or 'declined: <reason>'"),
    ({"global_model_sha256": "abc"}, "64 lower-case hex digits"),
    ({"epsilon_total": float("nan")}, "epsilon_total must be a finite non-negative number"),
    ({"records_used": -1}, "records_used must be a non-negative integer"),
    ({"policy_checks": {"note": ["a", "list"]}}, "policy_checks must map"),
])
def test_append_rejects_bad_fields(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    log = tmp_path / "audit.jsonl"
    with pytest.raises(AuditError, match=message):
        AuditLog(log).append(**{**_round(1), **change})
    assert not log.exists() or log.read_bytes() == b""


def test_append_needs_every_field(tmp_path: Path) -> None:
    fields = _round(1)
    del fields["delta"]
    with pytest.raises(AuditError, match=r"lacks fields \['delta'\]"):
        AuditLog(tmp_path / "a.jsonl").append(**fields)


def test_numpy_scalars_are_written_as_plain_numbers(tmp_path: Path) -> None:
    fields = {**_round(1), "records_used": np.int64(1200), "epsilon_total": np.float32(0.5),
              "policy_checks": {"ok": np.bool_(True)}}
    entry = AuditLog(tmp_path / "a.jsonl").append(**fields)
    assert entry["records_used"] == 1200 and type(entry["records_used"]) is int
    assert entry["policy_checks"] == {"ok": True}
    assert verify_audit_log(tmp_path / "a.jsonl").ok


# ---------------------------------------------------------------- hashing arrays


def test_hash_arrays_is_deterministic_and_sensitive() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.ones(3, dtype=np.float32)
    base = hash_arrays([a, b])
    assert base == hash_arrays([a.copy(), b.copy()])
    assert base == hash_arrays([np.asfortranarray(a), b])  # memory layout is not content
    assert base == hash_arrays([a.astype(">f4"), b])  # nor is byte order
    variants = [
        [a.reshape(4, 3), b],  # shape
        [a.astype(np.float64), b],  # dtype
        [b, a],  # order
        [a],  # count
        [np.concatenate([a.ravel(), b])],  # the same bytes, split differently
        [a + np.float32(1e-6), b],  # one value
    ]
    hashes = {hash_arrays(v) for v in variants}
    assert base not in hashes and len(hashes) == len(variants)
    assert len(base) == 64 and int(base, 16) >= 0
    with pytest.raises(TypeError, match="dtype object"):
        hash_arrays([np.array([{"x": 1}], dtype=object)])


# ---------------------------------------------------------------- the CLI


def test_cli_verify_exit_codes(tmp_path: Path, key: Path, pub: Path, pki: AuditKeys) -> None:
    runner = CliRunner()
    log = tmp_path / "audit.jsonl"
    _write(log, key)
    ok = runner.invoke(app, ["audit", "verify", str(log), "--public-key", str(pub)])
    assert ok.exit_code == 0, ok.output
    assert "5 entries" in ok.stdout and "verified" in ok.stdout
    unchecked = runner.invoke(app, ["audit", "verify", str(log)])
    assert unchecked.exit_code == 0 and "NOT checked" in unchecked.stdout
    other = runner.invoke(app, ["audit", "verify", str(log), "--public-key",
                                str(pki.hospitals["south"].public_key)])
    assert other.exit_code == 1 and "line 1" in other.stderr
    short = runner.invoke(app, ["audit", "verify", str(log), "--public-key", str(pub), "--expected-entries", "6"])
    assert short.exit_code == 1 and "expected 6" in short.stderr
    assert "verification FAILED: the log holds 5 entries, expected 6: the last 1 entry was removed" in \
        " ".join(short.stderr.split()) and "(5 entries verified)" in " ".join(short.stderr.split())
    one = runner.invoke(app, ["audit", "verify", str(log), "--public-key", str(pub), "--expected-entries", "5"])
    assert one.exit_code == 0 and "5 entries, chain intact" in one.stdout
    _tamper_edit(log)
    bad = runner.invoke(app, ["audit", "verify", str(log), "--public-key", str(pub)])
    assert bad.exit_code == 1
    assert "FAILED at line 3" in bad.stderr
    missing = runner.invoke(app, ["audit", "verify", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2 and "not found" in missing.stderr
    not_a_key = runner.invoke(app, ["audit", "verify", str(log), "--public-key", str(log)])
    assert not_a_key.exit_code == 2 and "not an OpenSSH public key" in not_a_key.stderr
