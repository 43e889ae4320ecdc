"""The study PKI: files, permissions, formats Flower 1.41 loads, and every check's error."""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedhealth.security.certs import (
    CertificateError,
    HospitalKeys,
    NodeKeyFiles,
    PKIError,
    StudyPKI,
    add_hospital_public_key,
    check_ca_certificate,
    check_node_keypair,
    check_server_tls,
    init_hospital_keys,
    init_study_pki,
    load_node_private_key,
    load_node_public_key,
)
from tests.support import invoke_cli

HOSPITALS = ["north-tertiary", "south_community"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> StudyPKI:
    return init_study_pki(tmp_path_factory.mktemp("pki") / "study", ["superlink.study.example", "localhost",
                                                                     "127.0.0.1"], days=30)


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> StudyPKI:
    return init_study_pki(tmp_path_factory.mktemp("pki") / "other")


@pytest.fixture(scope="module")
def hospital_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HospitalKeys]:
    """Each hospital's keys, made at the hospital (its own folder, never the operator's PKI)."""
    root = tmp_path_factory.mktemp("hospitals")
    return {h: init_hospital_keys(root / h, h) for h in HOSPITALS}


@pytest.fixture(scope="module")
def nodes(hospital_keys: dict[str, HospitalKeys]) -> dict[str, NodeKeyFiles]:
    return {h: k.node for h, k in hospital_keys.items()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# ---------------------------------------------------------------- init


def test_init_writes_every_file_with_its_permissions(pki: StudyPKI) -> None:
    private = [pki.ca_key, pki.server_key]  # no hospital's private key: the operator never holds one
    public = [pki.ca_cert, pki.server_cert, pki.manifest]
    for path in private:
        assert _mode(path) == 0o600, path
    for path in public:
        assert _mode(path) == 0o644, path
    dirs = [p for p in pki.root.rglob("*") if p.is_dir()] + [pki.root]
    assert len(dirs) == 1 + 3  # root, ca, server, hospitals (empty until the hospitals send their .pub files)
    for d in dirs:
        assert _mode(d) == 0o700, d
    files = {p for p in pki.root.rglob("*") if p.is_file()}
    assert files == set(private) | set(public)


def test_manifest_names_and_fingerprints_without_secrets(pki: StudyPKI) -> None:
    text = pki.manifest.read_text()
    manifest = json.loads(text)
    assert manifest["server"]["names"] == ["superlink.study.example", "localhost", "127.0.0.1"]
    ca = _load_cert(pki.ca_cert)
    assert manifest["ca"]["not_after"] == ca.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert manifest["ca"]["sha256_fingerprint"] == ca.fingerprint(hashes.SHA256()).hex(":").upper()
    assert "BEGIN" not in text
    for path in (pki.ca_key, pki.server_key):
        body = "".join(path.read_text().splitlines()[1:-1])
        assert body[:40] not in text


def test_ca_and_server_certificate_extensions(pki: StudyPKI) -> None:
    ca, server = _load_cert(pki.ca_cert), _load_cert(pki.server_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.study.example", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    server.verify_directly_issued_by(ca)


@pytest.mark.parametrize("name", [x509.DNSName("superlink.study.example"), x509.DNSName("localhost"),
                                  x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
def test_server_certificate_passes_a_strict_tls_verifier(pki: StudyPKI, name: x509.GeneralName) -> None:
    """cryptography's web-PKI verifier: chain, validity, key usage and the name, all at once."""
    ca, server = _load_cert(pki.ca_cert), _load_cert(pki.server_cert)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(name)
    chain = verifier.verify(server, [])
    assert chain[-1] == ca
    wrong = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("evil.example"))
    with pytest.raises(VerificationError):
        wrong.verify(server, [])


def _handshake(pki: StudyPKI, server_hostname: str) -> str:
    """A real TLS 1.3 handshake (Python's ssl, as uvicorn uses): the client trusts only the study CA."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as tls:
            tls.sendall(b"x")
            return tls.version() or ""
    finally:
        b.close()
        thread.join(timeout=10)


def test_tls_handshake_with_the_study_ca(pki: StudyPKI) -> None:
    assert _handshake(pki, "localhost").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
        _handshake(pki, "not-in-the-certificate.example")


def test_hospital_keys_load_with_flowers_own_loaders(nodes: dict[str, NodeKeyFiles]) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    for node in nodes.values():
        # exactly what `flower-supernode --auth-supernode-private-key FILE` runs
        args = argparse.Namespace(auth_supernode_private_key=str(node.private_key), auth_supernode_public_key=None)
        private, public = _try_setup_client_authentication(args)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
        # exactly what `flwr supernode register FILE` runs; it returns the PEM of the key it will register
        registered = serialization.load_pem_public_key(try_load_public_key(node.public_key))
        assert registered.public_numbers() == public.public_numbers()
        loaded = serialization.load_ssh_public_key(node.public_key.read_bytes())
        assert loaded.public_numbers() == public.public_numbers()
        assert node.public_key.read_text().endswith(f" fedhealth-supernode-{node.private_key.parent.name}\n")
        assert check_node_keypair(node.private_key, node.public_key) == node.fingerprint


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = init_study_pki(tmp_path / "pki")
    before = first.ca_cert.read_bytes()
    with pytest.raises(PKIError, match=r"already there.*--force"):
        init_study_pki(tmp_path / "pki")
    assert first.ca_cert.read_bytes() == before
    second = init_study_pki(tmp_path / "pki", force=True)
    assert second.ca_cert.read_bytes() != before
    assert _mode(second.ca_key) == 0o600
    check_server_tls(second.ca_cert, second.server_cert, second.server_key, host="localhost")


def test_existing_empty_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = init_study_pki(tmp_path / "pki")
    assert pki.server_names == ("localhost", "127.0.0.1")
    check_server_tls(pki.ca_cert, pki.server_cert, pki.server_key, host=["localhost", "127.0.0.1"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"server_names": ["https://superlink:9092"]}, "neither an IP address nor a DNS name"),
    ({"server_names": ["localhost", "LOCALHOST"]}, "duplicate"),
    ({"days": 0}, "at least 1 day"),
])
def test_init_rejects_bad_requests(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(PKIError, match=message):
        init_study_pki(tmp_path / "pki", **kwargs)
    assert not (tmp_path / "pki").exists()


# ---------------------------------------------------------------- checks and their errors


def test_good_server_tls_passes(pki: StudyPKI) -> None:
    found = check_server_tls(pki.ca_cert, pki.server_cert, pki.server_key,
                             host=["superlink.study.example", "LOCALHOST", "127.0.0.1"])
    assert found.names == ("superlink.study.example", "localhost", "127.0.0.1")
    assert found.not_after > datetime.now(UTC) + timedelta(days=29)


def test_missing_file(pki: StudyPKI, nodes: dict[str, NodeKeyFiles], tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(CertificateError, match=rf"{missing}: CA certificate not found"):
        check_server_tls(missing, pki.server_cert, pki.server_key)
    with pytest.raises(CertificateError, match="server private key not found"):
        check_server_tls(pki.ca_cert, pki.server_cert, tmp_path / "nope.key")
    with pytest.raises(CertificateError, match="SuperNode private key not found"):
        check_node_keypair(tmp_path / "nope", nodes[HOSPITALS[0]].public_key)


def test_not_pem_and_swapped_files(pki: StudyPKI, tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("hello\n")
    with pytest.raises(CertificateError, match=rf"{junk}: CA certificate is not a PEM certificate"):
        check_server_tls(junk, pki.server_cert, pki.server_key)
    with pytest.raises(CertificateError, match="swap --cert and --key"):
        check_server_tls(pki.ca_cert, pki.server_key, pki.server_cert)
    damaged = tmp_path / "damaged.crt"
    damaged.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match="damaged"):
        check_ca_certificate(damaged)


def test_expired_certificate_names_its_dates(tmp_path: Path) -> None:
    issued = datetime(2020, 1, 1, 12, tzinfo=UTC)
    old = init_study_pki(tmp_path / "old", days=30, now=issued)
    with pytest.raises(CertificateError, match=r"ca\.crt: CA certificate expired on 2020-01-31T12:00:00Z "
                                               r"\(valid from 2020-01-01T11:55:00Z\).*certs init --force"):
        check_server_tls(old.ca_cert, old.server_cert, old.server_key)
    # the same files were fine while they were valid
    check_server_tls(old.ca_cert, old.server_cert, old.server_key, now=issued + timedelta(days=1))


def test_not_yet_valid_certificate(tmp_path: Path) -> None:
    future = init_study_pki(tmp_path / "future", now=datetime.now(UTC) + timedelta(days=10))
    with pytest.raises(CertificateError, match=r"not valid yet: valid from .* check this machine's clock"):
        check_server_tls(future.ca_cert, future.server_cert, future.server_key)


def test_server_certificate_from_another_ca(pki: StudyPKI, other_pki: StudyPKI) -> None:
    with pytest.raises(CertificateError, match=rf"{pki.server_cert}: server certificate is not signed by the CA "
                                               rf"in {other_pki.ca_cert}"):
        check_server_tls(other_pki.ca_cert, pki.server_cert, pki.server_key)


def test_server_certificate_passed_as_ca(pki: StudyPKI) -> None:
    with pytest.raises(CertificateError, match="is not a CA certificate"):
        check_server_tls(pki.server_cert, pki.server_cert, pki.server_key)


@pytest.mark.parametrize("host", ["other.study.example", "study.example", "10.0.0.1", "::1"])
def test_host_not_covered(pki: StudyPKI, host: str) -> None:
    with pytest.raises(CertificateError, match=rf"does not cover host '{host}'.*--server-name {host}"):
        check_server_tls(pki.ca_cert, pki.server_cert, pki.server_key, host=host)


def test_wildcard_certificate_covers_one_label(pki: StudyPKI, tmp_path: Path) -> None:
    """A hospital may bring a certificate from its own CA; wildcards cover exactly one left-most label."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca = _load_cert(pki.ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.study.example")]), critical=True)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "wild.crt", tmp_path / "wild.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    assert check_server_tls(pki.ca_cert, cert_path, key_path, host="superlink.study.example").names == (
        "*.study.example",)
    for host in ("study.example", "a.superlink.study.example", "superlink.other.example"):
        with pytest.raises(CertificateError, match="does not cover host"):
            check_server_tls(pki.ca_cert, cert_path, key_path, host=host)


