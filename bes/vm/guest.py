"""The guest side of a job: the user-data script that runs it, and the disks it talks through.

The job travels as a POSIX shell script in cloud-init user-data, so any image with cloud-init
(or the tiny template's init, which runs "#!" user-data the same way) runs it. The script
finds its disks by their first bytes, not by device names, which differ between hypervisors:

* the input disk is a tar archive whose first member is ``.bes-input-<instance id>``; it holds
  the job's input files under ``job/`` and contextualization files under ``context/``;
* the output disk starts with ``BESOUT1 <instance id>``; the script overwrites it with a tar
  archive of ``stdout``, ``stderr``, ``exit_code``, ``timing``, ``missing`` and ``outputs/``,
  which the host reads without mounting anything;
* an optional scratch disk starts with ``BESSCRATCH1 <instance id>``; the script makes a
  filesystem on it and runs the job there.

Its first act is to write :func:`started_marker` to the serial console, so the host knows the
image booted and ran the seed (an image that does not boot, or has no cloud-init, never
does). Then it runs the job, syncs and powers the VM off. Everything user-supplied is
shell-quoted.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from bes.errors import UnsupportedFeature

DEFAULT_WORKING_DIRECTORY = "/var/tmp/bes-job"  # noqa: S108 - a path in the guest
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def started_marker(instance_id: str) -> str:
    """What the job script writes to the serial console as soon as it runs: the host's
    sign that the image booted and ran the seed's user-data."""
    return f"BES-JOB-STARTED {instance_id}"


def input_marker(instance_id: str) -> str:
    return f".bes-input-{instance_id}"


def output_marker(instance_id: str) -> bytes:
    return f"BESOUT1 {instance_id}\n".encode()


def scratch_marker(instance_id: str) -> bytes:
    return f"BESSCRATCH1 {instance_id}\n".encode()


@dataclass(frozen=True)
class GuestLimits:
    """Per-process limits applied with ulimit before the job starts."""

    cpu_time_s: int | None = None
    open_files: int | None = None
    virtual_memory_kib: int | None = None
    stack_kib: int | None = None
    core_file_kib: int | None = None


@dataclass(frozen=True)
class GuestTask:
    """What to run inside the guest (from POSIXApplication or HPCProfileApplication)."""

    executable: str
    arguments: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    working_directory: str | None = None
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    outputs: tuple[str, ...] = ()
    limits: GuestLimits = field(default_factory=GuestLimits)
    pre_commands: tuple[str, ...] = ()
    """Shell lines run before the executable, in its environment (a failing one ends the job
    with its exit status)."""
    post_commands: tuple[str, ...] = ()
    """Shell lines run after the executable; the job's exit status stays the executable's."""


def user_data(task: GuestTask, instance_id: str, *, scratch_disk: bool = False) -> str:
    """The shell script that runs ``task`` in the guest and reports back on the output disk.

    The host always attaches the input and output disks; ``scratch_disk`` says whether it
    attaches a scratch disk too.
    """
    for name, _ in task.environment:
        if not _ENV_NAME.match(name):
            raise UnsupportedFeature([f"environment variable name {name!r}"])
    q = shlex.quote
    workdir = task.working_directory or DEFAULT_WORKING_DIRECTORY
    command = " ".join(q(word) for word in (task.executable, *task.arguments))
    exports = "".join(f"    export {name}={q(value)}\n" for name, value in task.environment)
    limits = "".join(
        f"    ulimit -{flag} {value} || echo 'bes: cannot set ulimit -{flag} {value}' >&2\n"
        for flag, value in (
            ("t", task.limits.cpu_time_s),
            ("n", task.limits.open_files),
            ("v", task.limits.virtual_memory_kib),
            ("s", task.limits.stack_kib),
            ("c", task.limits.core_file_kib),
        )
        if value is not None
    )
    copies = "".join(
        f'cp "$R/{stream}" {_in_workdir(name)} 2>/dev/null\n'
        for stream, name in (("stdout", task.stdout), ("stderr", task.stderr))
        if name
    )
    outputs = ""
    if task.outputs:
        outputs = _OUTPUTS.format(names=" ".join(q(name) for name in task.outputs))
    scratch = _SCRATCH.format(marker=q(scratch_marker(instance_id).decode().rstrip("\n")))
    run = f"    exec {command}\n"
    if task.pre_commands or task.post_commands:
        run = "".join(f"    /bin/sh -c {q(line)} || exit $?\n" for line in task.pre_commands)
        run += f"    {command}\n    rc=$?\n"
        run += "".join(f"    /bin/sh -c {q(line)}\n" for line in task.post_commands)
        run += "    exit $rc\n"
    return _SCRIPT.format(
        instance_id=q(instance_id),
        started=q(started_marker(instance_id)),
        input_marker=q(input_marker(instance_id)),
        output_marker=q(output_marker(instance_id).decode().rstrip("\n")),
        scratch=scratch if scratch_disk else "",
        workdir=q(workdir),
        exports=exports,
        limits=limits,
        run=run,
        stdin=_in_workdir(task.stdin) if task.stdin else "/dev/null",
        copies=copies,
        outputs=outputs,
    )


