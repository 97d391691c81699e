"""Tables and converters of the desktop grid: what a job needs of a worker, what the service
can accept, and queue rows as BES job statuses."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Final

from bes.backends.base import JobState, JobStatus
from bes.backends.desktopgrid.routing import Needs
from bes.db.grid_rows import GridJobStatus, GridState
from bes.errors import UnsupportedFeature
from bes.jsdl.model import JobDefinition
from bes.states import SubState
from bes.vm.job import DEFAULT_OUTPUT_DISK_MIB
from bes.vm.repository import Catalog
from bes.vm.spec import VirtualMachine
from bes.vmjob import VmDefaults, guest_problems, lease_of, lease_problems, virtual_machine

SOURCE_SCHEMES: Final = frozenset({"http", "https", "ftp", "file", "inline", "bes-store"})
"""DataStaging Source URI schemes a worker fetches (inline: UNICORE's data in the document;
bes-store: the service's file store, as stored jobs name it)."""
TARGET_SCHEMES: Final = frozenset({"http", "https", "ftp", "file", "bes-store"})
"""DataStaging Target URI schemes a worker delivers to (file: only under its allowed roots)."""

WORKER_SUBSTATES: Final = {
    s.value: s
    for s in (
        SubState.PROVISIONING,
        SubState.STAGING_IN,
        SubState.EXECUTING,
        SubState.STAGING_OUT,
        SubState.SUSPENDED,
    )
}
"""Sub-states a worker reports while it holds a lease."""

_STATES: Final = {
    GridState.FINISHED: JobState.FINISHED,
    GridState.FAILED: JobState.FAILED,
    GridState.CANCELLED: JobState.CANCELLED,
}


def requirements(machine: VirtualMachine, defaults: VmDefaults, catalog: Catalog) -> Needs:
    """A job's VM (bes.vmjob.virtual_machine) as a worker must fit it (memory at least the
    template's minimum)."""
    template = catalog.get(machine.image.template) if machine.image.template else None
    minimum = template.min_memory_mib if template is not None else 0
    return Needs(
        memory_mib=max(machine.memory_mib or defaults.memory_mib, minimum),
        vcpus=machine.vcpus or defaults.vcpus,
        disk_mib=(machine.scratch_disk_mib or 0) + DEFAULT_OUTPUT_DISK_MIB,
        # Only outbound access is a network to a volunteer: a NAT with port forwards alone
        # (QEMU's restrict=on) lets the guest reach nothing but what is forwarded to it.
        network=machine.network.outbound,
        hypervisors=tuple(h.value for h in machine.hypervisors),
    )


def unsupported(
    job: JobDefinition, defaults: VmDefaults, catalog: Catalog, pools: Sequence[str]
) -> list[str]:
    """What in ``job`` the desktop grid cannot run, as readable feature names (``pools``: the
    pools a job may name)."""
    return examine(job, defaults, catalog, pools)[0]


def examine(
    job: JobDefinition, defaults: VmDefaults, catalog: Catalog, pools: Sequence[str]
) -> tuple[list[str], VirtualMachine | None]:
    """What :func:`unsupported` says, and the job's virtual machine (None if it has none that
    can run), worked out once for both."""
    features: list[str] = []
    lease = lease_of(job)
    if lease is not None:
        features.extend(lease_problems(job, lease))
    elif job.job_description.application is not None:  # else a data-staging job: no VM
        features.extend(guest_problems(job))
    for staging in job.job_description.data_staging:
        for role, uri, schemes in (
            ("Source", staging.source, SOURCE_SCHEMES),
            ("Target", staging.target, TARGET_SCHEMES),
        ):
            if uri is None:
                continue
            scheme = urllib.parse.urlsplit(uri).scheme.lower()
            if scheme not in schemes:
                shown = ", ".join(sorted(schemes))
                features.append(
                    f"DataStaging {role} {uri!r} for {staging.file_name!r}: "
                    f"{scheme or 'relative'} URIs (this service stages {shown})"
                )
    try:
        machine = virtual_machine(job, defaults, catalog)
    except UnsupportedFeature as exc:
        return [*features, *exc.features], None
    name = machine.image.template
    if name is not None:
        template = catalog.get(name)
        if template is None:
            known = ", ".join(catalog.names())
            features.append(f"vm:Template {name!r} (this site's templates: {known})")
        elif lease is not None and not template.runs_cloud_config:
            features.append(
                f"vm:Lease in template {name!r}, which has no cloud-init to install SSH keys "
                "(use the template debian-12)"
            )
        elif machine.user_data and not template.runs_cloud_config:
            features.append(
                f"vm:Contextualization/vm:UserData for template {name!r}, which runs only the "
                "job's own script (it has no cloud-init)"
            )
    if machine.pool is not None and machine.pool not in pools:
        features.append(f"vm:Pool {machine.pool!r} (this service's pools: {', '.join(pools)})")
    return features, machine


def to_job_status(row: GridJobStatus) -> JobStatus:
    """A queue row in BES terms."""
    extra: dict[str, str] = {"attempt": f"{row.attempts}/{row.max_attempts}", "pool": row.pool}
    if row.worker:
        extra["worker"] = row.worker
    if row.access and row.state is GridState.LEASED:
        extra["access"] = row.access
    if row.state in _STATES:
        files = bool(row.result and row.result.get("files"))
        return ended_status(
            row.state, exit_code=row.exit_code, message=row.message, files=files, extra=extra
        )
    if row.state is GridState.QUEUED:
        return queued_status(
            ran=row.ran, message=waiting_message(row.reason, row.message), extra=extra
        )
    return leased_status(substate=row.substate, ran=row.ran, extra=extra)


def waiting_message(reason: str | None, message: str | None) -> str | None:
    """A queued job's status message: why it waits, then what sent it back (if it was)."""
    return "; ".join(m for m in (reason, message) if m) or None


def ended_status(
    state: GridState,
    *,
    exit_code: int | None,
    message: str | None,
    files: bool,
    extra: Mapping[str, str] | None = None,
) -> JobStatus:
    """A job that ended: Finished, Failed or Cancelled, saying whether files were kept."""
    details = dict(extra or {})
    if files:
        details["outputs"] = "kept"
    return JobStatus(state=_STATES[state], message=message, exit_code=exit_code, extra=details)


def queued_status(
    *, ran: bool, message: str | None, extra: Mapping[str, str] | None = None
) -> JobStatus:
    """A job in the queue. One back in the queue after it started stays Running: BES has no
    way back to Pending."""
    if ran:
        return JobStatus(state=JobState.RUNNING, message=message, extra=dict(extra or {}))
    return JobStatus(
        state=JobState.PENDING,
        substate=SubState.SUBMITTED,
        message=message,
        extra=dict(extra or {}),
    )


def leased_status(
    *, substate: str | None, ran: bool, extra: Mapping[str, str] | None = None
) -> JobStatus:
    """A job a worker holds, in the sub-state it reported (Provisioning until it says)."""
    found = WORKER_SUBSTATES.get(substate or "", SubState.PROVISIONING)
    if found is SubState.PROVISIONING:
        if ran:
            return JobStatus(state=JobState.RUNNING, extra=dict(extra or {}))
        return JobStatus(state=JobState.PENDING, substate=found, extra=dict(extra or {}))
    return JobStatus(state=JobState.RUNNING, substate=found, extra=dict(extra or {}))
