"""`fedhealth certs` (create and check a study's certificates and keys), `fedhealth audit` (verify a log),
`fedhealth app` (build, review, approve and publish app versions) and `fedhealth deploy` (what the deployment
scripts run: the flwr CLI's connection, a hospital's pre-flight checks, the gateway, the SuperNode launcher).

Exit codes: 0 all good; 1 a check or verification ran and failed; 2 the command could not do its
job (bad option, missing file, a PKI already in place). Output names files, never key material.
The library modules are imported inside the commands so `fedhealth --help` stays fast.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import click
import typer
from typer.core import TyperCommand

from fedhealth.deployment.processes import DEFAULT_CONNECTION  # standard library only: cheap to import

if TYPE_CHECKING:
    from fedhealth.deployment.app_trust import FabFile

certs_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                        help="Create and check the study's TLS certificates and SuperNode keys.")
audit_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                        help="Verify a hospital's signed, hash-chained audit log.")
app_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                      help="Build, review, approve (sign) and publish the app versions hospitals run.")
deploy_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                         help="What server/deploy.sh and clients/deploy.sh run: the flwr CLI's connection, a "
                              "hospital's pre-flight checks and --node-config, the Fleet-only gateway and the "
                              "hospital's SuperNode launcher.")


def _fail(message: str, code: int) -> NoReturn:
    from fedhealth.errors import terminal_safe

    for line in message.splitlines():
        typer.echo(f"error: {terminal_safe(line)}", err=True)
    raise typer.Exit(code)


def _say(text: str) -> None:
    """One line of output; a path or name the user gave cannot act on the terminal (escapes written out)."""
    from fedhealth.errors import terminal_safe

    typer.echo(terminal_safe(text, keep_newlines=True))


def _check_hospital(hospital: str | None) -> None:
    """A `--hospital` name becomes a key folder and a key id: the study's rule for names (exit 2 otherwise)."""
    from fedhealth.study.names import name_problem, shown

    problem = None if hospital is None else name_problem(hospital)
    if problem is not None:
        _fail(f"--hospital {shown(hospital)}: {problem}", 2)


def _not_an_input(out: Path, *inputs: Path | None) -> None:
    """An output that is one of the command's inputs is refused, --force or not: it would destroy what it reads."""
    for given in inputs:
        if given is not None and out.exists() and given.exists() and os.path.samefile(out, given):
            _fail(f"--out {out}: is also an input of this command ({given}); choose another --out", 2)


def _not_a_project_file(out: Path, project: Path, files: Iterable[FabFile]) -> None:
    """An `--out` inside `--project` (links followed) is refused, --force or not, unless it is a `.fab` the
    build does not read: a file the FAB holds, the project's pyproject.toml or .gitignore, or any other name
    (a `.py`, `.toml`, ... the next build would pick up) would put the FAB where the app's sources are.
    A `.fab` in a folder of the project (the docs' `deploy/app.fab`) is what Flower's builder never reads."""
    root, target = project.resolve(), out.resolve()
    if root not in target.parents:
        return
    relative = target.relative_to(root).as_posix()
    if relative in {f.path for f in files} | {"pyproject.toml", ".gitignore"}:
        _fail(f"--out {out}: is {relative} of --project {project}, a file the build reads; write the FAB "
              "elsewhere (e.g. deploy/app.fab)", 2)
    if not target.name.endswith(".fab"):
        _fail(f"--out {out}: is inside --project {project} and not a .fab file, so a later build could read "
              "it as a source; name it NAME.fab or write it outside the project", 2)


def _require_files(*labelled: tuple[str, Path | None]) -> None:
    """A file that is not there, or is not a regular file (a FIFO, a device, a folder: never opened), is a
    usage error (exit 2), unlike a file that fails a check (exit 1)."""
    from fedhealth.durable import regular_file_problem

    for label, path in labelled:
        if path is None:
            continue
        problem = regular_file_problem(path)
        if problem:
            _fail(f"{path}: the {label} {problem}; give the path of the file itself", 2)
        if not path.is_file():
            _fail(f"{path}: {label} not found (no such file); check the path", 2)


