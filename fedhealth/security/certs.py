"""A study's certificates and keys: TLS for the SuperLink, authentication keys for each hospital's SuperNode.

Why one module: the deployment scripts must check every file *before* launching Flower, because
Flower's own failures are late and vague (an SSL handshake error on the SuperNode, exit 305 for an
unregistered node). Here the same code that writes the files says exactly which one is wrong.

The formats are the ones Flower 1.41 reads (see `flwr/supernode/cli/flower_supernode.py`,
`_try_setup_client_authentication`, and `flwr/cli/supernode/register.py`, `try_load_public_key`):

- SuperLink TLS (`flower-superlink --ssl-ca-certfile --ssl-certfile --ssl-keyfile`, and
  `flower-supernode --root-certificates`): PEM X.509 certificates and a PEM (PKCS#8, unencrypted)
  private key, read as bytes and handed to gRPC / uvicorn.
- SuperNode authentication (`flower-supernode --auth-supernode-private-key FILE`): an *OpenSSH*
  private key (`-----BEGIN OPENSSH PRIVATE KEY-----`), no passphrase, loaded with
  `cryptography`'s `load_ssh_private_key`; it must be an elliptic-curve key.
- Registration (`flwr supernode register FILE.pub <federation>`): an OpenSSH public key line
  (`ecdsa-sha2-nistp384 AAAA...`), loaded with `load_ssh_public_key`; it must be EC on a NIST
  curve. We use P-384 (SECP384R1), the curve Flower's own key helpers generate.

Layout written by `init_study_pki(out_dir, ...)` (the operator's; no hospital private key is ever in it)::

    pki.json                          manifest: names, fingerprints, validity (no secrets)
    ca/ca.crt                         the study CA: give it to every hospital (--root-certificates)
    ca/ca.key                         the CA's key: only needed to issue new server certificates; keep offline
    server/server.crt, server.key     the SuperLink's TLS certificate and key
    hospitals/<name>/supernode_auth.pub   a hospital's SuperNode public key, as the hospital sent it
                                          (`add_hospital_public_key`); the operator registers it

Layout written by `init_hospital_keys(out_dir, hospital)`, *at the hospital* (keys are born where they are
used, so the operator never holds a hospital's private key)::

    supernode_auth, .pub       SuperNode authentication (P-384, OpenSSH): send only the .pub to the operator
    audit_signing, .pub        signs the hospital's audit log (P-384, OpenSSH): a key of its own, so the key
                               that authenticates the node is not also the key that vouches for its evidence
    app_approval, .pub         Ed25519 (OpenSSH): the hospital signs the app versions it approved with it
    trusted-entities.yaml      flower-supernode --trusted-entities: {"<hospital>-approval": <app_approval.pub>}
    keys.json                  manifest: fingerprints (no secrets)

Private keys are written with mode 0600, certificates and public keys 0644, and every directory
this module creates 0700 (a pre-existing `out_dir` keeps its mode).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedhealth.durable import atomic_write_bytes
from fedhealth.errors import TrustError

CURVE = ec.SECP384R1  # Flower's node-auth keys are P-384; the TLS keys use the same curve
SIGNATURE_HASH = hashes.SHA384  # the hash that matches a P-384 key's strength
NIST_CURVES = (ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)  # as Flower's uses_nist_ec_curve
MAX_DAYS = 36500  # a hundred years: the longest validity asked for, well inside X.509's dates (to 9999)
CLOCK_SKEW = timedelta(minutes=5)  # certificates start this much before "now", so a slow clock still accepts them

MANIFEST = "pki.json"
CA_CERT = Path("ca/ca.crt")
CA_KEY = Path("ca/ca.key")
SERVER_CERT = Path("server/server.crt")
SERVER_KEY = Path("server/server.key")
HOSPITALS_DIR = Path("hospitals")
NODE_PRIVATE_KEY = "supernode_auth"
NODE_PUBLIC_KEY = "supernode_auth.pub"
AUDIT_PRIVATE_KEY = "audit_signing"
AUDIT_PUBLIC_KEY = "audit_signing.pub"
APPROVAL_PRIVATE_KEY = "app_approval"
APPROVAL_PUBLIC_KEY = "app_approval.pub"
TRUSTED_ENTITIES = "trusted-entities.yaml"
HOSPITAL_MANIFEST = "keys.json"
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")

_HOSPITAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class PKIError(TrustError, ValueError):
    """A study PKI cannot be created as asked (a bad name, or files that would be overwritten)."""


class CertificateError(TrustError, ValueError):
    """A certificate or key file that Flower would reject or that would not secure the federation.

    The message names the file, what is wrong with it, and what to do."""


@dataclass(frozen=True)
class NodeKeyFiles:
    """One hospital's SuperNode authentication key pair on disk."""

    private_key: Path  # OpenSSH, mode 0600: flower-supernode --auth-supernode-private-key
    public_key: Path  # OpenSSH public line: flwr supernode register <this file> <federation>
    fingerprint: str  # "SHA256:..." as `ssh-keygen -l` prints it


