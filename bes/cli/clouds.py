"""``bes cloud``: the cloud pools' worker image and what the pools are doing (run on the
service's machine)."""

from __future__ import annotations

from pathlib import Path

import click

from bes.cli._db import DATA_DIR, DATABASE_URL, database
from bes.errors import BesError


@click.group("cloud")
def cloud() -> None:
    """Cloud pools: build their worker image, see their instances."""


@cloud.command("image")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mirror", help="Debian mirror (default: this machine's apt sources).")
def cloud_image(dest: Path, mirror: str | None) -> None:
    """Build the worker image into DEST (root: debootstrap; about 3 minutes): a Debian disk
    (qcow2) with QEMU, this bes and the tiny template, its kernel and initramfs. Upload the
    disk as the pool's image (a libvirt volume) and name the kernel and initramfs in the
    pool's configuration, as printed."""
    import tempfile

    from bes.vm import workerimage
    from bes.vm.runner import CommandRunner

    runner = CommandRunner()
    try:
        with tempfile.TemporaryDirectory(prefix="bes-wheel-") as scratch:
            wheel = workerimage.build_wheel(workerimage.project_root(), Path(scratch), runner)
            image = workerimage.build(dest.resolve(), runner, wheel=wheel, mirror=mirror)
    except BesError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"# worker image {image.key}: bes {image.bes_version}, Python {image.python_version}, "
        f"kernel {image.kernel_version}, {image.package_count} Debian packages\n"
        f'image = "bes-worker.qcow2"   # {image.disk}, copied into the storage pool\n'
        f'kernel = "{image.kernel}"\n'
        f'initrd = "{image.initrd}"\n'
        f'cmdline = "{image.cmdline}"'
    )


@cloud.command("list")
@DATA_DIR
@DATABASE_URL
def cloud_list(data_dir: Path, database_url: str | None) -> None:
    """What each cloud pool's autoscaler last said, and its live instances."""
    from bes.db import cloud_rows, duty_rows

    with database(data_dir, database_url) as db:
        duties = db.read_sync(duty_rows.duties, cloud_rows.AUTOSCALER_DUTY)
        instances = db.read_sync(cloud_rows.live_instances)
    for duty in duties:
        pool = duty.name.removeprefix(cloud_rows.AUTOSCALER_DUTY)
        click.echo(f"{pool}: {duty.status or 'idle'} (autoscaler on {duty.holder})")
    for i in instances:
        since = i.created_at.isoformat(timespec="seconds")
        click.echo(
            f"  {i.name:24} {i.pool:16} {i.state.value:9} {i.flavor:10} {i.host or '':30} "
            f"since {since}, {i.jobs} job(s)"
        )
    if not duties and not instances:
        click.echo("no cloud pool has run here (bes serve --clouds FILE)")
