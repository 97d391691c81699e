"""The ``bes`` command line: the service (``serve``) and local VM runs (``vm run``) here, the
workers in :mod:`bes.cli.workers`, the client commands in :mod:`bes.cli.jobs`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bes import __version__
from bes.cli._db import database as _database
from bes.cli._durations import Duration
from bes.cli._sizes import ByteSize
from bes.cli.ca import ca
from bes.cli.clouds import cloud
from bes.cli.jobs import CLIENT_COMMANDS
from bes.cli.purge import purge
from bes.cli.users import user
from bes.cli.workers import worker_command, worker_token
from bes.errors import BesError

if TYPE_CHECKING:
    from bes.config import ServiceConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bes")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """bes: OGSA-BES job submission to virtual machines on a desktop grid or a cloud."""
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if verbose < 2:
        logging.getLogger("alembic").setLevel(logging.WARNING)


SIGNATURE_ALGORITHMS = (
    "rsa-sha256",
    "rsa-sha384",
    "rsa-sha512",
    "ecdsa-sha256",
    "ecdsa-sha384",
    "ecdsa-sha512",
    "rsa-sha1",
)
"""Names of the signature methods ``--signature-algorithm`` takes (those of
bes.xmlsignature.ALGORITHMS_BY_NAME; named here so that ``bes --help`` loads no xmlsec)."""


def settle_heap() -> None:
    """Once the service is up: what start-up made (schemas, the WSDL, table metadata) lives as
    long as the process, so it goes out of the garbage collector's sight, whose full passes
    then look only at what requests leave behind (they stopped every request for 60 ms under
    a CreateActivity load of 32 clients); and the youngest generation is collected every
    10,000 allocations, not 700 (its passes cost 1.5% of the CPU of CreateActivity)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bes-data"),
    show_default=True,
    help="Directory for the embedded database and other state (created if missing).",
)
@click.option(
    "--database-url",
    envvar="BES_DATABASE_URL",
    help="SQLAlchemy URL of the database, e.g. postgresql://user@host/bes "
    "(default: SQLite in the data directory).",
)
@click.option(
    "--public-url",
    help="Base URL clients use, e.g. https://bes.example.org "
    "(default: taken from each request's Host header).",
)
@click.option(
    "--max-request-bytes",
    default=4 * 1024 * 1024,
    show_default=True,
    type=click.IntRange(1024),
    help="Refuse larger request bodies before parsing.",
)
@click.option(
    "--backend",
    default="desktopgrid",
    show_default=True,
    help="Backend that runs new activities; 'none' keeps them Pending (queue only).",
)
@click.option(
    "--backend-option",
    "backend_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A backend setting, e.g. lease_s=60, heartbeat_s=15, max_attempts=3 (repeatable).",
)
@click.option(
    "--strict-jsdl",
    is_flag=True,
    help="Validate JSDL as submitted; by default known real-world variants (a missing "
    "CreationFlag, elements out of order, namespace variants) are normalized, with warnings.",
)
@click.option(
    "--sweep-limit",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Most activities one JSDL parameter sweep may expand into.",
)
@click.option(
    "--local-worker/--no-local-worker",
    default=True,
    show_default=True,
    help="With the desktop grid, also run one worker on this machine.",
)
@click.option(
    "--worker-option",
    "worker_options",
    multiple=True,
    metavar="OPTION",
    help="An option for the local worker, e.g. --worker-option=--max-vms=2 (repeatable).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate (and chain) of the service: HTTPS only (needs --tls-key).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM CA bundle that client certificates (TLS, and WS-Security X.509 signers) "
    "must chain to; TLS then asks clients for a certificate.",
)
@click.option(
    "--tls-crl",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate revocation lists of those CAs.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a non-loopback address without TLS (a lab only: passwords cross the "
    "network in clear).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDRESS",
    help="A TLS-terminating proxy whose X-Forwarded-Proto and client-certificate headers "
    "are believed (repeatable).",
)
@click.option(
    "--secret-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BES_SECRET_KEY_FILE",
    help="Key sealing secrets at rest; the same on every replica "
    "(default: DATA_DIR/secret.key, created on first start).",
)
@click.option(
    "--file-root",
    "file_roots",
    multiple=True,
    metavar="DIR",
    help="A directory file: staging URIs in JSDL documents may name (repeatable; default "
    "none: file: URIs are refused at submission).",
)
@click.option(
    "--auth-window",
    "auth_window_s",
    default=300.0,
    show_default=True,
    type=click.FloatRange(1.0),
    help="Seconds a WS-Security Created or Timestamp may be away from now.",
)
@click.option(
    "--signature-algorithm",
    "signature_algorithms",
    multiple=True,
    type=click.Choice(SIGNATURE_ALGORITHMS),
    help="A WS-Security signature method to accept (repeatable; default: all of these: the "
    "RSA and ECDSA SHA-2 ones and the rsa-sha1 deployed clients send). HMAC and MD5 never.",
)
@click.option(
    "--storage-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The directory every replica must reach (one network file system mounted on each): "
    "uploaded files in files/, jobs' kept outputs in outputs/ (default: DATA_DIR).",
)
@click.option(
    "--files-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the file store keeps uploaded files instead of STORAGE_DIR/files (the same "
    "directory on every replica).",
)
@click.option(
    "--file-max-size",
    "file_max_bytes",
    default="16G",
    show_default=True,
    type=ByteSize(),
    help="Largest file one upload may store.",
)
@click.option(
    "--file-quota",
    "file_quota_bytes",
    default="50G",
    show_default=True,
    type=ByteSize(),
    help="Each user's file store quota (bes user quota sets another for one user).",
)
@click.option(
    "--file-expiry-days",
    default=7.0,
    show_default=True,
    type=click.FloatRange(min=0.0, min_open=True),
    help="Stored files that no unfinished activity uses are removed after this many days.",
)
@click.option(
    "--keep-ended",
    type=Duration(),
    metavar="DURATION",
    help="Remove ended activities, with their kept outputs, once they ended this long ago "
    "(e.g. 30d; checked every tenth of it, at most every 5 min; default: keep them).",
)
@click.option(
    "--clouds",
    "clouds_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Cloud pools (TOML: [pool.NAME] tables; see README, Cloud pools): worker nodes "
    "started and stopped as the queue needs them.",
)
@click.option(
    "--relay-url",
    help="How the other replicas reach this one, to forward users' streams to the VM lease "
    "tunnels it holds (default: http(s)://HOST:PORT as it listens).",
)
@click.option(
    "--tunnel-streams",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Concurrent streams (ssh sessions, forwarded connections) per VM lease.",
)
@click.option(
    "--tunnel-bandwidth",
    "tunnel_bytes_per_second",
    default="64M",
    show_default=True,
    type=ByteSize(),
    help="Relay bandwidth per VM lease and second, both directions together.",
)
def serve(
    host: str,
    port: int,
    data_dir: Path,
    database_url: str | None,
    public_url: str | None,
    max_request_bytes: int,
    backend: str,
    backend_options: tuple[str, ...],
    strict_jsdl: bool,
    sweep_limit: int,
    local_worker: bool,
    worker_options: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    tls_crl: Path | None,
    insecure: bool,
    trusted_proxies: tuple[str, ...],
    secret_key_file: Path | None,
    file_roots: tuple[str, ...],
    auth_window_s: float,
    signature_algorithms: tuple[str, ...],
    storage_dir: Path | None,
    files_dir: Path | None,
    file_max_bytes: int,
    file_quota_bytes: int,
    file_expiry_days: float,
    keep_ended: dt.timedelta | None,
    clouds_file: Path | None,
    relay_url: str | None,
    tunnel_streams: int,
    tunnel_bytes_per_second: int,
) -> None:
    """Run the BES service (SOAP at http://HOST:PORT/bes), by default with a desktop grid
    and one local worker, so submitted jobs run in VMs on this machine."""
    from bes import tls
    from bes.app import create_app
    from bes.localworker import LocalWorker

    options = {}
    for option in backend_options:
        key, sep, value = option.partition("=")
        if not sep:
            raise click.BadParameter(f"{option!r} is not KEY=VALUE", param_hint="--backend-option")
        options[key.strip()] = value.strip()
    from bes.config import ServiceConfig

    config = ServiceConfig(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        public_url=public_url,
        max_request_bytes=max_request_bytes,
        backend=None if backend == "none" else backend,
        backend_options=options,
        strict_jsdl=strict_jsdl,
        sweep_limit=sweep_limit,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        tls_crl=tls_crl,
        insecure=insecure,
        trusted_proxies=trusted_proxies,
        secret_key_file=secret_key_file,
        file_roots=file_roots,
        auth_window_s=auth_window_s,
        signature_algorithms=_signature_methods(signature_algorithms),
        storage_dir=storage_dir,
        files_dir=files_dir,
        file_max_bytes=file_max_bytes,
        file_quota_bytes=file_quota_bytes,
        file_expiry_s=file_expiry_days * 86400.0,
        keep_ended_s=keep_ended.total_seconds() if keep_ended else None,
        clouds_file=clouds_file,
        relay_url=relay_url,
        tunnel_streams=tunnel_streams,
        tunnel_bytes_per_second=tunnel_bytes_per_second,
    )
    _check_exposure(config)
    if local_worker and config.backend == "desktopgrid":
        problem = _no_hypervisor()
        if problem is not None:
            local_worker = False
            click.echo(f"bes serve: {problem}", err=True)
            config = dataclasses.replace(config, notices=(problem,))
    worker = None
    scheme = "https" if config.tls else "http"
    try:
        context = None
        if config.tls_cert is not None:
            context = tls.server_context(
                config.tls_cert, config.tls_key, client_ca=config.tls_client_ca, crl=config.tls_crl
            )
        app = create_app(config)
        if local_worker and config.backend == "desktopgrid":
            data_dir.mkdir(parents=True, exist_ok=True)
            loopback = "[::1]" if ":" in host else "127.0.0.1"
            worker = LocalWorker(
                data_dir=data_dir,
                database_url=config.effective_database_url,
                service_url=f"{scheme}://{loopback}:{port}",
                server_cert=config.tls_cert,
                extra=list(worker_options),
            )
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc

    def ready() -> None:
        """It listens: say so, and only now start the local worker."""
        settle_heap()
        if worker is not None:
            try:
                worker.start()
            except BesError as exc:
                click.echo(f"bes serve: the local worker could not start: {exc}", err=True)
        click.echo(
            f"bes {__version__}: BES endpoint {scheme}://{host}:{port}/bes "
            f"(WSDL: {scheme}://{host}:{port}/bes?wsdl); backend {config.backend or 'none'}"
            + ("; with a local worker" if worker else "")
            + "; ready",
            err=True,
        )

    try:
        started = tls.run(
            app, host=host, port=port, context=context, on_ready=ready, on_stop=app.begin_shutdown
        )
    finally:
        if worker is not None:
            worker.stop()
    if not started:
        sys.exit(3)


def _no_hypervisor() -> str | None:
    """Why the local worker could not run a VM here (None: it can), with what fixes it."""
    import tempfile

    from bes.errors import HypervisorUnavailable
    from bes.vm.drivers import choose_driver

    try:
        with tempfile.TemporaryDirectory(prefix="bes-probe-") as scratch:  # nothing left behind
            choose_driver((), Path(scratch), accelerator="tcg")  # no KVM test: just the binaries
    except HypervisorUnavailable as exc:
        found = str(exc)
        detail = found[found.find("(") :] if "(" in found else f"({found})"
        return (
            f"no local worker: no hypervisor works on this machine {detail}. "
            "Install QEMU (apt-get install qemu-system-x86 qemu-utils) "
            "or VirtualBox and start bes serve again; until then jobs wait for a worker started "
            "elsewhere (bes worker --service URL --token-file FILE)"
        )
    return None


def _signature_methods(names: tuple[str, ...]) -> frozenset[str] | None:
    """The SignatureMethod URIs for ``names``; None (the defaults) if none was given."""
    if not names:
        return None
    from bes.xmlsignature import ALGORITHMS_BY_NAME

    return frozenset(ALGORITHMS_BY_NAME[name] for name in names)


def _check_exposure(config: ServiceConfig) -> None:
    """Refuse to put the service on a network without users, and without TLS (on the
    service, or at a trusted proxy) unless --insecure says it is a lab."""
    from bes.authn import is_loopback
    from bes.db import user_rows

    if is_loopback(config.host):
        return
    where = f"--host {config.host}"
    if not (config.tls or config.trusted_proxies or config.insecure):
        raise click.ClickException(
            f"{where} would put the service on a network without TLS: give --tls-cert and "
            "--tls-key (bes ca makes a test CA), or run it behind a TLS-terminating proxy "
            "(--trusted-proxy ADDRESS); --insecure allows plain HTTP for a lab"
        )
    with _database(config.data_dir, config.database_url) as db:
        users = db.read_sync(user_rows.count_users)
    if not users:
        raise click.ClickException(
            f"{where} needs users first, or anyone could use the service: "
            f"bes user add NAME --admin --data-dir {config.data_dir} "
            "(without users, only a loopback address is served, to anyone on this machine)"
        )


@main.group()
def vm() -> None:
    """Run VM jobs on this machine, without the service."""


@vm.command("run")
@click.argument("document", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for stdout, stderr and output files (default: ./JOBNAME-ID).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="VM directory and its own image cache (default: $XDG_CACHE_HOME/bes, with the "
    "node's shared image cache, $BES_IMAGE_CACHE or $XDG_CACHE_HOME/bes/images).",
)
@click.option(
    "--catalog",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A site's template catalog (JSON) besides the built-in tiny template.",
)
@click.option(
    "--hypervisor",
    type=click.Choice(["qemu", "virtualbox"]),
    help="Use this hypervisor (default: the document's preference, else the first that works).",
)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="QEMU accelerator; auto uses KVM only where it really runs guests.",
)
def vm_run(
    document: Path,
    results: Path | None,
    cache_dir: Path | None,
    catalog: Path | None,
    hypervisor: str | None,
    accel: str,
) -> None:
    """Run the VM job of a JSDL DOCUMENT here and print its stdout.

    The exit status is the job's; 125 means the VM did not bring the job to its end.
    """
    from bes.jsdl.parse import load_job_definition
    from bes.vm.repository import Catalog
    from bes.vm.spec import Hypervisor
    from bes.vmlocal import default_cache_dir, run_local

    try:
        job = load_job_definition(document.read_bytes())
        run = run_local(
            job,
            document_dir=document.resolve().parent,
            results_dir=results,
            cache_dir=cache_dir or default_cache_dir(),
            image_cache_dir=cache_dir / "images" if cache_dir else None,
            catalog=Catalog.load(catalog) if catalog else None,
            hypervisor=Hypervisor(hypervisor) if hypervisor else None,
            accelerator=accel,
        )
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    outcome = run.outcome
    if outcome.results is not None:
        sys.stdout.buffer.write(outcome.results.stdout.read_bytes())
        sys.stdout.flush()
        sys.stderr.buffer.write(outcome.results.stderr.read_bytes())
    summary = (
        f"bes: job {run.job_id} in a {run.host.hypervisor.value} VM ({run.host.accelerator}), "
        f"{outcome.vm_seconds:.1f} s; results in {run.results_dir}"
    )
    if not outcome.completed or outcome.exit_code is None:
        click.echo(f"{summary}\nbes: the job did not complete: {outcome.reason}", err=True)
        if outcome.console_tail:
            click.echo(f"bes: last console lines:\n{outcome.console_tail}", err=True)
        sys.exit(125)
    outputs = sorted(outcome.results.outputs) if outcome.results else []
    click.echo(f"{summary}; exit status {outcome.exit_code}", err=True)
    if outputs:
        click.echo(f"bes: outputs: {', '.join(outputs)}", err=True)
    if outcome.results is not None and outcome.results.missing:
        click.echo(f"bes: missing outputs: {', '.join(outcome.results.missing)}", err=True)
    for path in run.delivered:
        click.echo(f"bes: delivered {path}", err=True)
    sys.exit(outcome.exit_code)


for _command in CLIENT_COMMANDS:
    main.add_command(_command)
main.add_command(user)
main.add_command(ca)
main.add_command(worker_command)
main.add_command(worker_token)
main.add_command(cloud)
main.add_command(purge)
