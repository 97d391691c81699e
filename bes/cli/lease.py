"""VM leases from the command line: ``bes lease start|suspend|resume``, ``bes ssh``,
``bes port-forward`` (and ``bes tunnel``, the ProxyCommand ``bes ssh`` gives ssh).

A lease is an activity like any other (``bes status``, ``bes cancel ID`` ends it); these
commands start one and reach its VM through the service, which relays over the tunnel its
worker keeps open: the user never needs a route to the worker.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click

from bes.cli._client import (
    EXIT_NOT_FINISHED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    JSON,
    CommandError,
    Context,
    client_options,
    context,
    note,
    reported,
    resolve,
)
from bes.cli._render import emit_json

if TYPE_CHECKING:
    from bes.client import ActivityRef, BESClient

_DEFAULT_KEYS: Final = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")
_POLL_S: Final = 2.0
_ENDED: Final = frozenset({"Finished", "Failed", "Cancelled"})


@click.group()
def lease() -> None:
    """VM leases: a VM of your own on the grid, reached with bes ssh and bes port-forward."""


@lease.command("start")
@click.argument("template", default="debian-12")
@click.option(
    "--ssh-key",
    "ssh_keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Public key file authorized to log in (repeatable; default: ~/.ssh/id_*.pub).",
)
@click.option(
    "--port",
    "ports",
    multiple=True,
    type=click.IntRange(1, 65535),
    help="Guest port to forward besides 22 (repeatable).",
)
@click.option("--name", help="The activity's name (JobName).")
@click.option("--memory", "memory_mib", type=click.IntRange(64), help="Guest memory in MiB.")
@click.option("--vcpus", type=click.IntRange(1), help="Virtual CPUs.")
@click.option(
    "--hours",
    type=click.FloatRange(0, min_open=True),
    default=4.0,
    show_default=True,
    help="How long the VM may run (suspended time does not count).",
)
@click.option("--outbound", is_flag=True, help="Let the guest reach the network.")
@click.option("--pool", help="The pool of workers to run it in (volunteers, cloud:NAME).")
@click.option("--wait/--no-wait", "wait_", default=False, help="Wait until its VM is ready.")
@click.option("--wait-timeout", type=float, default=900.0, show_default=True)
@JSON
@client_options
@reported
def start(
    template: str,
    ssh_keys: tuple[Path, ...],
    ports: tuple[int, ...],
    name: str | None,
    memory_mib: int | None,
    vcpus: int | None,
    hours: float,
    outbound: bool,
    pool: str | None,
    wait_: bool,
    wait_timeout: float,
    as_json: bool,
    **flags: Any,
) -> None:
    """Start a VM lease of TEMPLATE (default debian-12); print its activity id.

    Your SSH public keys are installed in the guest at boot; its host key is made on the
    worker and reported back, so bes ssh ID logs in without a prompt.
    """
    from bes.client import jsdl

    keys = [_read_key(path) for path in ssh_keys or _default_keys()]
    document = jsdl.lease(
        ssh_keys=keys,
        template=template,
        name=name or "lease",
        ports=ports,
        memory_mib=memory_mib,
        vcpus=vcpus,
        wall_time_s=round(hours * 3600),
        outbound=outbound,
        pool=pool,
    )
    ctx = context(**flags)
    client = ctx.client()
    ref = client.submit(document, check=False)
    ctx.jobs.add(ref, endpoint=client.url, name=name or "lease")
    if as_json:
        emit_json({"id": ref.name, "address": ref.address})
    else:
        click.echo(ref.name)
        note(f"lease {ref.name} submitted; bes ssh {ref.name} logs in once its VM is up")
    if wait_:
        _ready(client, ref, wait_timeout)


@lease.command("suspend")
@click.argument("activity")
@client_options
@reported
def suspend(activity: str, **flags: Any) -> None:
    """Pause a lease's VM (its wall time stops until bes lease resume)."""
    _suspend(activity, flags, suspended=True)


@lease.command("resume")
@click.argument("activity")
@client_options
@reported
def resume(activity: str, **flags: Any) -> None:
    """Let a suspended lease's VM go on."""
    _suspend(activity, flags, suspended=False)


def _suspend(activity: str, flags: dict[str, Any], *, suspended: bool) -> None:
    _ctx, client, ref = _one(activity, flags)
    client.suspend(ref, suspended=suspended)
    doing = "suspending" if suspended else "resuming"
    note(f"{ref.name}: {doing} (its worker applies it at its next heartbeat)")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("activity")
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
@click.option("-l", "--login", help="Log in as this user (default: the lease's).")
@click.option(
    "--wait-timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="Wait this long for the VM to be ready.",
)
@client_options
@reported
def ssh(
    activity: str, ssh_args: tuple[str, ...], login: str | None, wait_timeout: float, **flags: Any
) -> None:
    """Log in to a lease's VM with the system ssh (bes ssh ID [-- SSH ARGS or a command]).

    The connection goes through the service (ssh's ProxyCommand is bes tunnel), with your
    own keys and agent; the guest's host key is the one its worker reported, so the first
    connection is checked like any other, without a prompt.
    """
    ctx, client, ref = _one(activity, flags)
    found = _ready(client, ref, wait_timeout)
    alias = f"bes-{ref.name}"
    with tempfile.TemporaryDirectory(prefix="bes-ssh-") as scratch:
        known_hosts = Path(scratch) / "known_hosts"
        known_hosts.write_text("".join(f"{alias} {key}\n" for key in found["host_keys"]))
        argv = ssh_argv(found, alias, known_hosts, login, ssh_args)
        try:
            done = subprocess.run(argv, env=_credentials_env(ctx), check=False)
        except FileNotFoundError as exc:
            raise CommandError("ssh is not installed (openssh-client)", EXIT_USAGE) from exc
    sys.exit(done.returncode)


