"""Which app versions a hospital runs: FAB review, Ed25519 approval signatures, trusted entities, an offline registry.

Why: a hospital's SuperNode executes whatever ClientApp code the SuperLink sends it, next to the
patient data. Flower 1.41's SuperNode can refuse code it did not approve: started with
`--trusted-entities FILE` (a YAML mapping `key id -> "ssh-ed25519 AAAA..."`), it runs a run's app
only if the FAB (Flower App Bundle, a zip) carries a signature by one of those keys over its hash
(`flwr/supernode/start_client_internal.py`, `_pull_and_store_message` and `_verify_fab`). The signed
message is Flower's `create_message_to_sign(sha256(fab), signed_at)`: the timestamp as 8 big-endian
bytes followed by the FAB's 32-byte SHA-256 digest; the signature travels base64url-encoded without
padding (`flwr/supercore/primitives/asymmetric_ed25519.py`). A FAB with no signatures at all (what a
local `flwr run .` submits) is refused before any app process starts.

Where signatures come from, in Flower 1.41: only from "Flower Hub". The SuperLink attaches them when
the run names an app as `@account/app==x.y.z`: it POSTs `{"app_id", "app_version", "flwr_version"}`
to `$FLWR_SUPERGRID_API_URL/hub/fetch-fab` and reads `{"fab_url", "verifications": [{"public_key_id",
"signature", "signed_at"}, ...]}` (`flwr/superlink/servicer/control/control_handlers.py`,
`_get_remote_fab`, `_format_verification`; `flwr/supercore/utils.py`, `request_download_link`). The
URL is an environment variable (`flwr/supercore/constant.py`), so `serve_registry` below stands in
for the Hub offline: the operator publishes the FAB there with the hospitals' signature records.
The registry is not trusted: a hospital's SuperNode checks the signature over the bytes it received.

The flow: the publisher builds the FAB (`build_fab`, Flower's own builder, deterministic); each
hospital reviews it (`summarize_fab`: hash, id, version, every file with its hash, optionally the
files changed since the version it approved last), then signs it with its own approval key
(`sign_fab`), and its `trusted-entities.yaml` lists that key: its SuperNode runs exactly the
versions it signed. A hospital may instead trust a publisher's key (`trust_key`): then it runs every
version the publisher signs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import threading
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedhealth.durable import PathEscapeError, inside
from fedhealth.errors import TrustError
from fedhealth.security.certs import _write_file, openssh_fingerprint
from fedhealth.study.names import name_problem, shown

_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
# What a FAB's version may hold at all (it becomes the file name `<version>.fab`): digits, letters, '.', '+', '-',
# starting with a digit or letter; publishing then asks for Flower's x.y.z.
_VERSION_CHARS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]{0,63}$")


class AppTrustError(TrustError, ValueError):
    """A FAB, signature, key or trusted-entities file that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class FabFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FabSummary:
    """What a reviewer needs to decide: which bytes exactly (sha256), what app, and every file in it."""

    sha256: str
    app_id: str  # "@publisher/name", the id Flower checks against the run's app spec
    version: str
    size: int
    files: tuple[FabFile, ...]


# ---------------------------------------------------------------- building and reading FABs


def build_fab(project: str | Path) -> bytes:
    """The FAB `flwr run PROJECT` would submit, built by Flower's own builder (fixed zip dates: the same
    files give the same bytes, so a hospital can rebuild it from the source it reviewed and compare)."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(Path(project))


def fab_sha256(data: bytes) -> str:
    """The FAB's hash as Flower names it (`Fab.hash_str`, hex SHA-256 of the whole file)."""
    return hashlib.sha256(data).hexdigest()


