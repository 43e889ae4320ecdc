"""App approval: signatures Flower's own SuperNode code accepts, the offline registry as Flower's SuperLink reads it,
and the hospital-side checks (trusted entities, separate audit key). Fast: no Flower process is started here
(tests/integration/test_deployment.py runs the same flow with a real SuperLink and SuperNodes)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from typer.testing import CliRunner

from fedhealth.cli import app
from fedhealth.deployment.app_trust import (
    AppTrustError,
    Registry,
    build_fab,
    load_trusted_entities,
    serve_in_thread,
    serve_registry,
    sign_fab,
    summarize_fab,
    trust_key,
    verifications_for_flower,
    verify_with_flower,
)
from fedhealth.deployment.processes import hospital_problems
from fedhealth.security.certs import HospitalKeys, init_hospital_keys, init_study_pki
from tests.support import ROOT


@pytest.fixture(scope="module")
def fab() -> bytes:
    return build_fab(ROOT)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> HospitalKeys:
    return init_hospital_keys(tmp_path_factory.mktemp("keys") / "north", "north")


def _flower_verifies(data: bytes, verifications: dict[str, str], trusted: Path) -> bool:
    """flower-supernode's decision, with its own code: `valid_license` first, then `_verify_fab`."""
    import yaml
    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    from fedhealth.deployment.app_trust import fab_sha256

    if not verifications.get("valid_license", ""):
        return False
    return _verify_fab(Fab(fab_sha256(data), data, verifications), yaml.safe_load(trusted.read_text()))


def test_the_build_is_deterministic_and_reviewable(fab: bytes) -> None:
    assert build_fab(ROOT) == fab  # a hospital can rebuild from the source it reviewed and compare hashes
    summary = summarize_fab(fab)
    assert summary.app_id == "@fedhealth/fedhealth" and summary.version
    paths = {f.path for f in summary.files}
    assert {"pyproject.toml", "clients/app.py", "server/app.py"} <= paths
    assert not [p for p in paths if p.endswith((".csv", ".parquet", ".jsonl")) or "supernode_auth" in p]


def test_an_approval_is_exactly_what_flowers_supernode_accepts(fab: bytes, keys: HospitalKeys) -> None:
    record = sign_fab(fab, keys.approval_private_key, keys.approval_key_id)
    assert _flower_verifies(fab, verifications_for_flower([record]), keys.trusted_entities)
    assert verify_with_flower(fab, [record], keys.trusted_entities)
    # the adversary: other bytes under the same signature, a signature by another key under this hospital's id,
    # and no signature at all (what `flwr run .` submits)
    tampered = fab[:-1] + bytes([fab[-1] ^ 1])
    assert not _flower_verifies(tampered, verifications_for_flower([record]), keys.trusted_entities)
    forged = sign_fab(fab, ed25519.Ed25519PrivateKey.generate(), keys.approval_key_id)
    assert not _flower_verifies(fab, verifications_for_flower([forged]), keys.trusted_entities)
    assert not _flower_verifies(fab, {}, keys.trusted_entities)