@dataclass(frozen=True)
class StudyPKI:
    """The paths `init_study_pki` wrote."""

    root: Path
    manifest: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_names: tuple[str, ...]


@dataclass(frozen=True)
class HospitalKeys:
    """The paths `init_hospital_keys` wrote at a hospital, and the fingerprints to read out to others."""

    root: Path
    hospital: str
    node: NodeKeyFiles  # SuperNode authentication: the .pub goes to the operator
    audit_private_key: Path
    audit_public_key: Path
    audit_fingerprint: str
    approval_private_key: Path
    approval_public_key: Path
    approval_fingerprint: str
    approval_key_id: str  # its name in trusted-entities.yaml and in an app's signature records
    trusted_entities: Path
    manifest: Path


@dataclass(frozen=True)
class ServerTLS:
    """What `check_server_tls` found in a good set of SuperLink TLS files."""

    names: tuple[str, ...]  # subjectAltName entries (DNS names and IP addresses)
    not_after: datetime  # UTC
    fingerprint: str  # SHA-256 of the certificate's DER bytes, hex with colons


# ---------------------------------------------------------------- names and fingerprints


def parse_server_name(name: str) -> x509.GeneralName:
    """A SuperLink name as a subjectAltName entry: an IP address, else a DNS name (lower-cased)."""
    text = name.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    dns = text.lower().rstrip(".")
    if not dns or len(dns) > 253 or not all(_DNS_LABEL.match(label) for label in dns.split(".")):
        raise PKIError(f"server name {name!r} is neither an IP address nor a DNS name (letters, digits, hyphens "
                       "and dots, e.g. superlink.study.example); give the host name without scheme or port")
    return x509.DNSName(dns)


