"""`fedhealth certs` (create and check a study's certificates and keys) and `fedhealth audit` (verify a log).

Exit codes: 0 all good; 1 a check or verification ran and failed; 2 the command could not do its
job (bad option, missing file, a PKI already in place). Output names files, never key material.
The library modules are imported inside the commands so `fedhealth --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

certs_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Create and check the study's TLS certificates and SuperNode keys.")
audit_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Verify a hospital's signed, hash-chained audit log.")


def _fail(message: str, code: int) -> NoReturn:
    for line in message.splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def _require_files(*labelled: tuple[str, Path | None]) -> None:
    """A file that is not there is a usage error (exit 2), unlike a file that fails a check (exit 1)."""
    for label, path in labelled:
        if path is not None and not path.is_file():
            _fail(f"{path}: {label} not found (no such file); check the path", 2)


@certs_app.command("init")
def certs_init(
    out: Annotated[Path, typer.Option("--out", help="directory for the study's PKI (created, mode 0700)")],
    server_name: Annotated[list[str] | None, typer.Option(
        "--server-name", help="a name SuperNodes dial (DNS name or IP); repeatable [default: localhost, 127.0.0.1]",
        show_default=False)] = None,
    hospital: Annotated[list[str] | None, typer.Option(
        "--hospital", help="a hospital that gets a SuperNode key pair; repeatable")] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="certificate validity (days)")] = 365,
    force: Annotated[bool, typer.Option("--force", help="replace an existing PKI in --out")] = False,
) -> None:
    """Create a study CA, the SuperLink's TLS certificate and one SuperNode key pair per hospital."""
    from fedhealth.security.certs import DEFAULT_SERVER_NAMES, PKIError, init_study_pki

    try:
        pki = init_study_pki(out, server_name or list(DEFAULT_SERVER_NAMES), hospital or [], days, force=force)
    except (PKIError, OSError) as err:
        _fail(str(err), 2)
    typer.echo(f"created a study PKI in {pki.root} (valid {days} days; names: {', '.join(pki.server_names)})")
    typer.echo(f"  CA certificate      {pki.ca_cert}   every SuperNode: --root-certificates; SuperLink: "
               "--ssl-ca-certfile")
    typer.echo(f"  CA private key      {pki.ca_key}   keep offline: it can issue certificates the hospitals trust")
    typer.echo(f"  server certificate  {pki.server_cert}   flower-superlink --ssl-certfile")
    typer.echo(f"  server private key  {pki.server_key}   flower-superlink --ssl-keyfile")
    for name, node in pki.hospitals.items():
        typer.echo(f"  {name}: private key {node.private_key}   stays at the hospital: flower-supernode "
                   "--auth-supernode-private-key")
        typer.echo(f"  {name}: public key  {node.public_key}   operator: flwr supernode register <this file> "
                   "<federation>")
    typer.echo(f"  manifest            {pki.manifest}")


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
    typer.echo(f"ok: {cert} is signed by {ca}, matches {key}, names {', '.join(found.names)}, valid until "
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
    typer.echo(f"ok: {private_key} and {public_key} are one key pair ({fingerprint})")


@audit_app.command("verify")
def audit_verify(
    log: Annotated[Path, typer.Argument(help="the hospital's audit log (JSON lines)")],
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="the hospital's SuperNode public key (.pub): check every signature")] = None,
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
    verified = entries_text(report.entries)
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
    typer.echo(f"ok: {log}: {verified}, chain intact, {how}; last hash {report.last_hash}")
    if expected_entries is None:
        typer.echo("note: removal of the last entries cannot be seen in the file alone; compare the count with "
                   "the hospital's privacy ledger (--expected-entries)")
