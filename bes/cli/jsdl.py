"""``bes jsdl new``: a commented JSDL document for a command and an image.

``--input data.csv`` (a path, no ``=URI``) makes a Source that is the file's path relative to
the document (``-o``, else the working directory), which ``bes submit`` uploads; in the job's
directory the file has the path's base name.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from bes.cli._client import EXIT_INVALID_JSDL, EXIT_USAGE, CommandError, note


@click.group()
def jsdl() -> None:
    """Write JSDL documents."""


@jsdl.command("new", context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (default: standard output).",
)
@click.option("--name", help="The job's name.")
@click.option("--image", default="tiny", show_default=True, help="Template image (bes images).")
@click.option("--image-uri", help="Your own image instead: its URL ...")
@click.option("--sha256", help="... its sha256 ...")
@click.option(
    "--format", "image_format", default="qcow2", show_default=True, help="... and its format."
)
@click.option("--memory-mib", type=click.IntRange(1), help="Guest memory.")
@click.option("--vcpus", type=click.IntRange(1), help="Virtual CPUs.")
@click.option("--wall-time", "wall_time_s", type=click.IntRange(1), help="Seconds it may run.")
@click.option("--env", "environment", multiple=True, metavar="NAME=VALUE", help="Environment.")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="PATH|FILE=URI",
    help="Fetch before: a local file (bes submit uploads it; named by its base name in the "
    "job), or FILE=URI.",
)
@click.option("--output-to", "outputs", multiple=True, metavar="FILE=URI", help="Deliver after.")
@click.option("--keep", multiple=True, metavar="FILE", help="Keep a file for bes get.")
@click.option("--no-vm", is_flag=True, help="Plain JSDL: the service picks its default VM.")
def jsdl_new(
    command: tuple[str, ...],
    output: Path | None,
    name: str | None,
    image: str,
    image_uri: str | None,
    sha256: str | None,
    image_format: str,
    memory_mib: int | None,
    vcpus: int | None,
    wall_time_s: int | None,
    environment: tuple[str, ...],
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    keep: tuple[str, ...],
    no_vm: bool,
) -> None:
    """Write a commented JSDL document that runs COMMAND in a VM.

    Everything after the first argument belongs to the command:
    bes jsdl new -o job.jsdl --name hello --input data.csv /bin/wc -l data.csv
    """
    from bes.client import faults
    from bes.client import jsdl as builder

    if image_uri and not sha256:
        raise click.UsageError("--image-uri needs --sha256")
    chosen: str | builder.ImageURI = (
        builder.ImageURI(uri=image_uri, sha256=sha256 or "", format=image_format)
        if image_uri
        else image
    )
    try:
        document = builder.build(
            list(command),
            name=name,
            image=chosen,
            vm=not no_vm,
            memory_mib=memory_mib,
            vcpus=vcpus,
            wall_time_s=wall_time_s,
            environment=_pairs(environment, "--env"),
            inputs=_inputs(inputs, Path(output).parent if output else Path()),
            outputs=_pairs(outputs, "--output-to"),
            keep=list(keep),
            commented=True,
        )
    except faults.InvalidJsdl as exc:
        raise CommandError(str(exc), EXIT_INVALID_JSDL) from exc
    if output is None:
        sys.stdout.buffer.write(document)
    else:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_bytes(document)
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror}", EXIT_USAGE) from exc
        note(f"wrote {output}; submit it with: bes submit {output} --wait")


def _inputs(values: Sequence[str], document_dir: Path) -> dict[str, str]:
    """File name in the job → Source URI. A bare path, or a FILE=URI whose URI has no scheme,
    is a local file: its path (from the working directory) is written relative to the
    document's directory, which is where ``bes submit`` resolves it."""
    from bes.client import staging

    found: dict[str, str] = {}
    for value in values:
        name, sep, where = value.partition("=")
        if not sep:
            name, where = Path(value).name, value
            if name in ("", ".", ".."):
                raise click.UsageError(f"--input {value!r} names no file")
        elif not name or not where:
            raise click.UsageError(f"--input takes a PATH or FILE=URI, not {value!r}")
        if name in found:
            raise click.UsageError(
                f"two inputs are named {name!r} in the job: give one as FILE=PATH "
                f"(e.g. --input other-{name}={where})"
            )
        if staging.is_local(where):
            if Path(where).is_dir():
                raise click.UsageError(f"--input {where}: is a directory (give a file)")
            if not Path(where).exists():
                note(f"note: --input {where}: no such file yet (bes submit needs it)")
            where = staging.source_uri(where, document_dir)
        found[name] = where
    return found


def _pairs(values: Sequence[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{option} takes NAME=VALUE, not {value!r}")
        pairs[key] = rest
    return pairs