@certs_app.command("init")
def certs_init(
    out: Annotated[Path, typer.Option("--out", help="directory for the study's PKI (created, mode 0700)")],
    server_name: Annotated[list[str] | None, typer.Option(
        "--server-name", help="a name SuperNodes dial (DNS name or IP); repeatable [default: localhost, 127.0.0.1]",
        show_default=False)] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=36500,
                                      help="certificate validity (days, 1 to 36500)")] = 365,
    force: Annotated[bool, typer.Option("--force", help="replace an existing PKI in --out")] = False,
) -> None:
    """Create the operator's part of the PKI: a study CA and the SuperLink's TLS certificate (no hospital keys:
    each hospital makes its own with `fedhealth certs hospital-keys`)."""
    from fedhealth.security.certs import DEFAULT_SERVER_NAMES, PKIError, init_study_pki

    try:
        pki = init_study_pki(out, server_name or list(DEFAULT_SERVER_NAMES), days, force=force)
    except (PKIError, OSError) as err:
        _fail(str(err), 2)
    _say(f"created a study PKI in {pki.root} (valid {days} days; names: {', '.join(pki.server_names)})")
    _say(f"  CA certificate      {pki.ca_cert}   every SuperNode: --root-certificates; SuperLink: "
               "--ssl-ca-certfile")
    _say(f"  CA private key      {pki.ca_key}   keep offline: it can issue certificates the hospitals trust")
    _say(f"  server certificate  {pki.server_cert}   flower-superlink --ssl-certfile")
    _say(f"  server private key  {pki.server_key}   flower-superlink --ssl-keyfile")
    _say(f"  manifest            {pki.manifest}")
    _say("next: each hospital runs `fedhealth certs hospital-keys` and sends you its supernode_auth.pub; "
               f"file each with `fedhealth certs add-hospital --pki {pki.root} --hospital NAME FILE.pub`")


@certs_app.command("hospital-keys")
def certs_hospital_keys(
    out: Annotated[Path, typer.Option("--out", help="the hospital's key folder (created, mode 0700)")],
    hospital: Annotated[str, typer.Option("--hospital", help="the hospital's name in the study")],
    force: Annotated[bool, typer.Option("--force", help="replace keys already in --out")] = False,
) -> None:
    """Run at the hospital: make its SuperNode key pair, its audit-signing key pair and its app-approval key
    pair (with trusted-entities.yaml naming it). Only supernode_auth.pub leaves the hospital."""
    from fedhealth.security.certs import PKIError, init_hospital_keys

    _check_hospital(hospital)
    try:
        keys = init_hospital_keys(out, hospital, force=force)
    except (PKIError, OSError) as err:
        _fail(str(err), 2)
    _say(f"created {hospital}'s keys in {keys.root} (private keys mode 0600: they never leave this hospital)")
    _say(f"  SuperNode key       {keys.node.private_key}   clients/deploy.sh --key")
    _say(f"  SuperNode .pub      {keys.node.public_key}   send to the operator ({keys.node.fingerprint})")
    _say(f"  audit signing key   {keys.audit_private_key}   signs the audit log (node config audit-key)")
    _say(f"  audit public key    {keys.audit_public_key}   fedhealth audit verify --public-key "
               f"({keys.audit_fingerprint})")
    _say(f"  app approval key    {keys.approval_private_key}   fedhealth app approve --key")
    _say(f"  trusted entities    {keys.trusted_entities}   flower-supernode --trusted-entities "
               f"({keys.approval_key_id}: {keys.approval_fingerprint})")
    _say(f"  manifest            {keys.manifest}")
    _say(f"confirm the fingerprint {keys.node.fingerprint} with the operator over another channel")


@certs_app.command("add-hospital")
def certs_add_hospital(
    public_key: Annotated[Path, typer.Argument(help="the hospital's supernode_auth.pub, as it sent it")],
    pki: Annotated[Path, typer.Option("--pki", help="the study PKI (fedhealth certs init --out)")],
    hospital: Annotated[str, typer.Option("--hospital", help="the hospital's name in the study")],
    force: Annotated[bool, typer.Option("--force", help="replace another key filed for this hospital")] = False,
) -> None:
    """Operator: file a hospital's SuperNode public key under PKI/hospitals/NAME/ (for server/deploy.sh register)."""
    from fedhealth.security.certs import CertificateError, PKIError, add_hospital_public_key

    _check_hospital(hospital)
    _require_files(("SuperNode public key", public_key))
    try:
        target, fingerprint = add_hospital_public_key(pki, hospital, public_key, force=force)
    except (PKIError, OSError) as err:
        _fail(str(err), 2)
    except CertificateError as err:
        _fail(str(err), 1)
    _say(f"filed {hospital}'s SuperNode public key as {target} ({fingerprint}); confirm the fingerprint with "
               "the hospital, then register it")