def test_the_registry_speaks_flowers_hub_protocol(fab: bytes, keys: HospitalKeys, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The SuperLink's own code (`_get_remote_fab`, what `flwr run @app==x.y.z` runs) fetches the FAB and the
    hospital's signature from our registry, and the SuperNode's check accepts what it built."""
    from flwr.superlink.servicer.control import control_handlers

    registry = Registry(tmp_path / "registry")
    summary, _ = registry.publish(fab)
    registry.add_signature(sign_fab(fab, keys.approval_private_key, keys.approval_key_id))
    server = serve_registry(registry.root)
    serve_in_thread(server)
    try:
        monkeypatch.setattr(control_handlers, "FLWR_SUPERGRID_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
        fetched, verifications, _ = control_handlers._get_remote_fab(None, f"{summary.app_id}=={summary.version}")
        assert fetched == fab
        assert _flower_verifies(fetched, verifications, keys.trusted_entities)
        latest, _, _ = control_handlers._get_remote_fab(None, summary.app_id)
        assert latest == fab
        with pytest.raises(Exception, match="FAB download link"):
            control_handlers._get_remote_fab(None, f"{summary.app_id}==9.9.9")
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(AppTrustError, match="already published with other bytes"):
        registry.publish(_rebuilt_with_change(fab))


def _rebuilt_with_change(fab: bytes) -> bytes:
    """The same app id and version with one file changed: what an operator would need to slip in."""
    from flwr.cli.build import build_fab_from_files
    from flwr.cli.utils import collect_files

    files: dict[str, bytes | Path] = dict(collect_files(ROOT))
    files["clients/app.py"] = (ROOT / "clients" / "app.py").read_bytes() + b"\n# changed\n"
    return build_fab_from_files(files)[0]


def test_trusted_entities_are_checked_as_flower_needs_them(keys: HospitalKeys, tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(AppTrustError, match="names no key; flower-supernode then verifies nothing"):
        load_trusted_entities(empty)
    trusted = tmp_path / "trusted.yaml"
    trust_key(trusted, "publisher", keys.approval_public_key)
    other = init_hospital_keys(tmp_path / "other", "other")
    with pytest.raises(AppTrustError, match="already names another key"):
        trust_key(trusted, "publisher", other.approval_public_key)
    with pytest.raises(AppTrustError, match="not an Ed25519 key"):
        trust_key(trusted, "node", keys.node.public_key)
    assert list(load_trusted_entities(trusted)) == ["publisher"]


def test_approve_signs_only_the_reviewed_bytes(fab: bytes, keys: HospitalKeys, tmp_path: Path) -> None:
    path = tmp_path / "app.fab"
    path.write_bytes(fab)
    wrong = CliRunner().invoke(app, ["app", "approve", str(path), "--key", str(keys.approval_private_key),
                                     "--hospital", "north", "--sha256", "0" * 64, "--out", str(tmp_path / "s.json")])
    assert wrong.exit_code == 1 and "not the reviewed" in wrong.stderr and not (tmp_path / "s.json").exists()
    review = CliRunner().invoke(app, ["app", "review", str(path), "--json"])
    sha = json.loads(review.stdout)["sha256"]
    ok = CliRunner().invoke(app, ["app", "approve", str(path), "--key", str(keys.approval_private_key),
                                  "--hospital", "north", "--sha256", sha, "--out", str(tmp_path / "s.json")])
    assert ok.exit_code == 0, ok.output
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["fab_sha256"] == sha and record["public_key_id"] == "north-approval"
    assert verify_with_flower(fab, [record], keys.trusted_entities)


def test_the_launcher_names_what_flower_refuses(fab: bytes, keys: HospitalKeys) -> None:
    import yaml
    from flwr.supercore.fab import Fab

    from fedhealth.deployment.supernode import app_verdict

    trusted = yaml.safe_load(keys.trusted_entities.read_text())
    unsigned = app_verdict(Fab("h", fab, {}), trusted)
    assert unsigned["decision"].startswith("refused: the FAB carries no signature") and unsigned["app_id"]
    forged = sign_fab(fab, ed25519.Ed25519PrivateKey.generate(), keys.approval_key_id)
    refused = app_verdict(Fab("h", fab, verifications_for_flower([forged])), trusted)
    assert refused["decision"].startswith("refused: signed by north-approval") and refused["verified_by"] == []
    good = sign_fab(fab, keys.approval_private_key, keys.approval_key_id)
    approved = app_verdict(Fab("h", fab, verifications_for_flower([good])), trusted)
    assert approved["decision"] == "approved" and approved["verified_by"] == ["north-approval"]


def test_a_hospital_does_not_start_with_its_node_key_as_audit_key_or_without_trusted_keys(keys: HospitalKeys,
                                                                                           tmp_path: Path) -> None:
    pki = init_study_pki(tmp_path / "pki")
    ok = hospital_problems(pki.ca_cert, audit_key=keys.audit_private_key, node_key=keys.node.private_key,
                           trusted_entities=keys.trusted_entities)
    assert ok == []
    same = hospital_problems(pki.ca_cert, public_key=keys.node.public_key, audit_key=keys.node.private_key,
                             node_key=keys.node.private_key, trusted_entities=keys.trusted_entities)
    assert any("the audit signing key is the SuperNode key" in p for p in same), same
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    assert any("names no key" in p for p in hospital_problems(pki.ca_cert, trusted_entities=empty))


def test_the_launcher_says_why_the_superlink_refused_to_activate_the_node(keys: HospitalKeys, monkeypatch,
                                                                          capsys) -> None:
    """Flower's exit `[code: 2004] Failed to activate SuperNode.` means an unregistered key or a node still online;
    the hospital sees both causes, its key's fingerprint and how to tell them apart. Another exit stays Flower's."""
    from flwr.common.logger import FLOWER_LOGGER
    from flwr.supernode import start_client_internal as sci

    from fedhealth.deployment import supernode
    from fedhealth.security.certs import load_node_private_key, public_key_fingerprint

    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")  # the module (its package re-exports the
    monkeypatch.setattr(sci, "_pull_and_store_message", sci._pull_and_store_message)  # function); restored after
    monkeypatch.setenv(supernode.HOSPITAL_ENV, "north")
    monkeypatch.delenv(supernode.APP_LOG_ENV, raising=False)

    def exits_with(message: str):
        def fake_supernode() -> None:
            FLOWER_LOGGER.error("Exit Code: 305\nFailed to initialize the connection to the SuperLink.\n%s", message)
            raise SystemExit(1)
        return fake_supernode

    args = ["--superlink", "10.0.0.1:9093", "--auth-supernode-private-key", str(keys.node.private_key)]
    monkeypatch.setattr(cli, "flower_supernode", exits_with("[code: 2004] Failed to activate SuperNode."))
    with pytest.raises(SystemExit) as exited:
        supernode.launch(args)
    assert exited.value.code == 1  # Flower's own exit status is kept
    err = capsys.readouterr().err
    fingerprint = public_key_fingerprint(load_node_private_key(keys.node.private_key))
    assert "error: hospital north: the SuperLink at 10.0.0.1:9093 refused to activate this SuperNode" in err
    assert f"its key is not registered there: ask the operator to check that the key with fingerprint {fingerprint}" \
        in err
    assert "the SuperLink still counts this node online: it stopped less than 60 s ago" in err
    assert "start it again after 60 s; refused again means cause 1" in err
    monkeypatch.setattr(cli, "flower_supernode", exits_with("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify"))
    with pytest.raises(SystemExit):
        supernode.launch(args)
    assert "refused to activate" not in capsys.readouterr().err


def test_the_registry_stops_on_sigterm_as_a_containers_first_process_must(tmp_path: Path) -> None:
    """`docker stop` / compose down send SIGTERM; a first process with no handler ignores it and is killed
    after the timeout. `fedhealth app serve` stops on it at once, exit 0, its port closed."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "registry").mkdir()
    registry = str(tmp_path / "registry")
    command = [sys.executable, "-m", "fedhealth.cli", "app", "serve", "--dir", registry, "--port", "0"]
    served = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        assert "registry" in served.stdout.readline()  # serving
        started = time.monotonic()
        served.send_signal(signal.SIGTERM)
        assert served.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        served.kill()
        served.wait()