def test_server_key_of_another_certificate(pki: StudyPKI, other_pki: StudyPKI) -> None:
    with pytest.raises(CertificateError, match=rf"{other_pki.server_key}: this private key does not belong to the "
                                               rf"server certificate {pki.server_cert}"):
        check_server_tls(pki.ca_cert, pki.server_cert, other_pki.server_key)


def test_node_keys_of_two_hospitals(nodes: dict[str, NodeKeyFiles]) -> None:
    a, b = (nodes[h] for h in HOSPITALS)
    with pytest.raises(CertificateError, match=rf"{a.private_key}: this SuperNode private key does not match the "
                                               rf"public key {b.public_key}"):
        check_node_keypair(a.private_key, b.public_key)


def test_node_key_in_the_wrong_format(nodes: dict[str, NodeKeyFiles], tmp_path: Path) -> None:
    node = nodes[HOSPITALS[0]]
    pem = tmp_path / "pem_key"
    pem.write_bytes(load_node_private_key(node.private_key).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(CertificateError, match="not in OpenSSH format.*It is a PEM key"):
        check_node_keypair(pem, node.public_key)
    with pytest.raises(CertificateError, match="holds a PRIVATE key"):
        check_node_keypair(node.private_key, node.private_key)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_node_keys_agree_with_openssh(nodes: dict[str, NodeKeyFiles], tmp_path: Path) -> None:
    """OpenSSH's own tool: our fingerprints are its fingerprints, its keys pass our checks, and a
    passphrase (which flower-supernode cannot supply: it crashes with a TypeError) is named."""
    node = nodes[HOSPITALS[0]]
    listed = subprocess.run(["ssh-keygen", "-lf", str(node.public_key)], capture_output=True, text=True, check=True)
    assert listed.stdout.split()[1] == node.fingerprint
    made = tmp_path / "made"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(made)], check=True)
    assert check_node_keypair(made, made.with_suffix(".pub")).startswith("SHA256:")
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "secret", "-f", str(locked)], check=True)
    with pytest.raises(CertificateError, match=rf"{locked}: SuperNode private key is protected by a passphrase"):
        load_node_private_key(locked)


