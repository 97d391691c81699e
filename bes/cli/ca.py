"""``bes ca``: a certificate authority for a test deployment (see :mod:`bes.pki`)."""

from __future__ import annotations

from pathlib import Path

import click

from bes import pki
from bes.certs import certificate_der, subject_of
from bes.errors import BesError

_DIR = click.Path(file_okay=False, path_type=Path)


@click.group("ca")
def ca() -> None:
    """A CA for a test deployment: server and user certificates (PEM) for TLS and WS-Security.

    \b
    bes ca init DIR                       the CA: DIR/ca.pem, DIR/ca.key
    bes ca server DIR bes.example.org     DIR/bes.example.org.pem (chain) and .key
    bes ca user DIR alice                 DIR/alice.pem and .key; prints the subject
    bes ca revoke DIR DIR/alice.pem       DIR/crl.pem
    """


@ca.command("init")
@click.argument("directory", type=_DIR)
@click.option("--name", default="bes test CA", show_default=True, help="The CA's name.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1))
def init(directory: Path, name: str, days: int) -> None:
    """Create a CA in DIRECTORY (refuses to replace one)."""
    try:
        cert = pki.init_ca(directory, name=name, days=days)
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {cert} and {directory / pki.CA_KEY}")
    click.echo(f"subject: {subject_of(certificate_der(cert))}")
    click.echo(f"trust it with: bes serve --tls-client-ca {cert}, bes worker --ca-file {cert}")


@ca.command("server")
@click.argument("directory", type=_DIR)
@click.argument("hostname")
@click.option(
    "--name",
    "extra_names",
    multiple=True,
    metavar="ALT",
    help="Another DNS name or IP address the certificate is valid for (repeatable).",
)
@click.option("--days", default=825, show_default=True, type=click.IntRange(1))
def server(directory: Path, hostname: str, extra_names: tuple[str, ...], days: int) -> None:
    """A server certificate for HOSTNAME, signed by the CA in DIRECTORY."""
    try:
        cert = pki.issue_server(directory, hostname, extra_names=extra_names, days=days)
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    key = pki.key_file(directory, hostname)
    click.echo(f"wrote {cert} (with the CA certificate) and {key}")
    click.echo(f"subject: {subject_of(certificate_der(cert))}")
    click.echo(f"serve with: bes serve --tls-cert {cert} --tls-key {key}")


@ca.command("user")
@click.argument("directory", type=_DIR)
@click.argument("name")
@click.option("--common-name", help="The certificate's CN (default: NAME).")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1))
def user(directory: Path, name: str, common_name: str | None, days: int) -> None:
    """A user certificate NAME, signed by the CA in DIRECTORY; prints its subject."""
    try:
        subject = pki.issue_user(directory, name, common_name=common_name, days=days)
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {pki.cert_file(directory, name)} and {pki.key_file(directory, name)}")
    click.echo(f"subject: {subject}")
    click.echo(f"register with: bes user add {name} --certificate-subject '{subject}'")


@ca.command("revoke")
@click.argument("directory", type=_DIR)
@click.argument("cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def revoke(directory: Path, cert: Path) -> None:
    """Revoke CERT (issued by the CA in DIRECTORY): adds it to DIRECTORY/crl.pem."""
    try:
        crl = pki.revoke(directory, cert)
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {crl}")
    click.echo(f"revoked: {subject_of(certificate_der(cert))}")
    click.echo(f"refuse it with: bes serve --tls-crl {crl} (restart the service to reload)")