def _in_workdir(name: str) -> str:
    """A shell word for a file name: absolute as given, relative to the working directory."""
    return shlex.quote(name) if name.startswith("/") else f'"$WORK"/{shlex.quote(name)}'


_SCRATCH = """\
SCRATCH=$(find_disk {marker}) && mkdir -p "$WORK" &&
    mke2fs -q -F -L bes-scratch "$SCRATCH" >/dev/null 2>&1 && mount "$SCRATCH" "$WORK"
"""

_OUTPUTS = """\
for name in {names}; do
    if [ -e "$WORK/$name" ]; then
        mkdir -p "$R/outputs/$(dirname "$name")" && cp -R "$WORK/$name" "$R/outputs/$name"
    else
        echo "$name" >> "$R/missing"
    fi
done
"""

_SCRIPT = """\
#!/bin/sh
# bes job {instance_id}: generated; runs the job and writes its results to the output disk.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export PATH
umask 022
for console in /dev/ttyS0 /dev/console; do
    {{ echo {started} > "$console"; }} 2>/dev/null && break
done
R=/run/bes-result
mkdir -p "$R/outputs" 2>/dev/null || {{ R=/tmp/bes-result; mkdir -p "$R/outputs"; }}
: > "$R/missing"
now() {{ cut -d' ' -f1 /proc/uptime; }}

find_disk() {{
    tries=0
    while [ $tries -lt 50 ]; do
        for block in /sys/block/*; do
            device=/dev/${{block##*/}}
            [ -b "$device" ] || continue
            if [ "$(head -c ${{#1}} "$device" 2>/dev/null)" = "$1" ]; then
                echo "$device"
                return 0
            fi
        done
        tries=$((tries + 1))
        sleep 0.1 2>/dev/null || sleep 1
    done
    return 1
}}

finish() {{
    sync
    poweroff -f 2>/dev/null || poweroff 2>/dev/null || echo o > /proc/sysrq-trigger
    exit 0
}}

OUT=$(find_disk {output_marker}) || {{ echo "bes: no output disk" >&2; finish; }}
WORK={workdir}
{scratch}mkdir -p "$WORK" && cd "$WORK" ||
    {{ echo "bes: cannot use working directory $WORK" >&2; finish; }}
I=/run/bes-input
if IN=$(find_disk {input_marker}); then
    mkdir -p "$I" && (cd "$I" && tar -xf "$IN")
    [ -d "$I/job" ] && cp -R "$I/job/." "$WORK/"
    if [ -d "$I/context" ]; then
        (cd "$I/context" && find . ! -type d) | while read -r path; do
            target=${{path#.}}
            mkdir -p "$(dirname "$target")" && cp "$I/context/$path" "$target"
        done
        [ -f "$I/modes" ] && while read -r mode path; do chmod "$mode" "$path"; done < "$I/modes"
    fi
else
    echo "bes: no input disk" >&2
fi

STARTED=$(now)
(
{exports}{limits}{run}) < {stdin} > "$R/stdout" 2> "$R/stderr"
RC=$?
FINISHED=$(now)

{copies}{outputs}echo "$RC" > "$R/exit_code"
printf 'started %s\\nfinished %s\\n' "$STARTED" "$FINISHED" > "$R/timing"
(cd "$R" && tar -cf - .) > "$OUT" || echo "bes: the results do not fit on the output disk" >&2
finish
"""