def summarize_fab(data: bytes) -> FabSummary:
    """Hash, app id, version and file list of a FAB. Raises AppTrustError for a file that is not a FAB."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            files = tuple(FabFile(i.filename, i.file_size, hashlib.sha256(archive.read(i)).hexdigest())
                          for i in archive.infolist() if not i.is_dir())
            config = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise AppTrustError(f"not a Flower App Bundle (a zip with pyproject.toml): {err}") from None
    try:
        name = config["project"]["name"]
        version = config["project"]["version"]
        publisher = config["tool"]["flwr"]["app"]["publisher"]
    except (KeyError, TypeError) as err:
        raise AppTrustError(f"the FAB's pyproject.toml lacks {err}: Flower needs project name, version and "
                            "tool.flwr.app.publisher") from None
    _check_fab_names(publisher, name, version)
    return FabSummary(fab_sha256(data), f"@{publisher}/{name}", str(version), len(data), files)


def _check_fab_names(publisher: object, name: object, version: object) -> None:
    """A FAB's publisher, name and version become folders and a file name in a registry
    (`apps/<publisher>/<name>/<version>.fab`) and what a reviewer reads: the FAB is the publisher's word, so
    each is held to the rule for names (fedhealth.study.names) before anything is built from it."""
    for field, value in (("tool.flwr.app.publisher", publisher), ("project.name", name)):
        problem = name_problem(value)
        if problem is not None:
            raise AppTrustError(f"the FAB's pyproject.toml {field} {shown(value)}: {problem}")
    if not isinstance(version, str) or not _VERSION_CHARS.match(version):
        raise AppTrustError(f"the FAB's pyproject.toml project.version {shown(version)}: use digits, letters, "
                            "'.', '+' and '-' (at most 64, starting with a digit or letter), e.g. 1.0.0")


def _registry_path(root: Path, *parts: str) -> Path:
    """`root/parts...`, refused (AppTrustError) if it would lead outside the registry (a link inside it)."""
    try:
        return inside(root, *parts)
    except PathEscapeError as err:
        raise AppTrustError(str(err)) from None


def diff_fabs(old: FabSummary, new: FabSummary) -> dict[str, list[str]]:
    """Files added, removed and changed from `old` to `new`: what a reviewer of a new version must read."""
    before = {f.path: f.sha256 for f in old.files}
    after = {f.path: f.sha256 for f in new.files}
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": sorted(p for p in set(before) & set(after) if before[p] != after[p])}


def read_fab(path: str | Path) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise AppTrustError(f"{p}: FAB not found (build one with `fedhealth app build`)") from None
    except OSError as err:
        raise AppTrustError(f"{p}: FAB cannot be read ({err.strerror})") from None


# ---------------------------------------------------------------- keys and trusted entities


def load_approval_private_key(path: str | Path) -> ed25519.Ed25519PrivateKey:
    """An Ed25519 OpenSSH private key (`app_approval` of `fedhealth certs hospital-keys`, or a publisher's)."""
    p = Path(path)
    try:
        key = serialization.load_ssh_private_key(p.read_bytes(), password=None)
    except FileNotFoundError:
        raise AppTrustError(f"{p}: approval key not found (fedhealth certs hospital-keys writes app_approval)") \
            from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise AppTrustError(f"{p}: not an unencrypted OpenSSH private key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise AppTrustError(f"{p}: is a {type(key).__name__.lstrip('_')}, but Flower's --trusted-entities accepts "
                            "only Ed25519 keys; use app_approval from fedhealth certs hospital-keys")
    return key


def _public_line(key: ed25519.Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode("ascii")


def load_trusted_entities(path: str | Path) -> dict[str, ed25519.Ed25519PublicKey]:
    """The trusted-entities file, checked as flower-supernode checks it (a YAML mapping of Ed25519 keys),
    and refused when empty: an empty file would make Flower skip verification altogether."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AppTrustError(f"{p}: trusted-entities file not found (fedhealth certs hospital-keys writes "
                            "trusted-entities.yaml)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise AppTrustError(f"{p}: trusted-entities file cannot be read as YAML ({err})") from None
    if not isinstance(data, dict) or not data:
        raise AppTrustError(f"{p}: trusted-entities file names no key; flower-supernode then verifies nothing "
                            "and runs any app. Add this hospital's approval key (fedhealth certs hospital-keys)")
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    for key_id, line in data.items():
        try:
            key = serialization.load_ssh_public_key(str(line).encode("utf-8"))
        except (ValueError, UnsupportedAlgorithm):
            raise AppTrustError(f"{p}: entry {key_id!r} is not an OpenSSH public key line") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise AppTrustError(f"{p}: entry {key_id!r} is not an Ed25519 key; flower-supernode refuses it")
        keys[str(key_id)] = key
    return keys


def trust_key(trusted_entities: str | Path, key_id: str, public_key: str | Path, *, replace: bool = False) -> str:
    """Add `key_id: <public key>` to a trusted-entities file (created if absent); return the key's fingerprint.

    Refuses to change the key under an existing id unless `replace`."""
    if not _KEY_ID.match(key_id):
        raise AppTrustError(f"key id {key_id!r}: use 1-128 letters, digits and _ . : @ / -")
    try:
        key = serialization.load_ssh_public_key(Path(public_key).read_bytes().strip())
    except FileNotFoundError:
        raise AppTrustError(f"{public_key}: public key not found") from None
    except (ValueError, UnsupportedAlgorithm):
        raise AppTrustError(f"{public_key}: not an OpenSSH public key line (ssh-ed25519 AAAA...)") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise AppTrustError(f"{public_key}: not an Ed25519 key; flower-supernode --trusted-entities accepts only "
                            "Ed25519")
    path = Path(trusted_entities)
    current = load_trusted_entities(path) if path.exists() else {}
    if key_id in current and _public_line(current[key_id]) != _public_line(key) and not replace:
        raise AppTrustError(f"{path}: {key_id!r} already names another key; pass --replace to change it (every "
                            "version signed by the old key stops running here)")
    current[key_id] = key
    lines = ["# flower-supernode --trusted-entities: the keys whose signature makes an app version runnable here."]
    lines += [f"{json.dumps(k)}: {json.dumps(_public_line(v))}" for k, v in current.items()]
    _write_file(path, ("\n".join(lines) + "\n").encode(), 0o644)
    return openssh_fingerprint(_public_line(key).encode())


# ---------------------------------------------------------------- signatures, exactly as Flower checks them


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_fab(data: bytes, private_key: str | Path | ed25519.Ed25519PrivateKey, key_id: str,
             signed_at: int | None = None) -> dict[str, Any]:
    """A signature record over the FAB: `public_key_id`, `signature`, `signed_at` are what Flower's Hub
    returns and `_verify_fab` checks; `fab_sha256`, `app_id`, `version` say what was approved."""
    if not _KEY_ID.match(key_id):
        raise AppTrustError(f"key id {key_id!r}: use 1-128 letters, digits and _ . : @ / -")
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

    key = load_approval_private_key(private_key) if isinstance(private_key, str | Path) else private_key
    summary = summarize_fab(data)
    moment = int(datetime.now(UTC).timestamp()) if signed_at is None else int(signed_at)
    signature = key.sign(create_message_to_sign(hashlib.sha256(data).digest(), moment))
    return {"public_key_id": key_id, "signature": _b64url(signature), "signed_at": moment,
            "fab_sha256": summary.sha256, "app_id": summary.app_id, "version": summary.version,
            "signer_fingerprint": openssh_fingerprint(_public_line(key.public_key()).encode())}


def verifications_for_flower(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """`Fab.verifications` as Flower's SuperLink builds it from Hub records (`_format_verification`)."""
    out = {str(r["public_key_id"]): json.dumps({"signature": r["signature"], "signed_at": r["signed_at"]})
           for r in records}
    out["valid_license"] = "Valid"
    return out


def verify_with_flower(data: bytes, records: Sequence[Mapping[str, Any]], trusted_entities: str | Path) -> bool:
    """Whether flower-supernode would run this FAB with these records: Flower's own `_verify_fab`."""
    import yaml
    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    load_trusted_entities(trusted_entities)  # our checks first: a bad file is an error, not "not verified"
    trusted = yaml.safe_load(Path(trusted_entities).read_text(encoding="utf-8"))
    try:
        return _verify_fab(Fab(fab_sha256(data), data, verifications_for_flower(records)), trusted)
    except (ValueError, TypeError, binascii.Error):
        return False


def check_signature(data: bytes, record: Mapping[str, Any], public_key: ed25519.Ed25519PublicKey) -> None:
    """Raise AppTrustError unless `record` is a valid signature by `public_key` over exactly this FAB."""
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign, decode_base64url

    try:
        public_key.verify(decode_base64url(str(record["signature"])),
                          create_message_to_sign(hashlib.sha256(data).digest(), int(record["signed_at"])))
    except (KeyError, ValueError, TypeError, InvalidSignature, binascii.Error):
        raise AppTrustError(f"signature {record.get('public_key_id')!r} does not verify over this FAB "
                            f"({fab_sha256(data)[:16]}...): it signs other bytes, or another key made it") from None


# ---------------------------------------------------------------- an offline stand-in for Flower Hub


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


class Registry:
    """A folder of published FABs and their signature records, laid out as
    `apps/<publisher>/<name>/<version>.fab` and `signatures/<fab sha256>/<key id>.json`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def publish(self, data: bytes, *, replace: bool = False) -> tuple[FabSummary, Path]:
        summary = summarize_fab(data)
        if not _VERSION.match(summary.version):
            raise AppTrustError(f"version {summary.version!r}: Flower's app specs need x.y.z (digits only)")
        publisher, name = summary.app_id[1:].split("/", 1)
        target = _registry_path(self.root, "apps", publisher, name, f"{summary.version}.fab")
        if target.exists() and target.read_bytes() != data and not replace:
            raise AppTrustError(f"{target}: {summary.app_id}=={summary.version} is already published with other "
                                "bytes; publish a new version (hospitals approved the old bytes), or --replace")
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_file(target, data, 0o644)
        return summary, target

    def add_signature(self, record: Mapping[str, Any]) -> Path:
        """File a signature record; it must verify over a published FAB (checked against the key it names is
        impossible here, since the registry does not know the keys: each SuperNode does that)."""
        sha = str(record.get("fab_sha256", ""))
        key_id = str(record.get("public_key_id", ""))
        if not re.fullmatch(r"[0-9a-f]{64}", sha) or not _KEY_ID.match(key_id):
            raise AppTrustError("signature record lacks fab_sha256 or public_key_id (made by fedhealth app approve?)")
        if self.find(sha) is None:
            raise AppTrustError(f"no published FAB has sha256 {sha}; publish it first (fedhealth app publish)")
        target = _registry_path(self.root, "signatures", sha, f"{key_id.replace('/', '_')}.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_file(target, (json.dumps(dict(record), indent=2) + "\n").encode(), 0o644)
        return target

    def find(self, sha: str) -> Path | None:
        for path in (self.root / "apps").glob("*/*/*.fab"):
            if fab_sha256(path.read_bytes()) == sha:
                return path
        return None

    def lookup(self, app_id: str, version: str | None) -> tuple[Path, list[dict[str, Any]]] | None:
        """The FAB for `@publisher/name` (`version` None: the latest) and its signature records."""
        if not isinstance(app_id, str) or not app_id.startswith("@") or app_id.count("/") != 1:
            return None
        publisher, name = app_id[1:].split("/", 1)
        if name_problem(publisher) or name_problem(name) or (version is not None and (
                not isinstance(version, str) or not _VERSION.match(version))):
            return None  # a request's names are held to the rule the registry's own paths were made by
        try:
            folder = _registry_path(self.root, "apps", publisher, name)
            versions = sorted((p.stem for p in folder.glob("*.fab") if _VERSION.match(p.stem)), key=_version_key)
            if not versions or (version is not None and version not in versions):
                return None
            path = _registry_path(folder, f"{version or versions[-1]}.fab")
            sha = fab_sha256(path.read_bytes())
            signatures = _registry_path(self.root, "signatures", sha)
        except AppTrustError:
            return None
        records = [json.loads(p.read_text()) for p in sorted(signatures.glob("*.json"))]
        return path, records


def serve_registry(root: str | Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve `Registry(root)` the way Flower's SuperLink fetches apps from the Hub (`POST /hub/fetch-fab`,
    then `GET` of the returned `fab_url`). Point the SuperLink at it with
    `FLWR_SUPERGRID_API_URL=http://HOST:PORT`. Returns the started server (`server_address` has the port);
    call `serve_forever()` or run it in a thread."""
    registry = Registry(root)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") != "/hub/fetch-fab":
                self._send(404, b'{"detail": "not found"}')
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                found = registry.lookup(str(body.get("app_id")), body.get("app_version"))
            except (ValueError, TypeError):
                found = None
            if found is None:
                self._send(404, json.dumps({"detail": f"{body.get('app_id')} not found in this registry"}).encode())
                return
            path, records = found
            base = f"http://{self.headers.get('Host', f'{host}:{port}')}"
            url = f"{base}/fab/{path.relative_to(registry.root / 'apps').as_posix()}"
            verifications = [{"public_key_id": r["public_key_id"], "signature": r["signature"],
                              "signed_at": r["signed_at"]} for r in records]
            self._send(200, json.dumps({"fab_url": url, "verifications": verifications}).encode())

        def do_GET(self) -> None:  # noqa: N802
            rel = self.path.removeprefix("/fab/")
            try:
                path = _registry_path(registry.root / "apps", *rel.split("/"))
            except AppTrustError:
                path = None
            if rel == self.path or path is None or not path.is_file() or path.suffix != ".fab":
                self._send(404, b'{"detail": "not found"}')
                return
            self._send(200, path.read_bytes(), "application/octet-stream")

        def log_message(self, fmt: str, *args: Any) -> None:
            print(f"registry: {self.address_string()} {fmt % args}", flush=True)

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


__all__ = ["AppTrustError", "FabSummary", "Registry", "build_fab", "check_signature", "diff_fabs",
           "load_trusted_entities", "serve_registry", "sign_fab", "summarize_fab", "trust_key",
           "verify_with_flower"]