@certs_app.command("check")
def certs_check(
    ca: Annotated[Path, typer.Option("--ca", help="the study CA certificate (PEM)")],
    cert: Annotated[Path, typer.Option("--cert", help="the SuperLink's certificate (PEM)")],
    key: Annotated[Path, typer.Option("--key", help="the SuperLink's private key (PEM)")],
    host: Annotated[list[str] | None, typer.Option(
        "--host", help="a name SuperNodes will dial, without port; repeatable")] = None,
) -> None:
    """Check the SuperLink's TLS files before launching Flower (exit 1 and the reason if they would fail)."""
    from fedhealth.security.certs import CertificateError, check_server_tls

    _require_files(("CA certificate (--ca)", ca), ("server certificate (--cert)", cert),
                   ("server private key (--key)", key))
    try:
        found = check_server_tls(ca, cert, key, host=host or None)
    except CertificateError as err:
        _fail(str(err), 1)
    _say(f"ok: {cert} is signed by {ca}, matches {key}, names {', '.join(found.names)}, valid until "
               f"{found.not_after:%Y-%m-%d %H:%M} UTC")


@certs_app.command("check-node")
def certs_check_node(
    private_key: Annotated[Path, typer.Argument(help="the SuperNode's OpenSSH private key")],
    public_key: Annotated[Path, typer.Argument(help="the registered OpenSSH public key (.pub)")],
) -> None:
    """Check a hospital's SuperNode key pair loads as Flower loads it and that both halves match."""
    from fedhealth.security.certs import CertificateError, check_node_keypair

    _require_files(("SuperNode private key", private_key), ("SuperNode public key", public_key))
    try:
        fingerprint = check_node_keypair(private_key, public_key)
    except CertificateError as err:
        _fail(str(err), 1)
    _say(f"ok: {private_key} and {public_key} are one key pair ({fingerprint})")


@audit_app.command("verify")
def audit_verify(
    log: Annotated[Path, typer.Argument(help="the hospital's audit log (JSON lines)")],
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="the hospital's audit public key (audit_signing.pub): check every signature")] = None,
    expected_entries: Annotated[int | None, typer.Option(
        "--expected-entries", min=0, help="entries there must be (from an independent count)")] = None,
) -> None:
    """Verify the chain (and, with --public-key, the signatures); exit 1 naming the first bad line."""
    from fedhealth.privacy.audit import AuditError, entries_text, verify_audit_log
    from fedhealth.security.certs import CertificateError

    _require_files(("audit log", log), ("public key (--public-key)", public_key))
    try:
        report = verify_audit_log(log, public_key, expected_entries=expected_entries)
    except (AuditError, CertificateError) as err:
        _fail(str(err), 2)
    verified = entries_text(report.entries) + (
        f" ({report.retries} more line{'s' if report.retries != 1 else ''} recording a re-sent round as a retry "
        "of its entry)" if report.retries else "")
    for skipped in report.skipped:  # an incomplete last line: recovered, not hidden
        typer.echo(f"warning: {log}: {skipped}", err=True)
    if report.problem is not None and report.problem.line is None:  # the log as a whole, e.g. its length
        _fail(f"{log}: verification FAILED: the log {report.problem} ({verified} verified)", 1)
    if report.problem is not None:
        _fail(f"{log}: verification FAILED at {report.problem} ({verified} before it verified)", 1)
    if report.signatures_checked:
        how = f"signatures by {report.signer} verified"
    elif report.signed:
        how = f"signed by {report.signer}, signatures NOT checked (pass --public-key)"
    else:
        how = "unsigned: only the hash chain was checked"
    _say(f"ok: {log}: {verified}, chain intact, {how}; last hash {report.last_hash}")
    if expected_entries is None:
        _say("note: removal of the last entries cannot be seen in the file alone; compare the count with "
                   "the hospital's privacy ledger (--expected-entries)")