def _check_hospital_names(hospitals: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in hospitals:
        if not _HOSPITAL_NAME.match(name):
            raise PKIError(f"hospital name {name!r} cannot name a key directory: use 1-64 letters, digits, '_', "
                           "'.' or '-', starting with a letter or digit")
        if name.lower() in seen:
            raise PKIError(f"hospital {name!r} is listed twice; each hospital gets one key pair")
        seen.add(name.lower())


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, as `openssl x509 -fingerprint -sha256` prints it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def public_key_fingerprint(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """The OpenSSH fingerprint ("SHA256:" + unpadded base64), as `ssh-keygen -lf key.pub` prints it.

    Why this form: an operator can compare it with `ssh-keygen -l` output without our code."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    blob = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- writing files


def _refuse_to_overwrite(root: Path, files: Sequence[Path | str], force: bool, what: str, fix: str) -> None:
    """PKIError unless `root` can take `files`: a directory (or nothing yet) holding none of them, or `force`."""
    if root.exists() and not root.is_dir():
        raise PKIError(f"{root}: exists and is not a directory; choose another --out")
    existing = [str(root / f) for f in files if (root / f).exists()]
    if existing and not force:
        raise PKIError(f"{root}: {what} already there ({', '.join(existing[:3])}"
                       f"{', ...' if len(existing) > 3 else ''}); refusing to overwrite keys that may be in use"
                       f"{'. ' if fix[:1].isupper() else ' '}{fix}")


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask, and an existing directory keeps its own


class _Created:
    """What one call creates (folders, files), so that a failure part-way removes exactly that: a refused or
    failed command leaves nothing behind (exit 2: nothing written), and never removes a folder or file that
    was there before it."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def folder(self, path: Path) -> None:
        missing = []
        probe = path
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):
            folder.mkdir(mode=0o700)
            self.paths.append(folder)
        _make_private_dir(path)

    def file(self, path: Path, data: bytes, mode: int) -> None:
        if not path.exists():
            self.paths.append(path)
        _write_file(path, data, mode)

    def undo(self) -> None:
        for path in reversed(self.paths):
            with contextlib.suppress(OSError):  # a folder someone else filled meanwhile stays
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()


@contextlib.contextmanager
def _creating() -> Iterator[_Created]:
    created = _Created()
    try:
        yield created
    except BaseException:
        created.undo()
        raise


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically and durably with `mode` set before any byte lands on disk (see fedhealth.durable)."""
    atomic_write_bytes(path, data, mode)


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# ---------------------------------------------------------------- creating the PKI


def _name(common_name: str, study: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, study),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue_ca(key: ec.EllipticCurvePrivateKey, study: str, start: datetime, end: datetime) -> x509.Certificate:
    subject = _name(f"{study} study CA", study)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            # pathlen 0: the CA signs end-entity certificates only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, SIGNATURE_HASH()))


def _issue_server(key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                  names: Sequence[x509.GeneralName], study: str, start: datetime, end: datetime) -> x509.Certificate:
    return (x509.CertificateBuilder()
            .subject_name(_name(str(names[0].value), study)).issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, SIGNATURE_HASH()))


def init_study_pki(out_dir: str | Path, server_names: Sequence[str] = DEFAULT_SERVER_NAMES, days: int = 365, *,
                   force: bool = False, study: str = "fedhealth", now: datetime | None = None) -> StudyPKI:
    """Create a study CA and a SuperLink server certificate: the operator's part of the PKI.

    No hospital key is made here: each hospital makes its own (`init_hospital_keys`) and sends only its
    SuperNode public key (`add_hospital_public_key` files it under `hospitals/<name>/`).
    `server_names`: every name the SuperNodes will dial (DNS names or IP addresses); the first is
    also the certificate's common name. `days`: validity of the CA and server certificates.
    `now`: the issue time (default: the current UTC time); certificates start `CLOCK_SKEW` earlier.
    Refuses, naming the files, to overwrite any file of an existing PKI unless `force=True`.
    """
    root = Path(out_dir)
    names = list(server_names) or list(DEFAULT_SERVER_NAMES)
    general_names = [parse_server_name(n) for n in names]
    if len({str(g.value) for g in general_names}) != len(general_names):
        raise PKIError(f"server names {names} contain a duplicate; list each name once")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise PKIError(f"days={days!r}: certificates must be valid for at least 1 day and at most {MAX_DAYS} days "
                       "(a whole number)")
    _refuse_to_overwrite(root, [Path(MANIFEST), CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY], force,
                         "a study PKI is", "Choose another --out, or pass --force to replace them (every hospital "
                         "then needs the new CA)")

    # Everything that can fail on the arguments happens before the first folder exists.
    issued = (now or datetime.now(UTC)).astimezone(UTC)
    start, end = issued - CLOCK_SKEW, issued + timedelta(days=days)
    ca_key = ec.generate_private_key(CURVE())
    ca = _issue_ca(ca_key, study, start, end)
    server_key = ec.generate_private_key(CURVE())
    server = _issue_server(server_key, ca_key, ca, general_names, study, start, end)

    with _creating() as created:
        created.folder(root)
        for sub in (CA_CERT.parent, SERVER_CERT.parent, HOSPITALS_DIR):
            created.folder(root / sub)
        _write_pki(created, root, ca_key, ca, server_key, server, general_names, study, issued, days)
    return StudyPKI(root, root / MANIFEST, root / CA_CERT, root / CA_KEY, root / SERVER_CERT, root / SERVER_KEY,
                    tuple(str(g.value) for g in general_names))


def _write_pki(created: _Created, root: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
               server_key: ec.EllipticCurvePrivateKey, server: x509.Certificate,
               general_names: Sequence[x509.GeneralName], study: str, issued: datetime, days: int) -> None:
    created.file(root / CA_KEY, _pem_private(ca_key), 0o600)
    created.file(root / CA_CERT, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    created.file(root / SERVER_KEY, _pem_private(server_key), 0o600)
    created.file(root / SERVER_CERT, server.public_bytes(serialization.Encoding.PEM), 0o644)

    san = tuple(str(g.value) for g in general_names)
    manifest = {
        "format": 2,
        "study": study,
        "created": _iso(issued),
        "days": days,
        "curve": CURVE.name,
        "ca": {"certificate": str(CA_CERT), "private_key": str(CA_KEY), "subject": ca.subject.rfc4514_string(),
               "sha256_fingerprint": certificate_fingerprint(ca), "not_before": _iso(ca.not_valid_before_utc),
               "not_after": _iso(ca.not_valid_after_utc)},
        "server": {"certificate": str(SERVER_CERT), "private_key": str(SERVER_KEY), "names": list(san),
                   "sha256_fingerprint": certificate_fingerprint(server),
                   "not_before": _iso(server.not_valid_before_utc), "not_after": _iso(server.not_valid_after_utc)},
        "hospitals": "hospitals/<name>/supernode_auth.pub: public keys sent by the hospitals (certs add-hospital)",
    }
    created.file(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), 0o644)


def _openssh_pair(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, comment: str) -> tuple[bytes, bytes]:
    """The OpenSSH private key (no passphrase: Flower loads it with None) and the one-line public key."""
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" {comment}\n".encode()


def openssh_fingerprint(public_line: bytes) -> str:
    """"SHA256:..." of an OpenSSH public key line, as `ssh-keygen -lf` prints it (any key type)."""
    digest = hashlib.sha256(base64.b64decode(public_line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def approval_key_id(hospital: str) -> str:
    """The name under which a hospital's approval key appears in trusted-entities.yaml and in signatures."""
    return f"{hospital}-approval"


def init_hospital_keys(out_dir: str | Path, hospital: str, *, force: bool = False) -> HospitalKeys:
    """Make a hospital's own keys, at the hospital: SuperNode authentication, audit signing, app approval.

    Why here and not at the operator: whoever generates a key can keep a copy. The operator only ever
    receives `supernode_auth.pub`. The audit log gets its own key so that the evidence a hospital
    keeps is not signed with the credential the network sees; the app-approval key (Ed25519, what
    Flower's `--trusted-entities` accepts) signs the app versions this hospital reviewed, and
    `trusted-entities.yaml` names it, so its SuperNode runs only those. Refuses, naming the files, to
    overwrite existing keys unless `force=True`.
    """
    _check_hospital_names([hospital])
    root = Path(out_dir)
    _refuse_to_overwrite(root, [NODE_PRIVATE_KEY, NODE_PUBLIC_KEY, AUDIT_PRIVATE_KEY, AUDIT_PUBLIC_KEY,
                                APPROVAL_PRIVATE_KEY, APPROVAL_PUBLIC_KEY, TRUSTED_ENTITIES, HOSPITAL_MANIFEST],
                         force, "hospital keys are", "(a new SuperNode key must be registered again, a new audit key "
                         "starts a new log). Choose another --out, or pass --force to replace them")
    with _creating() as created:
        _write_hospital_keys(created, root, hospital)
    return _hospital_keys(root, hospital)


def _write_hospital_keys(created: _Created, root: Path, hospital: str) -> None:
    node_key = ec.generate_private_key(CURVE())
    audit_key = ec.generate_private_key(CURVE())
    approval_key = ed25519.Ed25519PrivateKey.generate()
    written: dict[str, tuple[bytes, bytes]] = {
        NODE_PRIVATE_KEY: _openssh_pair(node_key, f"fedhealth-supernode-{hospital}"),
        AUDIT_PRIVATE_KEY: _openssh_pair(audit_key, f"fedhealth-audit-{hospital}"),
        APPROVAL_PRIVATE_KEY: _openssh_pair(approval_key, f"fedhealth-approval-{hospital}"),
    }
    created.folder(root)
    for name, (private, public) in written.items():
        created.file(root / name, private, 0o600)
        created.file(root / f"{name}.pub", public, 0o644)
    key_id = approval_key_id(hospital)
    approval_public = written[APPROVAL_PRIVATE_KEY][1].decode("ascii").strip()
    trusted = (f"# flower-supernode --trusted-entities: the keys whose signature makes an app version runnable here.\n"
               f"# This hospital's own approval key only; add another with `fedhealth app trust`.\n"
               f"{json.dumps(key_id)}: {json.dumps(approval_public)}\n")
    created.file(root / TRUSTED_ENTITIES, trusted.encode(), 0o644)
    fingerprints = {name: openssh_fingerprint(public) for name, (_, public) in written.items()}
    manifest = {"format": 1, "hospital": hospital, "created": _iso(datetime.now(UTC)),
                "supernode_auth": {"public_key": NODE_PUBLIC_KEY, "fingerprint": fingerprints[NODE_PRIVATE_KEY],
                                   "send_to": "the study operator (fedhealth certs add-hospital, then register)"},
                "audit_signing": {"public_key": AUDIT_PUBLIC_KEY, "fingerprint": fingerprints[AUDIT_PRIVATE_KEY],
                                  "send_to": "your auditors (fedhealth audit verify --public-key)"},
                "app_approval": {"public_key": APPROVAL_PUBLIC_KEY, "key_id": key_id,
                                 "fingerprint": fingerprints[APPROVAL_PRIVATE_KEY],
                                 "used_by": TRUSTED_ENTITIES}}
    created.file(root / HOSPITAL_MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), 0o644)