@click.command("port-forward")
@click.argument("activity")
@click.argument("guest_port", type=click.IntRange(1, 65535))
@click.argument("local_port", type=click.IntRange(0, 65535), default=0)
@click.option("--address", default="127.0.0.1", show_default=True, help="Where to listen.")
@click.option("--wait-timeout", type=float, default=900.0, show_default=True)
@client_options
@reported
def port_forward(
    activity: str,
    guest_port: int,
    local_port: int,
    address: str,
    wait_timeout: float,
    **flags: Any,
) -> None:
    """Listen on LOCAL_PORT (default: any free one) and carry each connection to GUEST_PORT
    of a lease's VM through the service, until interrupted."""
    from bes.client.tunnel import PortForward

    _ctx, client, ref = _one(activity, flags)
    found = _ready(client, ref, wait_timeout)
    forward = PortForward(
        found["tunnel"],
        guest_port,
        client.tunnel_options(),
        local_port=local_port,
        host=address,
    )
    click.echo(f"forwarding {address}:{forward.port} -> {ref.name} port {guest_port}", err=True)
    click.echo(forward.port)
    sys.stdout.flush()
    try:
        forward.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        forward.close()


@click.command(hidden=True)
@click.argument("tunnel_url")
@click.argument("port", type=click.IntRange(1, 65535))
@client_options
@reported
def tunnel(tunnel_url: str, port: int, **flags: Any) -> None:
    """One stream to PORT of a lease's guest on stdin and stdout (ssh's ProxyCommand)."""
    from bes.client.tunnel import open_stream, stdio

    ctx = context(**flags)
    stdio(open_stream(tunnel_url, port, ctx.client().tunnel_options()))


def ssh_argv(
    found: dict[str, Any],
    alias: str,
    known_hosts: Path,
    login: str | None,
    ssh_args: tuple[str, ...],
) -> list[str]:
    """The system ssh's command line for a lease (``found``: its JSON, from the service):
    the tunnel as ProxyCommand, the host key checked strictly under ``alias``, then the
    user's own options, the host, and the remote command if any."""
    proxy = shlex.join([sys.executable, "-m", "bes", "tunnel", found["tunnel"], "22"])
    split = _options_end(ssh_args)
    command = ssh_args[split:]
    if command[:1] == ("--",):  # the end of ssh's options, not part of the command
        command = command[1:]
    return [
        "ssh",
        "-o", f"ProxyCommand={proxy}",
        "-o", f"HostKeyAlias={alias}",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "CheckHostIP=no",
        "-l", login or found["user"],
        *ssh_args[:split],
        alias,
        *command,
    ]  # fmt: skip


def _one(activity: str, flags: dict[str, Any]) -> tuple[Context, BESClient, ActivityRef]:
    ctx = context(**flags)
    [(endpoint, ref)] = resolve(ctx, (activity,), False)
    return ctx, ctx.client(endpoint), ref


def _ready(client: BESClient, ref: ActivityRef, timeout_s: float) -> dict[str, Any]:
    """The lease once its VM is ready (waiting, and saying why, until then)."""
    deadline = time.monotonic() + timeout_s
    said = None
    while True:
        found = client.lease(ref)
        if found.get("ready"):
            return found
        if found.get("state") in _ENDED:
            raise CommandError(
                f"{ref.name} is {found['state']}: {found.get('message') or 'its VM is gone'}",
                EXIT_NOT_FINISHED,
            )
        shown = "/".join(s for s in (found.get("state"), found.get("substate")) if s)
        why = f": {found['message']}" if found.get("message") else ""
        update = f"{ref.name}: waiting for its VM ({shown}{why})"
        if update != said:
            note(update)
            said = update
        if time.monotonic() > deadline:
            raise CommandError(
                f"{ref.name}: its VM was not ready within {timeout_s:g} s", EXIT_TIMEOUT
            )
        time.sleep(_POLL_S)


def _default_keys() -> list[Path]:
    found = [Path.home() / ".ssh" / name for name in _DEFAULT_KEYS]
    found = [path for path in found if path.is_file()]
    if not found:
        raise CommandError(
            "no SSH public key: give --ssh-key FILE (make one with ssh-keygen -t ed25519)",
            EXIT_USAGE,
        )
    return found


def _read_key(path: Path) -> str:
    try:
        text = path.expanduser().read_text().strip()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from exc
    if "PRIVATE KEY" in text:
        raise CommandError(f"{path} is a private key; give its .pub file", EXIT_USAGE)
    return text


def _options_end(args: tuple[str, ...]) -> int:
    """Where ssh's own options end in ``args`` and the remote command begins (the first
    word that is not an option or an option's value)."""
    with_value = set("BbcDEeFIiJLlmOopQRSWw")
    index = 0
    while index < len(args) and args[index].startswith("-") and args[index] != "--":
        flag = args[index]
        index += 1
        if len(flag) == 2 and flag[1] in with_value:
            index += 1
    return index


def _credentials_env(ctx: Context) -> dict[str, str]:
    """This process's environment plus the resolved endpoint and credentials, for the
    ProxyCommand (a prompted password included: it cannot prompt on ssh's pipe)."""
    config = ctx.config
    env = dict(os.environ)
    values = {
        "BES_ENDPOINT": config.endpoint,
        "BES_USERNAME": config.username,
        "BES_PASSWORD": config.password,
        "BES_CERTIFICATE": str(config.certificate) if config.certificate else None,
        "BES_KEY": str(config.key) if config.key else None,
        "BES_CA_FILE": str(config.ca_file) if config.ca_file else None,
    }
    env.update({k: v for k, v in values.items() if v})
    return env