def test_node_key_that_is_not_ecdsa(tmp_path: Path) -> None:
    """Flower refuses non-EC keys (exit 'Unable to parse the private key file'); we say why first."""
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = tmp_path / "ed", tmp_path / "ed.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    with pytest.raises(CertificateError, match="needs an ECDSA key on a NIST curve"):
        load_node_private_key(private)
    with pytest.raises(CertificateError, match="needs an ECDSA key on a NIST curve"):
        load_node_public_key(public)
    public.write_bytes(b"ecdsa-sha2-nistp256 AAAA\n")  # a truncated key line
    with pytest.raises(CertificateError, match="not an OpenSSH public key line"):
        load_node_public_key(public)


# ---------------------------------------------------------------- the CLI


def test_cli_init_prints_paths_but_no_key_material(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    result = invoke_cli("certs", "init", "--out", str(out), "--server-name", "superlink.example.org",
                        "--server-name", "10.1.2.3", "--days", "90")
    assert result.exit_code == 0, result.output
    assert "BEGIN" not in result.output
    for path in [out / "ca" / "ca.crt", out / "ca" / "ca.key", out / "server" / "server.key"]:
        assert path.is_file() and str(path) in result.output
    for key_file in [out / "ca" / "ca.key", out / "server" / "server.key"]:
        for line in key_file.read_text().splitlines()[1:-1]:
            assert line not in result.output
    assert not [p for p in out.rglob("*") if p.is_file() and "PRIVATE KEY" in p.read_text()
                and p not in (out / "ca" / "ca.key", out / "server" / "server.key")]
    # no such option
    assert invoke_cli("certs", "init", "--out", str(tmp_path / "p2"), "--hospital", "a").exit_code == 2
    check_server_tls(out / "ca" / "ca.crt", out / "server" / "server.crt", out / "server" / "server.key",
                     host=["superlink.example.org", "10.1.2.3"])

    again = invoke_cli("certs", "init", "--out", str(out))
    assert again.exit_code == 2
    assert "already there" in again.stderr and "--force" in again.stderr
    assert invoke_cli("certs", "init", "--out", str(out), "--force").exit_code == 0


def test_cli_hospital_keys_bad_name_exits_2(tmp_path: Path) -> None:
    result = invoke_cli("certs", "hospital-keys", "--out", str(tmp_path / "p"), "--hospital", "a/b")
    assert result.exit_code == 2
    assert "'/' is not allowed in a name" in result.stderr


def test_cli_check_exit_codes(pki: StudyPKI, other_pki: StudyPKI, nodes: dict[str, NodeKeyFiles],
                              tmp_path: Path) -> None:
    ok = invoke_cli("certs", "check", "--ca", str(pki.ca_cert), "--cert", str(pki.server_cert),
                    "--key", str(pki.server_key), "--host", "localhost", "--host", "127.0.0.1")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("ok:")
    wrong_host = invoke_cli("certs", "check", "--ca", str(pki.ca_cert), "--cert", str(pki.server_cert),
                            "--key", str(pki.server_key), "--host", "elsewhere.example")
    assert wrong_host.exit_code == 1
    assert "does not cover host 'elsewhere.example'" in wrong_host.stderr
    wrong_ca = invoke_cli("certs", "check", "--ca", str(other_pki.ca_cert), "--cert", str(pki.server_cert),
                          "--key", str(pki.server_key))
    assert wrong_ca.exit_code == 1 and "not signed by the CA" in wrong_ca.stderr
    missing = invoke_cli("certs", "check", "--ca", str(tmp_path / "none.crt"), "--cert", str(pki.server_cert),
                         "--key", str(pki.server_key))
    assert missing.exit_code == 2 and "not found" in missing.stderr
    a, b = (nodes[h] for h in HOSPITALS)
    assert invoke_cli("certs", "check-node", str(a.private_key), str(a.public_key)).exit_code == 0
    mismatch = invoke_cli("certs", "check-node", str(a.private_key), str(b.public_key))
    assert mismatch.exit_code == 1 and "does not match" in mismatch.stderr


# ---------------------------------------------------------------- keys born at the hospital


def test_hospital_keys_are_three_separate_pairs_flower_accepts(hospital_keys: dict[str, HospitalKeys]) -> None:
    """SuperNode authentication, audit signing and app approval: three key pairs, private halves 0600, the
    approval key Ed25519 and named in a trusted-entities file that flower-supernode's own reader accepts."""
    from flwr.supernode.cli.flower_supernode import _try_obtain_trusted_entities, _validate_public_keys_ed25519

    keys = hospital_keys[HOSPITALS[0]]
    for path in (keys.node.private_key, keys.audit_private_key, keys.approval_private_key):
        assert _mode(path) == 0o600, path
    for path in (keys.node.public_key, keys.audit_public_key, keys.approval_public_key, keys.trusted_entities,
                 keys.manifest):
        assert _mode(path) == 0o644 and "PRIVATE" not in path.read_text(), path
    assert len({keys.node.fingerprint, keys.audit_fingerprint, keys.approval_fingerprint}) == 3
    assert check_node_keypair(keys.audit_private_key, keys.audit_public_key) == keys.audit_fingerprint
    trusted = _try_obtain_trusted_entities(keys.trusted_entities)
    _validate_public_keys_ed25519(trusted)  # exits the process on a bad key
    assert trusted == {keys.approval_key_id: keys.approval_public_key.read_text().strip()}
    other = hospital_keys[HOSPITALS[1]]
    assert keys.node.fingerprint != other.node.fingerprint and keys.audit_fingerprint != other.audit_fingerprint


def test_hospital_keys_are_never_overwritten_unless_forced(tmp_path: Path) -> None:
    first = init_hospital_keys(tmp_path / "keys", "north")
    before = first.node.private_key.read_bytes()
    with pytest.raises(PKIError, match=r"already there.*--force"):
        init_hospital_keys(tmp_path / "keys", "north")
    assert first.node.private_key.read_bytes() == before
    assert init_hospital_keys(tmp_path / "keys", "north", force=True).node.private_key.read_bytes() != before


def test_the_operator_files_public_keys_only(pki: StudyPKI, nodes: dict[str, NodeKeyFiles], tmp_path: Path) -> None:
    operator = init_study_pki(tmp_path / "pki")
    a, b = (nodes[h] for h in HOSPITALS)
    target, fingerprint = add_hospital_public_key(operator.root, HOSPITALS[0], a.public_key)
    assert target.read_bytes() == a.public_key.read_bytes() and fingerprint == a.fingerprint
    with pytest.raises(CertificateError, match="holds a PRIVATE key"):
        add_hospital_public_key(operator.root, HOSPITALS[1], b.private_key)
    with pytest.raises(PKIError, match="already has another public key filed"):
        add_hospital_public_key(operator.root, HOSPITALS[0], b.public_key)
    assert not [p for p in operator.root.rglob("supernode_auth")]


def test_cli_hospital_keys_prints_paths_and_fingerprints_but_no_key_material(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = invoke_cli("certs", "hospital-keys", "--out", str(out), "--hospital", "north")
    assert result.exit_code == 0, result.output
    for name in ("supernode_auth", "audit_signing", "app_approval"):
        assert str(out / name) in result.output
        for line in (out / name).read_text().splitlines()[1:-1]:
            assert line not in result.output
    again = invoke_cli("certs", "hospital-keys", "--out", str(out), "--hospital", "north")
    assert again.exit_code == 2 and "refusing to overwrite" in again.stderr
    added = invoke_cli("certs", "add-hospital", str(out / "supernode_auth"), "--pki", str(tmp_path / "pki"),
                       "--hospital", "north")
    assert added.exit_code == 1 and "holds a PRIVATE key" in added.stderr
