"""`fedhealth deploy`: the commands server/deploy.sh and clients/deploy.sh run (one CLI: no `python -m
fedhealth.deployment.X` entry points). Options, output and exit codes; the SuperNode launcher's arguments
reach flower-supernode verbatim. No Flower process is started here (tests/test_deployment.py does that)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedhealth.cli import app
from fedhealth.deployment.processes import DEFAULT_CONNECTION
from tests.support import ROOT  # noqa: E402

COMMANDS = ("connection", "preflight", "node-config", "gateway", "supernode", "superexec", "demo")


def _run(*args: str, **kwargs):
    return CliRunner().invoke(app, ["deploy", *args], **kwargs)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "fedhealth.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_deploy_help_lists_the_five_commands() -> None:
    proc = _cli("deploy", "--help")  # also: `python -m fedhealth.cli` is a working entry point
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^│ (\S+) ", proc.stdout, re.MULTILINE)
    assert set(COMMANDS) <= set(listed), proc.stdout
    assert re.search(r"^│ deploy ", CliRunner().invoke(app, ["--help"]).stdout, re.MULTILINE)


def test_the_fedhealth_command_imports_no_flower_and_no_crypto() -> None:
    """The heavy libraries load inside the commands that need them, so `fedhealth --help` stays quick."""
    code = ("import sys, fedhealth.cli; print(' '.join(m for m in ('flwr', 'cryptography', 'uvicorn', 'httpx', "
            "'starlette', 'tomli_w') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_node_config_prints_flowers_text() -> None:
    result = _run("node-config", "a=b", "c=d", "e=")
    assert result.exit_code == 0, result.output
    assert result.stdout == "a='b' c='d'\n"  # an empty value is left out
    assert _run("node-config", "path=/x=y").stdout == "path='/x=y'\n"  # split at the first '='
    assert _run("node-config").stdout == "\n"


def test_node_config_refuses_what_flower_cannot_carry() -> None:
    quote = _run("node-config", "a=b", "data-file=/site/it's.csv")
    assert quote.exit_code == 2 and quote.stdout == ""
    assert "error: node config data-file:" in quote.stderr and "contains a quote or a line break" in quote.stderr
    assert _run("node-config", "a=line\nbreak").exit_code == 2
    bare = _run("node-config", "a=b", "nonsense")
    assert bare.exit_code == 2 and "'nonsense': give KEY=VALUE" in bare.stderr


def test_connection_writes_the_flwr_cli_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.crt"
    result = _run("connection", "--address", "127.0.0.1:9092", "--ca", str(ca), "--flwr-home", str(tmp_path / "h"))
    assert result.exit_code == 0, result.output
    target = tmp_path / "h" / "config.toml"
    assert result.stdout == (f"{target}: [superlink.{DEFAULT_CONNECTION}] address = 127.0.0.1:9092, "
                             f"root-certificates = {ca.resolve()}\n")
    section = tomllib.loads(target.read_text())["superlink"][DEFAULT_CONNECTION]
    assert section == {"address": "127.0.0.1:9092", "root-certificates": str(ca.resolve())}

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "env-home"))  # the default: $FLWR_HOME
    named = _run("connection", "--address", "link:1", "--ca", str(ca), "--name", "other")
    assert named.exit_code == 0, named.output
    assert tomllib.loads((tmp_path / "env-home" / "config.toml").read_text())["superlink"]["other"]["address"] == \
        "link:1"
    assert _run("connection", "--address", "link:1").exit_code == 2  # --ca is required


def test_preflight_exit_codes(tmp_path: Path) -> None:
    from fedhealth.security.certs import init_hospital_keys, init_study_pki

    pki = init_study_pki(tmp_path / "pki")
    keys = init_hospital_keys(tmp_path / "keys", "a")
    args = ["--audit-key", str(keys.audit_private_key), "--node-key", str(keys.node.private_key),
            "--trusted-entities", str(keys.trusted_entities), "--ledger-dir", str(tmp_path / "ledger"),
            "--audit-log", str(tmp_path / "audit" / "a.jsonl")]
    ok = _run("preflight", "--ca", str(pki.ca_cert), *args)
    assert ok.exit_code == 0 and ok.stdout == "" and ok.stderr == "", ok.output
    assert (tmp_path / "ledger").is_dir() and (tmp_path / "audit").is_dir()

    bad = _run("preflight", "--ca", str(tmp_path / "none.crt"), "--audit-key", str(keys.node.private_key),
               "--public-key", str(keys.node.public_key), "--node-key", str(keys.node.private_key))
    assert bad.exit_code == 1 and bad.stdout == ""
    lines = bad.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), bad.stderr
    assert "CA certificate not found" in lines[0] and "is the SuperNode key" in lines[1]
    assert _run("preflight").exit_code == 2  # --ca is required


def test_gateway_refuses_bad_addresses_before_listening() -> None:
    common = ["--ca", "ca.crt", "--cert", "server.crt", "--key", "server.key"]
    bad = _run("gateway", "--listen", "nowhere", "--superlink", "127.0.0.1:9092", *common)
    assert bad.exit_code == 1 and "error: 'nowhere': give HOST:PORT" in bad.stderr
    loop = _run("gateway", "--listen", "127.0.0.1:9092", "--superlink", "127.0.0.1:9092", *common)
    assert loop.exit_code == 1 and "error: --listen and --superlink are the same address" in loop.stderr
    assert _run("gateway", "--listen", "0.0.0.0:9093").exit_code == 2  # the others are required


@pytest.fixture
def fake_supernode(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """flower-supernode replaced by a recorder of the sys.argv it would parse; Flower's internals restored after."""
    from flwr.supernode import start_client_internal as sci

    entry = importlib.import_module("flwr.supernode.cli.flower_supernode")
    calls: list[list[str]] = []

    def flower_supernode() -> None:
        calls.append(list(sys.argv))
        raise SystemExit(3)  # its exit status is the command's

    monkeypatch.setattr(entry, "flower_supernode", flower_supernode)
    monkeypatch.setattr(sci, "_pull_and_store_message", sci._pull_and_store_message)  # undo install()
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.delenv("FEDHEALTH_APP_LOG", raising=False)
    return calls