def _hospital_keys(root: Path, hospital: str) -> HospitalKeys:
    """The files `init_hospital_keys` wrote, with their fingerprints read back from the public keys."""
    fingerprints = {name: openssh_fingerprint((root / f"{name}.pub").read_bytes())
                    for name in (NODE_PRIVATE_KEY, AUDIT_PRIVATE_KEY, APPROVAL_PRIVATE_KEY)}
    key_id = approval_key_id(hospital)
    return HospitalKeys(root, hospital,
                        NodeKeyFiles(root / NODE_PRIVATE_KEY, root / NODE_PUBLIC_KEY, fingerprints[NODE_PRIVATE_KEY]),
                        root / AUDIT_PRIVATE_KEY, root / AUDIT_PUBLIC_KEY, fingerprints[AUDIT_PRIVATE_KEY],
                        root / APPROVAL_PRIVATE_KEY, root / APPROVAL_PUBLIC_KEY, fingerprints[APPROVAL_PRIVATE_KEY],
                        key_id, root / TRUSTED_ENTITIES, root / HOSPITAL_MANIFEST)


def add_hospital_public_key(pki_dir: str | Path, hospital: str, public_key: str | Path, *,
                            force: bool = False) -> tuple[Path, str]:
    """File a hospital's SuperNode public key (as it sent it) under `hospitals/<name>/` of the operator's PKI.

    Returns the filed path and the key's fingerprint (read it back to the hospital to confirm). Refuses
    a file holding a private key (the hospital must keep that), a key Flower would refuse, and replacing
    a different key already filed for that hospital unless `force=True`."""
    _check_hospital_names([hospital])
    key = load_node_public_key(public_key)
    line = Path(public_key).read_bytes().strip() + b"\n"
    target = Path(pki_dir) / HOSPITALS_DIR / hospital / NODE_PUBLIC_KEY
    if target.exists() and not force:
        old = load_node_public_key(target)
        if _spki(old) != _spki(key):
            raise PKIError(f"{target}: hospital {hospital!r} already has another public key filed "
                           f"({public_key_fingerprint(old)}, new {public_key_fingerprint(key)}); pass --force to "
                           "replace it (then register the new one and confirm the change with the hospital)")
    with _creating() as created:
        created.folder(target.parent)
        created.file(target, line, 0o644)
    return target, public_key_fingerprint(key)