# ---------------------------------------------------------------- fedhealth app


def _fab(path: Path) -> bytes:
    from fedhealth.deployment.app_trust import AppTrustError, read_fab

    try:
        return read_fab(path)
    except AppTrustError as err:
        _fail(str(err), 2)


@app_app.command("build")
def app_build(
    out: Annotated[Path, typer.Option("--out", help="the FAB file to write")],
    project: Annotated[Path, typer.Option("--project", help="the Flower app's folder (pyproject.toml)")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out")] = False,
) -> None:
    """Build the FAB `flwr run` would submit (Flower's own builder; the same files give the same bytes)."""
    from fedhealth.deployment.app_trust import AppTrustError, build_fab, summarize_fab
    from fedhealth.security.certs import _write_file

    _not_an_input(out, project / "pyproject.toml")
    if out.exists() and not force:
        _fail(f"{out}: exists; refusing to overwrite it (pass --force, or choose another --out)", 2)
    try:
        data = build_fab(project)
    except Exception as err:  # Flower's builder raises click and value errors for a bad project
        _fail(f"{project}: cannot build a FAB: {err}", 2)
    try:
        summary = summarize_fab(data)
    except AppTrustError as err:
        _fail(f"{project}: {err}", 2)
    _not_a_project_file(out, project, summary.files)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_file(out, data, 0o644)
    _say(f"built {out}: {summary.app_id}=={summary.version}, {len(summary.files)} files, sha256 {summary.sha256}")


@app_app.command("review")
def app_review(
    fab: Annotated[Path, typer.Argument(help="the FAB to review")],
    against: Annotated[Path | None, typer.Option(
        "--against", help="a FAB approved before: list only what changed since")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show what exactly would run at the hospital: the FAB's sha256, app id, version and every file's hash."""
    import json

    from fedhealth.deployment.app_trust import AppTrustError, diff_fabs, summarize_fab

    try:
        summary = summarize_fab(_fab(fab))
        changes = diff_fabs(summarize_fab(_fab(against)), summary) if against else None
    except AppTrustError as err:
        _fail(f"{fab}: {err}", 1)
    if as_json:
        _say(json.dumps({"sha256": summary.sha256, "app_id": summary.app_id, "version": summary.version,
                               "files": [vars(f) for f in summary.files], "changes": changes}, indent=2))
        return
    _say(f"{fab}: {summary.app_id}=={summary.version}")
    _say(f"  sha256 {summary.sha256}  ({summary.size} bytes, {len(summary.files)} files)")
    for f in summary.files:
        mark = ""
        if changes is not None:
            mark = "+ " if f.path in changes["added"] else "M " if f.path in changes["changed"] else "  "
        _say(f"  {mark}{f.sha256[:16]}  {f.size:>8}  {f.path}")
    if changes is not None:
        for path in changes["removed"]:
            _say(f"  - {'':16}  {'':>8}  {path}")
        _say(f"since {against}: {len(changes['added'])} added, {len(changes['changed'])} changed, "
                   f"{len(changes['removed'])} removed")
    _say("to approve exactly these bytes: fedhealth app approve FAB --key KEYS/app_approval --hospital NAME "
               f"--sha256 {summary.sha256}")


@app_app.command("approve")
def app_approve(
    fab: Annotated[Path, typer.Argument(help="the FAB that was reviewed")],
    key: Annotated[Path, typer.Option("--key", help="the Ed25519 approval key (KEYS/app_approval)")],
    sha256: Annotated[str, typer.Option("--sha256", help="the hash that was reviewed (fedhealth app review)")],
    out: Annotated[Path, typer.Option("--out", help="the signature record to write (send it to the operator)")],
    hospital: Annotated[str | None, typer.Option("--hospital", help="sign as NAME-approval (the key id that "
                                                 "certs hospital-keys put in trusted-entities.yaml)")] = None,
    key_id: Annotated[str | None, typer.Option("--key-id", help="sign under another key id (a publisher)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out")] = False,
) -> None:
    """Sign off one app version: an Ed25519 signature over the FAB, in the form Flower's SuperNode verifies."""
    import json

    from fedhealth.deployment.app_trust import AppTrustError, fab_sha256, sign_fab
    from fedhealth.security.certs import _write_file, approval_key_id

    _check_hospital(hospital)
    _not_an_input(out, fab, key)
    if not out.parent.is_dir():
        _fail(f"--out {out}: the folder {out.parent} does not exist; create it first", 2)
    data = _fab(fab)
    if fab_sha256(data) != sha256.strip().lower():
        _fail(f"{fab}: its sha256 is {fab_sha256(data)}, not the reviewed {sha256}: these are other bytes; review "
              "this file (fedhealth app review) before approving it", 1)
    if (hospital is None) == (key_id is None):
        _fail("give --hospital NAME (a hospital's approval) or --key-id ID (a publisher's signature)", 2)
    if out.exists() and not force:
        _fail(f"{out}: exists; refusing to overwrite it (pass --force, or choose another --out)", 2)
    try:
        record = sign_fab(data, key, key_id or approval_key_id(hospital or ""))
    except AppTrustError as err:
        _fail(str(err), 2)
    _write_file(out, (json.dumps(record, indent=2) + "\n").encode(), 0o644)
    _say(f"approved {record['app_id']}=={record['version']} (sha256 {record['fab_sha256']}) as "
               f"{record['public_key_id']} ({record['signer_fingerprint']}); send {out} to the operator")


@app_app.command("trust")
def app_trust_key(
    public_key: Annotated[Path, typer.Argument(help="an Ed25519 OpenSSH public key (e.g. a publisher's)")],
    trusted_entities: Annotated[Path, typer.Option("--trusted-entities", help="the hospital's trusted-entities "
                                                   "file")],
    key_id: Annotated[str, typer.Option("--key-id", help="the id its signatures carry")],
    replace: Annotated[bool, typer.Option("--replace", help="change the key under an existing id")] = False,
) -> None:
    """Hospital: run every app version this key signs (restart the SuperNode to apply)."""
    from fedhealth.deployment.app_trust import AppTrustError, trust_key

    try:
        fingerprint = trust_key(trusted_entities, key_id, public_key, replace=replace)
    except AppTrustError as err:
        _fail(str(err), 2)
    _say(f"{trusted_entities}: trusts {key_id} ({fingerprint}); restart the SuperNode to apply")


@app_app.command("publish")
def app_publish(
    fab: Annotated[Path, typer.Argument(help="the FAB to offer for runs")],
    registry: Annotated[Path, typer.Option("--dir", help="the registry folder")],
    replace: Annotated[bool, typer.Option("--replace", help="replace other bytes under the same version")] = False,
) -> None:
    """Operator: put a FAB in the registry the SuperLink fetches `@publisher/app==x.y.z` from."""
    from fedhealth.deployment.app_trust import AppTrustError, Registry

    try:
        summary, target = Registry(registry).publish(_fab(fab), replace=replace)
    except AppTrustError as err:
        _fail(str(err), 2)
    _say(f"published {summary.app_id}=={summary.version} (sha256 {summary.sha256}) as {target}; "
               f"run it with: flwr run {summary.app_id}=={summary.version} CONNECTION")


@app_app.command("add-signature")
def app_add_signature(
    record: Annotated[list[Path], typer.Argument(help="signature records (fedhealth app approve --out)")],
    registry: Annotated[Path, typer.Option("--dir", help="the registry folder")],
) -> None:
    """Operator: attach hospitals' approvals to a published FAB (each SuperNode checks them itself)."""
    import json

    from fedhealth.deployment.app_trust import AppTrustError, Registry

    for path in record:
        try:
            target = Registry(registry).add_signature(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            _fail(f"{path}: {err}", 2)
        except AppTrustError as err:
            _fail(f"{path}: {err}", 2)
        _say(f"{path}: filed as {target}")


@app_app.command("serve")
def app_serve(
    registry: Annotated[Path, typer.Option("--dir", help="the registry folder")],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 9097,
) -> None:
    """Operator: serve the registry as the SuperLink fetches apps (set FLWR_SUPERGRID_API_URL to its URL)."""
    from fedhealth.deployment.app_trust import serve_registry

    server = serve_registry(registry, host, port)
    import sys

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM stops it as Ctrl-C does: `docker stop` sends it, and a container's first process that has no
    # handler of its own ignores it (compose then waits out its timeout and kills the registry). Installed
    # before the line that says it serves: whoever waits for that line may stop it at once.
    signal.signal(signal.SIGTERM, stop)
    try:
        _say(f"registry {registry} on http://{host}:{server.server_address[1]} "
             f"(flower-superlink: FLWR_SUPERGRID_API_URL=http://{host}:{server.server_address[1]})")
        sys.stdout.flush()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------- fedhealth deploy


@deploy_app.command("connection")
def deploy_connection(
    address: Annotated[str, typer.Option("--address", help="the SuperLink as HOST:PORT")],
    ca: Annotated[str, typer.Option("--ca", help="the study CA certificate (PEM)")],
    name: Annotated[str, typer.Option("--name", help="the connection's name (superlink.NAME)")] = DEFAULT_CONNECTION,
    flwr_home: Annotated[str | None, typer.Option(
        "--flwr-home", help="the flwr CLI's folder (default: $FLWR_HOME, else ~/.flwr)", show_default=False)] = None,
) -> None:
    """Write the flwr CLI's connection to the SuperLink (superlink.NAME: address, absolute CA path) into
    $FLWR_HOME/config.toml."""
    from fedhealth.deployment.processes import write_connection

    home = flwr_home if flwr_home is not None else os.environ.get("FLWR_HOME") or str(Path.home() / ".flwr")
    path = write_connection(home, address, ca, name)
    _say(f"{path}: [superlink.{name}] address = {address}, root-certificates = "
               f"{Path(ca).expanduser().resolve()}")


@deploy_app.command("preflight")
def deploy_preflight(
    ca: Annotated[str, typer.Option("--ca", help="the study CA certificate (flower-supernode --root-certificates)")],
    policy: Annotated[str | None, typer.Option("--policy", help="the site policy")] = None,
    audit_log: Annotated[str | None, typer.Option("--audit-log", help="the audit log (node config audit-log)")]
    = None,
    public_key: Annotated[str | None, typer.Option(
        "--public-key", help="the audit public key (default: AUDIT_KEY.pub)", show_default=False)] = None,
    audit_key: Annotated[str | None, typer.Option("--audit-key", help="the audit signing key")] = None,
    node_key: Annotated[str | None, typer.Option("--node-key", help="the SuperNode private key")] = None,
    trusted_entities: Annotated[str | None, typer.Option(
        "--trusted-entities", help="the keys whose app approvals this hospital accepts")] = None,
    ledger_dir: Annotated[str | None, typer.Option("--ledger-dir", help="the privacy ledger folder")] = None,
) -> None:
    """A hospital's checks before its SuperNode starts: one line per problem and exit 1 on any."""
    from fedhealth.deployment.processes import hospital_problems
    from fedhealth.errors import terminal_safe

    problems = hospital_problems(ca, policy, audit_log, public_key, ledger_dir, audit_key=audit_key,
                                 node_key=node_key, trusted_entities=trusted_entities)
    for line in problems:
        typer.echo(f"error: {terminal_safe(line)}", err=True)
    if problems:
        raise typer.Exit(1)


@deploy_app.command("node-config")
def deploy_node_config(
    pairs: Annotated[list[str] | None, typer.Argument(metavar="KEY=VALUE", help="node config keys and values",
                                                      show_default=False)] = None,
) -> None:
    """Print flower-supernode's --node-config text for KEY=VALUE pairs (exit 2 for a value it cannot carry)."""
    from fedhealth.deployment.processes import node_config

    values: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            _fail(f"{pair!r}: give KEY=VALUE", 2)
        values[key] = value
    try:
        text = node_config(values)
    except ValueError as err:
        _fail(str(err), 2)
    typer.echo(text)


@deploy_app.command("gateway")
def deploy_gateway(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT the hospitals dial")],
    superlink: Annotated[str, typer.Option("--superlink", help="the SuperLink's loopback HOST:PORT")],
    ca: Annotated[str, typer.Option("--ca", help="the study CA (verifies the SuperLink)")],
    cert: Annotated[str, typer.Option("--cert", help="the server certificate presented to the hospitals")],
    key: Annotated[str, typer.Option("--key", help="its private key")],
) -> None:
    """The hospitals' door to the SuperLink: HTTPS, passing the Fleet API only (403 to anything else)."""
    from fedhealth.deployment.gateway import GatewayError, serve

    try:
        serve(listen, superlink, ca, cert, key)
    except GatewayError as err:
        _fail(str(err), 1)


class _Verbatim(TyperCommand):
    """A command that parses none of its arguments: all of them (`--help` and `--` included) land in `ctx.args`,
    in order. (Click's `ignore_unknown_options` would still eat a `--`.)"""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        super().parse_args(ctx, [])
        ctx.args = list(args)
        return ctx.args


@deploy_app.command("supernode", cls=_Verbatim, add_help_option=False)
def deploy_supernode(ctx: typer.Context) -> None:
    """flower-supernode, recording every app it is asked to run (in $FEDHEALTH_APP_LOG) with Flower's verdict.

    Every argument is flower-supernode's and is passed on unchanged (`fedhealth deploy supernode --help` shows
    flower-supernode's own help). Refuses to start (exit 1) on a flwr other than the 1.41.0 it wraps."""
    from fedhealth.deployment.supernode import LauncherError, launch

    try:
        launch(list(ctx.args))
    except LauncherError as err:
        _fail(str(err), 1)


@deploy_app.command("superexec", cls=_Verbatim, add_help_option=False)
def deploy_superexec(ctx: typer.Context) -> None:
    """flower-superexec for a hospital's SuperNode in process isolation, its ClientApps forked from a warm fork
    server (fedhealth/deployment/superexec.py); started by `fedhealth deploy supernode` when
    FEDHEALTH_CLIENTAPP=forkserver. Every argument is flower-superexec's, passed on unchanged. Refuses to start
    (exit 1) on a flwr other than 1.41.0."""
    from fedhealth.deployment.superexec import main
    from fedhealth.deployment.supernode import LauncherError

    try:
        main(list(ctx.args))
    except LauncherError as err:
        _fail(str(err), 1)


@deploy_app.command("demo")
def deploy_demo(
    folder: Annotated[Path, typer.Argument(help="a new or empty folder that keeps everything (PKI, each "
                                                "hospital's folder, logs, the run directory)")] = Path("deploy-demo"),
    compose: Annotated[bool, typer.Option("--compose", help="only lay FOLDER out for "
                                          "configs/deployment/compose.yaml and print the docker compose commands")]
    = False,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="rounds of the study")] = 1,
    studies: Annotated[int, typer.Option("--studies", min=1, help="run the study this many times in a row (same "
                                         "hospitals, ledgers and audit logs)")] = 1,
    keep_running: Annotated[bool, typer.Option("--keep-running", help="leave the SuperLink, gateway, registry and "
                                               "SuperNodes up at the end (docs/deployment.md, Teardown)")] = False,
) -> None:
    """The three-hospital deployment on one host, from a source checkout: PKI, each hospital's own keys and
    approval of the app, a TLS SuperLink on 127.0.0.1 behind the Fleet-only gateway, three SuperNodes, the study
    through `flwr run`, everything stopped. Ends with one JSON line of figures; exit 0 only if the study
    completed (1 otherwise, 2 if FOLDER is in use or this is not a source checkout)."""
    import json

    from fedhealth.deployment.demo import DemoError, checkout_root, lay_out_compose, run_demo

    try:
        checkout_root()
    except DemoError as err:
        _fail(str(err), 2)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        _fail(f"{folder.resolve()}: exists and is not empty; remove it or name another folder", 2)
    try:
        if compose:
            _say(lay_out_compose(folder))
            return
        result = run_demo(folder, rounds=rounds, studies=studies, keep_running=keep_running)
    except (DemoError, TimeoutError) as err:
        _fail(str(err), 1)
    typer.echo(json.dumps(result))
    raise typer.Exit(0 if result.get("state") == "completed" else 1)