def test_supernode_passes_every_argument_unchanged(fake_supernode: list[list[str]]) -> None:
    args = ["--superlink", "127.0.0.1:9093", "--root-certificates", "/pki/ca.crt", "--node-config",
            "hospital-name='a' data-file='/site/a b.csv'", "--port=9094", "-x", "positional", "--help", "-h",
            "--", "--after-dashes", ""]
    result = _run("supernode", *args)
    assert result.exit_code == 3, result.output
    assert fake_supernode == [["flower-supernode", *args]]
    from flwr.supernode import start_client_internal as sci

    assert getattr(sci._pull_and_store_message, "_fedhealth_wrapped", False)  # the app record is installed

    assert _run("supernode").exit_code == 3 and fake_supernode[-1] == ["flower-supernode"]


def test_supernode_refuses_another_flower(fake_supernode: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr

    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    result = _run("supernode", "--superlink", "127.0.0.1:9093")
    assert result.exit_code == 1 and fake_supernode == []
    assert "written against flwr 1.41.0 (found 1.42.0)" in result.stderr


def test_one_cli_no_module_entry_points() -> None:
    """The deployment modules are libraries; the scripts and docs call `fedhealth deploy` (via `-m fedhealth.cli`)."""
    for name in ("processes", "gateway", "supernode", "superexec"):
        text = (ROOT / "fedhealth" / "deployment" / f"{name}.py").read_text()
        assert "__main__" not in text and "argparse" not in text, name
    stale = []
    for folder in ("fedhealth", "server", "clients", "scripts", "docs", "configs", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".sh", ".md", ".toml", ".yaml", ".yml", "") \
                    and "-m fedhealth.deployment" in path.read_text(errors="replace"):
                stale.append(str(path.relative_to(ROOT)))
    assert not stale, stale
    server, clients = ((ROOT / unit / "deploy.sh").read_text() for unit in ("server", "clients"))
    assert '"$PYTHON" -m fedhealth.cli deploy gateway ' in server
    assert '"$PYTHON" -m fedhealth.cli deploy connection ' in server
    assert '"$PYTHON" -m fedhealth.cli deploy preflight ' in clients
    assert 'exec "$PYTHON" -m fedhealth.cli deploy supernode ' in clients


def test_a_crash_prints_no_local_variables() -> None:
    """The SuperNode launcher runs all of flower-supernode inside `fedhealth`: a traceback must not print the
    frames' locals (a key file's bytes, a record) as typer's pretty tracebacks do by default."""
    assert app.pretty_exceptions_show_locals is False


def test_the_demo_outside_a_source_checkout_says_it_needs_one(tmp_path: Path) -> None:
    from fedhealth.deployment.demo import DemoError, checkout_root

    assert checkout_root(ROOT) == ROOT  # this checkout has the deploy scripts and the data copies
    (tmp_path / "server").mkdir()  # a folder that looks half like one: still refused, with what it lacks
    with pytest.raises(DemoError, match=r"^fedhealth deploy demo runs from a source checkout .*server/deploy\.sh"):
        checkout_root(tmp_path)


def test_the_demo_refuses_a_folder_in_use_and_writes_nothing_there(tmp_path: Path) -> None:
    used = tmp_path / "deploy-demo"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    result = _run("demo", str(used))
    assert result.exit_code == 2, result.output
    assert "exists and is not empty" in result.output and "Traceback" not in result.output
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    assert _run("demo", "--rounds", "0", str(tmp_path / "new")).exit_code == 2
    assert not (tmp_path / "new").exists()
