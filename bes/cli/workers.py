"""``bes worker`` and ``bes worker-token``: the workers that run jobs for a desktop grid, and
the tokens they sign in with (issued and revoked on the service's machine)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from bes.cli._db import DATA_DIR, DATABASE_URL, database
from bes.errors import BesError


@click.command("worker")
@click.option("--service", "service_url", required=True, help="The service's base URL.")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="File holding this worker's token (from bes worker-token create).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Image cache and VM directories (default: $XDG_CACHE_HOME/bes/worker).",
)
@click.option(
    "--image-cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="The node's image cache, shared with bes vm run and other workers "
    "(default: CACHE_DIR/images with --cache-dir, else $BES_IMAGE_CACHE, else "
    "$XDG_CACHE_HOME/bes/images).",
)
@click.option("--max-vms", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--cpu-cap",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Most CPU a VM may use, percent of its virtual CPUs.",
)
@click.option(
    "--max-memory-mib",
    type=click.IntRange(64),
    help="Memory all VMs together may use (default: half of this machine's).",
)
@click.option(
    "--max-vcpus",
    type=click.IntRange(1),
    help="Virtual CPUs one VM may have (default: this machine's CPUs).",
)
@click.option("--cache-mib", default=20480, show_default=True, type=click.IntRange(256))
@click.option(
    "--allow-network/--no-network",
    default=False,
    show_default=True,
    help="Whether jobs that ask for a guest network may run here.",
)
@click.option(
    "--busy-load",
    type=click.FloatRange(0.0),
    help="Pause VMs and take no work while the load average besides our VMs is above this.",
)
@click.option(
    "--hypervisor",
    "hypervisors",
    multiple=True,
    type=click.Choice(["qemu", "virtualbox"]),
    help="Hypervisors to use, preferred first (default: VirtualBox, then QEMU).",
)
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto")
@click.option(
    "--file-root",
    "file_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A directory that file: staging URIs may name (repeatable; default none).",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificates the service's HTTPS certificate must chain to "
    "(default: the system's CAs).",
)
@click.option(
    "--tls-server-name",
    metavar="NAME",
    help="The name the service's certificate must be valid for, when --service reaches it "
    "by another (e.g. an address).",
)
@click.option(
    "--boot-timeout",
    "boot_timeout_s",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=1.0),
    help="Seconds a VM may take to boot and start its job; then it fails saying its image "
    "does not boot or has no cloud-init.",
)
@click.option("--parent-pid", type=int, hidden=True, help="Stop when this process is gone.")
def worker_command(
    service_url: str,
    token_file: Path,
    cache_dir: Path | None,
    image_cache: Path | None,
    max_vms: int,
    cpu_cap: int,
    max_memory_mib: int | None,
    max_vcpus: int | None,
    cache_mib: int,
    allow_network: bool,
    busy_load: float | None,
    hypervisors: tuple[str, ...],
    accel: str,
    file_roots: tuple[Path, ...],
    ca_file: Path | None,
    tls_server_name: str | None,
    boot_timeout_s: float,
    parent_pid: int | None,
) -> None:
    """Pull jobs from a bes service and run them in VMs on this machine.

    Exit status 3 means the service refused this worker (unknown or revoked token).
    """
    import signal
    import threading

    from bes.vm.spec import Hypervisor
    from bes.vmlocal import default_cache_dir, default_image_cache
    from bes.worker.config import WorkerConfig
    from bes.worker.node import Worker, watch_parent

    physical_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    config = WorkerConfig(
        service=service_url,
        token=token_file.read_text().strip(),
        cache_dir=(cache_dir or default_cache_dir() / "worker").resolve(),
        # An explicit --cache-dir keeps its images to itself (an isolated worker); otherwise
        # the node's one image cache.
        image_cache_dir=(
            image_cache.resolve()
            if image_cache
            else (None if cache_dir else default_image_cache().resolve())
        ),
        max_vms=max_vms,
        cpu_cap_percent=cpu_cap,
        max_memory_mib=max_memory_mib or max(256, physical_mib // 2),
        max_vcpus=max_vcpus or os.cpu_count() or 1,
        cache_limit_mib=cache_mib,
        allow_network=allow_network,
        busy_load=busy_load,
        hypervisors=tuple(Hypervisor(h) for h in hypervisors),
        accelerator=accel,
        file_roots=tuple(root.resolve() for root in file_roots),
        ca_file=ca_file.resolve() if ca_file is not None else None,
        tls_server_name=tls_server_name,
        boot_timeout_s=boot_timeout_s,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if parent_pid is not None:
        watch_parent(parent_pid, stop)
    worker = Worker(config)
    try:
        worker.run(stop)
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    if worker.refused:
        sys.exit(3)


@click.group("worker-token")
def worker_token() -> None:
    """Issue and revoke the tokens workers sign in with (run on the service's machine)."""


@worker_token.command("create")
@click.argument("name")
@DATA_DIR
@DATABASE_URL
def worker_token_create(name: str, data_dir: Path, database_url: str | None) -> None:
    """Register worker NAME and print its token (shown once: keep it in a file)."""
    from bes.backends.desktopgrid.tokens import create_worker

    with database(data_dir, database_url) as db:
        try:
            token = create_worker(db, name)
        except BesError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(token)


@worker_token.command("revoke")
@click.argument("name")
@DATA_DIR
@DATABASE_URL
def worker_token_revoke(name: str, data_dir: Path, database_url: str | None) -> None:
    """Revoke the token of worker NAME: its next call is refused."""
    from bes.backends.desktopgrid.tokens import revoke_worker

    with database(data_dir, database_url) as db:
        try:
            revoke_worker(db, name)
        except BesError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"revoked the token of worker {name}", err=True)


@worker_token.command("list")
@DATA_DIR
@DATABASE_URL
def worker_token_list(data_dir: Path, database_url: str | None) -> None:
    """List the workers, their state and when they were last heard of."""
    from bes.db import grid_rows

    with database(data_dir, database_url) as db:
        workers = db.read_sync(grid_rows.list_workers)
    for w in workers:
        state = "revoked" if w.revoked_at else "live"
        seen = w.last_seen_at.isoformat(timespec="seconds") if w.last_seen_at else "never"
        click.echo(f"{w.name:20} {w.pool:16} {state:8} last seen {seen}")
