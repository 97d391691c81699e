"""``bes images``: the images jobs may name (the site's templates, mine, published ones), and
``bes images push|rm|publish`` for users' own images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bes.cli._client import EXIT_FAULT, JSON, CommandError, client_options, context, note, reported
from bes.cli._render import emit_json, table

if TYPE_CHECKING:
    from bes.client import BESClient

T = TypeVar("T")


@click.group(invoke_without_command=True)
@JSON
@client_options
@click.pass_context
@reported
def images(click_ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """List the images jobs may name: the site's templates, your own images and the
    published ones (vm:Template NAME in a job, or bes jsdl new --image NAME)."""
    if click_ctx.invoked_subcommand is not None:
        return
    found = context(**flags).client().images()
    if as_json:
        emit_json(found)
        return
    rows = [
        (
            str(t.get("name", "")),
            str(t.get("kind", "site")),
            str(t.get("os_type", "")),
            str(t.get("min_memory_mib", "")),
            str(t.get("format", "")) if t.get("sha256") else "built on the node",
            _about(t),
        )
        for t in found
    ]
    click.echo(table(("NAME", "KIND", "OS", "MIN MiB", "FORMAT", "DESCRIPTION"), rows))


def _about(entry: dict[str, Any]) -> str:
    if entry.get("kind", "site") == "site":
        return str(entry.get("description", ""))
    shown = f"owner {entry.get('owner', '?')}, sha256 {str(entry.get('sha256', ''))[:12]}"
    if entry.get("published") and entry.get("kind") == "own":
        shown += ", published"
    return shown


@images.command()
@click.argument("disk", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The name jobs use (vm:Template NAME).")
@click.option("--os", "os_type", help="What the image holds, for people (e.g. debian-12).")
@click.option(
    "--min-memory-mib", type=click.IntRange(min=1), help="Jobs get at least this much memory."
)
@JSON
@client_options
@reported
def push(
    disk: Path,
    name: str,
    os_type: str | None,
    min_memory_mib: int | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Upload DISK as your image NAME (private unless an administrator publishes it).

    The disk goes to your file store (not sent again if it is there; resumed if cut short),
    then the service detects its format from its content (qcow2, vdi, vmdk, iso, raw), refuses
    a disk that names a backing file or other files, and converts a raw disk to qcow2. Jobs
    then name it like a site template; workers fetch it once and cache it by sha256.
    """
    from bes.cli._transfer import TransferLine, size

    client = context(**flags).client()
    line = TransferLine(disk.name)
    try:
        image = _refused_as_fault(
            lambda: client.push_image(
                disk, name, os_type=os_type, min_memory_mib=min_memory_mib, progress=line
            )
        )
    finally:
        line.done()
    if as_json:
        emit_json(image)
        return
    sent = f"{size(line.last_sent - (line.first_sent or 0))} sent" if line.calls else "sent"
    note(f"{disk.name}: {sent} in {line.elapsed_s:.1f} s")
    click.echo(f"{image.get('name')}: {image.get('format')} image, sha256 {image.get('sha256')}")


@images.command("rm")
@click.argument("name")
@client_options
@reported
def remove(name: str, **flags: Any) -> None:
    """Remove your image NAME (its disk stays in your file store until it expires)."""
    client: BESClient = context(**flags).client()
    _refused_as_fault(lambda: client.remove_image(name))
    note(f"{name}: removed")


@images.command()
@click.argument("name")
@click.option("--unpublish", is_flag=True, help="Withdraw it: private to its owner again.")
@click.option("--owner", help="Whose image, when several users have one of that name.")
@client_options
@reported
def publish(name: str, unpublish: bool, owner: str | None, **flags: Any) -> None:
    """Publish a user's image NAME for everyone (administrators only)."""
    client: BESClient = context(**flags).client()
    image = _refused_as_fault(
        lambda: client.publish_image(name, published=not unpublish, owner=owner)
    )
    state = "published" if image.get("published") else "private to its owner"
    note(f"{name} of {image.get('owner')}: {state}")


def _refused_as_fault(call: Callable[[], T]) -> T:
    """The service's refusals exit with status 3, like SOAP faults."""
    from bes.client.files import UploadRefused
    from bes.client.images import ImageRefused

    try:
        return call()
    except (UploadRefused, ImageRefused) as exc:
        raise CommandError(str(exc), EXIT_FAULT) from exc