# ---------------------------------------------------------------- loading, with errors that say what to do


def _read(path: str | Path, what: str) -> bytes:
    p = Path(path).expanduser()
    if not p.exists():
        raise CertificateError(f"{p}: {what} not found; check the path (fedhealth certs init writes the study's "
                               "CA and server files, fedhealth certs hospital-keys a hospital's keys)")
    if not p.is_file():
        raise CertificateError(f"{p}: {what} is not a file; pass the file itself")
    try:
        return p.read_bytes()
    except OSError as err:
        raise CertificateError(f"{p}: {what} cannot be read ({err.strerror}); check its permissions") from None


def load_certificate(path: str | Path, what: str = "certificate") -> x509.Certificate:
    """The first PEM certificate in `path` (a file holding a chain starts with its own certificate)."""
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        hint = " (it holds a private key: did you swap --cert and --key?)" if b"PRIVATE KEY-----" in data else ""
        raise CertificateError(f"{path}: {what} is not a PEM certificate{hint}; expected a file starting "
                               "with -----BEGIN CERTIFICATE-----")
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError as err:
        raise CertificateError(f"{path}: {what} is damaged and cannot be parsed ({err}); re-issue it") from None


def load_tls_private_key(path: str | Path, what: str = "TLS private key") -> PrivateKeyTypes:
    """A PEM private key without passphrase, as the SuperLink's `--ssl-keyfile` needs it."""
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" in data and b"PRIVATE KEY-----" not in data:
        raise CertificateError(f"{path}: {what} holds a certificate, not a private key; did you swap --cert "
                               "and --key?")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(f"{path}: {what} is protected by a passphrase, which Flower cannot supply; "
                               "store it without one (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"{path}: {what} is not a PEM private key (-----BEGIN PRIVATE KEY-----)") from None


def _check_nist_ec(key: PrivateKeyTypes | PublicKeyTypes, path: str | Path, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        raise CertificateError(f"{path}: {what} is a {type(key).__name__.lstrip('_')}; Flower's node authentication "
                               "needs an ECDSA key on a NIST curve (we use P-384): create one with "
                               "fedhealth certs hospital-keys")
    if not isinstance(key.curve, NIST_CURVES):
        raise CertificateError(f"{path}: {what} uses curve {key.curve.name}, which Flower refuses; it needs a "
                               "NIST curve (P-256, P-384, P-521): create one with fedhealth certs hospital-keys")


def load_node_private_key(path: str | Path, what: str = "SuperNode private key") -> ec.EllipticCurvePrivateKey:
    """A SuperNode authentication key, read exactly as `flower-supernode --auth-supernode-private-key` reads it
    (the audit-signing key has the same format; `what` names the key in errors)."""
    data = _read(path, what)
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" not in data:
        hint = (" It is a PEM key: convert it with `ssh-keygen -p -N '' -f FILE` (writes OpenSSH format)"
                if b"-----BEGIN" in data and b"PRIVATE KEY-----" in data else "")
        raise CertificateError(f"{path}: {what} is not in OpenSSH format (-----BEGIN OPENSSH PRIVATE KEY-----), "
                               f"the only format flower-supernode accepts.{hint}")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except TypeError:
        raise CertificateError(f"{path}: {what} is protected by a passphrase; flower-supernode loads it without "
                               "one. Remove it with `ssh-keygen -p -N '' -f FILE` (keep the file mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CertificateError(f"{path}: {what} is damaged and cannot be parsed ({err})") from None
    _check_nist_ec(key, path, what)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_node_public_key(path: str | Path, what: str = "SuperNode public key") -> ec.EllipticCurvePublicKey:
    """A SuperNode public key, read exactly as `flwr supernode register FILE` reads it (one OpenSSH line)."""
    data = _read(path, what)
    if b"PRIVATE KEY-----" in data:
        raise CertificateError(f"{path}: {what} holds a PRIVATE key; pass the .pub file, and never send the "
                               "private key to the federation operator")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"{path}: {what} is not an OpenSSH public key line (ecdsa-sha2-nistp384 AAAA...), "
                               "the format flwr supernode register needs") from None
    _check_nist_ec(key, path, what)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


# ---------------------------------------------------------------- checks run before Flower starts


def _spki(key: PrivateKeyTypes | PublicKeyTypes) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(serialization.Encoding.DER,  # type: ignore[union-attr]
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def check_validity(cert: x509.Certificate, path: str | Path, what: str = "certificate",
                   now: datetime | None = None) -> None:
    """Raise if `now` (UTC, default the current time) is outside the certificate's validity window."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if moment < start:
        raise CertificateError(f"{path}: {what} is not valid yet: valid from {_iso(start)} to {_iso(end)}, "
                               f"now is {_iso(moment)}; check this machine's clock")
    if moment > end:
        raise CertificateError(f"{path}: {what} expired on {_iso(end)} (valid from {_iso(start)}), now is "
                               f"{_iso(moment)}; issue new certificates (fedhealth certs init --force)")


def check_ca_certificate(ca: str | Path, now: datetime | None = None) -> x509.Certificate:
    """The study CA as a SuperNode's `--root-certificates` needs it: a readable, current CA certificate."""
    cert = load_certificate(ca, "CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(f"{ca}: is not a CA certificate (no basicConstraints CA:TRUE); pass the study "
                               f"CA ({CA_CERT}), not the server certificate")
    check_validity(cert, ca, "CA certificate", now)
    return cert


def _covers(name: x509.GeneralName, host: str) -> bool:
    if isinstance(name, x509.IPAddress):
        try:
            return name.value == ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
    if not isinstance(name, x509.DNSName):
        return False
    pattern, wanted = name.value.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):  # a wildcard covers exactly one left-most label (RFC 6125)
        head, _, rest = wanted.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == wanted


def check_server_tls(ca: str | Path, cert: str | Path, key: str | Path, host: str | Sequence[str] | None = None,
                     now: datetime | None = None) -> ServerTLS:
    """Check the SuperLink's TLS files the way a SuperNode will judge them, and say which file is wrong.

    Checks: both certificates readable and currently valid; `ca` is a CA; `cert` is signed by `ca`
    and allowed for TLS servers; `key` belongs to `cert`; each `host` (the name SuperNodes dial,
    without port) is in the certificate's subjectAltName. Raises `CertificateError`.
    """
    ca_cert = check_ca_certificate(ca, now)
    server = load_certificate(cert, "server certificate")
    check_validity(server, cert, "server certificate", now)
    try:
        server.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"{cert}: server certificate is not signed by the CA in {ca} (issuer {server.issuer.rfc4514_string()}, "
            f"CA {ca_cert.subject.rfc4514_string()}); SuperNodes trusting that CA would refuse it. Pass the CA "
            "that issued it, or issue both together with fedhealth certs init") from None
    try:
        usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
            raise CertificateError(f"{cert}: server certificate is not allowed for TLS servers (extendedKeyUsage "
                                   "lacks serverAuth); issue a server certificate")
    except x509.ExtensionNotFound:
        pass  # no EKU means any use
    tls_key = load_tls_private_key(key, "server private key")
    if _spki(tls_key) != _spki(server.public_key()):
        raise CertificateError(f"{key}: this private key does not belong to the server certificate {cert} "
                               "(their public keys differ); pass the key issued with that certificate")
    try:
        names = list(server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []
    shown = tuple(str(n.value) for n in names if isinstance(n, x509.DNSName | x509.IPAddress))
    for wanted in [host] if isinstance(host, str) else list(host or []):
        if not any(_covers(n, wanted) for n in names):
            raise CertificateError(
                f"{cert}: server certificate does not cover host {wanted!r} (its names: {', '.join(shown) or 'none'}); "
                f"SuperNodes dialling {wanted!r} would fail the TLS handshake. Dial one of its names, or re-issue "
                f"with fedhealth certs init --server-name {wanted}")
    return ServerTLS(shown, server.not_valid_after_utc, certificate_fingerprint(server))


def check_node_keypair(private: str | Path, public: str | Path) -> str:
    """Check a hospital's SuperNode key pair as Flower will load it; return the key's fingerprint.

    The private key is what `flower-supernode --auth-supernode-private-key` reads; the public key
    is what the operator registered (`flwr supernode register`). If they differ, the SuperLink
    refuses the node (exit 305) long after launch; this says so before."""
    private_key = load_node_private_key(private)
    public_key = load_node_public_key(public)
    if _spki(private_key) != _spki(public_key):
        raise CertificateError(
            f"{private}: this SuperNode private key does not match the public key {public} "
            f"({public_key_fingerprint(private_key)} vs {public_key_fingerprint(public_key)}); the SuperLink would "
            "refuse the node. Register the .pub file made with this private key")
    return public_key_fingerprint(public_key)
