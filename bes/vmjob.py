"""From a JSDL job definition to a VM job: what runs in the guest, in which VM, with what.

The POSIXApplication (or HPCProfileApplication) says what runs; the vm:VirtualMachine
extension says in which VM. A document without the extension runs in the default VM
(``VmDefaults``), sized from its Resources (IndividualPhysicalMemory, IndividualCPUCount)
when it gives them. Inputs are the DataStaging files with a Source, which the caller has
already fetched to local paths; outputs are those with a Target.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bes.errors import UnsupportedFeature
from bes.jsdl.model import JobDefinition, Limits, RangeValue
from bes.vm.guest import GuestLimits, GuestTask
from bes.vm.job import VmJob
from bes.vm.lease import VmLease, lease_network
from bes.vm.media import UnsafePath, safe_relative
from bes.vm.repository import Catalog, ImageRepository
from bes.vm.spec import ImageFormat, ImageRef, Lease, VirtualMachine

_MIB = 1024 * 1024


@dataclass(frozen=True)
class VmDefaults:
    """The VM of a job that names none, and the values a VirtualMachine leaves out."""

    template: str = "tiny"
    memory_mib: int = 256
    vcpus: int = 1
    wall_time_s: int = 3600
    os_type: str = "Linux_64"
    boot_timeout_s: float | None = 600.0
    """How long an image may take to boot and start the job before it is given up."""


@dataclass(frozen=True)
class StagedFile:
    file_name: str
    uri: str


def staged_inputs(job: JobDefinition) -> list[StagedFile]:
    return [
        StagedFile(staging.file_name, staging.source)
        for staging in job.job_description.data_staging
        if staging.source is not None
    ]


def staged_outputs(job: JobDefinition) -> list[StagedFile]:
    return [
        StagedFile(staging.file_name, staging.target)
        for staging in job.job_description.data_staging
        if staging.target is not None
    ]


def kept_files(job: JobDefinition) -> tuple[str, ...]:
    """DataStaging files the service keeps for the job's owner (besides stdout and stderr).

    JSDL lets the consumer decide when DeleteOnTermination is absent (GFD.56 §8.5). Kept are:
    a file with neither Source nor Target unless DeleteOnTermination is true (naming it is
    asking for it), and any other file whose DeleteOnTermination is false (an input as it is
    at the end, or an output also delivered to its Target).
    """
    kept = []
    for staging in job.job_description.data_staging:
        named_only = staging.source is None and staging.target is None
        if staging.delete_on_termination is False or (
            named_only and staging.delete_on_termination is None
        ):
            kept.append(staging.file_name)
    return tuple(dict.fromkeys(kept))


def returned_files(job: JobDefinition) -> tuple[str, ...]:
    """Files the guest brings back: those to deliver to a Target and those to keep."""
    names = [staged.file_name for staged in staged_outputs(job)] + list(kept_files(job))
    return tuple(dict.fromkeys(names))


def guest_task(job: JobDefinition) -> GuestTask:
    """What runs inside the guest, from the application element.

    Raises:
        UnsupportedFeature: What :func:`guest_problems` names.
    """
    outputs = _guest_outputs(job)
    application = job.job_description.application
    assert application is not None  # (_guest_outputs refuses a job without one)
    if application.posix is not None:
        posix = application.posix
        assert posix.executable is not None
        return GuestTask(
            executable=posix.executable.path,
            arguments=tuple(argument.value for argument in posix.argument),
            environment=tuple((env.name, env.value) for env in posix.environment),
            working_directory=posix.working_directory.path if posix.working_directory else None,
            stdin=posix.input.path if posix.input else None,
            stdout=posix.output.path if posix.output else None,
            stderr=posix.error.path if posix.error else None,
            outputs=outputs,
            limits=_limits(posix.limits),
            pre_commands=application.pre_commands,
            post_commands=application.post_commands,
        )
    hpc = application.hpc_profile
    assert hpc is not None and hpc.executable is not None
    return GuestTask(
        executable=hpc.executable,
        arguments=hpc.argument,
        environment=tuple((env.name, env.value) for env in hpc.environment),
        working_directory=hpc.working_directory,
        stdin=hpc.input,
        stdout=hpc.output,
        stderr=hpc.error,
        outputs=outputs,
        pre_commands=application.pre_commands,
        post_commands=application.post_commands,
    )


def guest_problems(job: JobDefinition) -> list[str]:
    """Why the job's application cannot run inside a guest, as readable feature names (empty:
    it can). The check of :func:`guest_task` without building the task (every create of a
    VM backend makes it)."""
    try:
        _guest_outputs(job)
    except UnsupportedFeature as exc:
        return list(exc.features)
    return []


def _guest_outputs(job: JobDefinition) -> tuple[str, ...]:
    """The files the guest brings back, once its application is known to run in a guest.

    Raises:
        UnsupportedFeature: A file outside the job directory, or an application a guest
            cannot run.
    """
    application = job.job_description.application
    try:
        outputs = tuple(dict.fromkeys(safe_relative(name) for name in returned_files(job)))
    except UnsafePath as exc:
        raise UnsupportedFeature(
            [f"DataStaging FileName outside the job directory: {exc}"]
        ) from exc
    if application is not None and application.posix is not None:
        posix = application.posix
        if posix.executable is None:
            raise UnsupportedFeature(["POSIXApplication without an Executable"])
        if posix.user_name or posix.group_name:
            raise UnsupportedFeature(["POSIXApplication UserName/GroupName in a VM"])
        return outputs
    if application is not None and application.hpc_profile is not None:
        if application.hpc_profile.executable is None:
            raise UnsupportedFeature(["HPCProfileApplication without an Executable"])
        return outputs
    if application is not None and application.spmd is not None:
        raise UnsupportedFeature(["SPMDApplication (parallel jobs) in a VM"])
    raise UnsupportedFeature(["a job without a POSIXApplication or HPCProfileApplication"])


def virtual_machine(
    job: JobDefinition, defaults: VmDefaults, catalog: Catalog | None = None
) -> VirtualMachine:
    """The job's VM description, or the default VM sized from its Resources.

    A job without the VM extension (any grid client's plain JSDL) runs in the template its
    ``Resources/OperatingSystem`` selects in ``catalog`` (see :func:`template_for`), else in
    the catalog's default template, else in ``defaults.template``.

    Raises:
        UnsupportedFeature: The job asks for an operating system no template provides.
    """
    requested = job.job_description.virtual_machine
    if requested is not None:
        return requested
    resources = job.job_description.resources
    memory = vcpus = None
    if resources is not None:
        memory = _at_least(resources.individual_physical_memory_bytes, _MIB)
        vcpus = _at_least(resources.individual_cpu_count, 1)
    return _sized(template_for(job, defaults, catalog), memory, vcpus)


@functools.lru_cache(maxsize=256)
def _sized(template: str, memory_mib: int | None, vcpus: int | None) -> VirtualMachine:
    """A template's VM of a size: one object per distinct value (it is immutable, and plain
    JSDL jobs ask for it on every create)."""
    return VirtualMachine(image=ImageRef(template=template), memory_mib=memory_mib, vcpus=vcpus)


def template_for(job: JobDefinition, defaults: VmDefaults, catalog: Catalog | None) -> str:
    """The template of a plain JSDL job, chosen by its ``Resources/OperatingSystem``.

    A template lists in ``jsdl_os`` what it answers to: an OperatingSystem Description
    (VENUS-C chose images so), ``NAME VERSION`` or ``NAME`` (OperatingSystemName, e.g.
    ``LINUX``), compared without regard to case, most specific first. A job that names no
    operating system, or LINUX without a match, gets the default template.

    Raises:
        UnsupportedFeature: It names another operating system that no template provides.
    """
    default = (catalog.default if catalog is not None else None) or defaults.template
    resources = job.job_description.resources
    wanted = resources.operating_system if resources is not None else None
    if wanted is None:
        return default
    name = (wanted.operating_system_name or "").lower()
    keys = [
        (wanted.description or "").lower(),
        f"{name} {(wanted.operating_system_version or '').lower()}".strip(),
        name,
    ]
    for key in (k for k in keys if k):
        for template_name in catalog.names() if catalog is not None else ():
            template = catalog.get(template_name) if catalog is not None else None
            if template is not None and key in (os.lower() for os in template.jsdl_os):
                return template.name
    if name in ("", "linux"):
        return default
    raise UnsupportedFeature(
        [
            f"Resources/OperatingSystem {wanted.operating_system_name} "
            f"{wanted.operating_system_version or ''}".rstrip()
            + " (no template image at this site provides it)"
        ]
    )


def plan(
    job: JobDefinition,
    job_id: str,
    *,
    repository: ImageRepository,
    inputs: Mapping[str, Path],
    formats: tuple[ImageFormat, ...] = tuple(ImageFormat),
    defaults: VmDefaults | None = None,
    cpu_cap_percent: int = 100,
) -> VmJob:
    """The VM job for ``job``: image fetched, verified and in one of ``formats``;
    ``cpu_cap_percent`` is the host's limit on the VM's CPU use (a volunteer's setting)."""
    defaults = defaults or VmDefaults()
    machine = virtual_machine(job, defaults, repository.site_catalog)
    task = guest_task(job)
    boot, template = repository.resolve(machine.image, formats)
    minimum = template.min_memory_mib if template is not None else 0
    wall_time = machine.wall_time_s or defaults.wall_time_s
    application = job.job_description.application
    posix = application.posix if application is not None else None
    if posix is not None and posix.limits.wall_time_limit_s is not None:
        wall_time = min(wall_time, posix.limits.wall_time_limit_s)
    vm_job = VmJob(
        job_id=job_id,
        boot=boot,
        task=task,
        wall_time_s=wall_time,
        inputs=dict(inputs),
        files=machine.files,
        memory_mib=max(machine.memory_mib or defaults.memory_mib, minimum),
        vcpus=machine.vcpus or defaults.vcpus,
        os_type=machine.os_type or (template.os_type if template is not None else defaults.os_type),
        network=machine.network,
        scratch_disk_mib=machine.scratch_disk_mib,
        user_data=machine.user_data,
        cpu_cap_percent=cpu_cap_percent,
        boot_timeout_s=defaults.boot_timeout_s,
    )
    return vm_job


def lease_of(job: JobDefinition) -> Lease | None:
    """The job's lease, if it is one: its VM extension has a ``vm:Lease``, or the document
    has a VM extension and no application to run (then the lease has no SSH keys of its own).
    """
    machine = job.job_description.virtual_machine
    if machine is None:
        return None
    if machine.lease is not None:
        return machine.lease
    application = job.job_description.application
    if application is None or (
        application.posix is None and application.hpc_profile is None and application.spmd is None
    ):
        return Lease()
    return None


def lease_problems(job: JobDefinition, lease: Lease) -> list[str]:
    """What makes ``job`` not a lease the service can run (readable feature names)."""
    application = job.job_description.application
    if application is not None and (
        application.posix is not None
        or application.hpc_profile is not None
        or application.spmd is not None
    ):
        return ["vm:Lease with an application (a lease runs none; drop one or the other)"]
    problems = []
    if job.job_description.data_staging:
        problems.append("DataStaging in a VM lease (copy files with scp through bes port-forward)")
    machine = job.job_description.virtual_machine
    for forward in machine.network.port_forwards if machine is not None else ():
        if forward.host_address not in ("127.0.0.1", "::1", "localhost"):
            problems.append(
                f"vm:PortForward hostAddress {forward.host_address!r} in a VM lease (its ports "
                "stay on the worker's loopback and are reached through the service)"
            )
    return problems


def plan_lease(
    job: JobDefinition,
    lease_id: str,
    lease: Lease,
    *,
    repository: ImageRepository,
    formats: tuple[ImageFormat, ...] = tuple(ImageFormat),
    defaults: VmDefaults | None = None,
    cpu_cap_percent: int = 100,
) -> VmLease:
    """The VM lease for ``job``: image fetched and verified, host ports fixed, a new host key.

    Raises:
        UnsupportedFeature: The image cannot host a lease (no cloud-init), or the document
            is not a lease the service runs.
    """
    defaults = defaults or VmDefaults()
    problems = lease_problems(job, lease)
    if problems:
        raise UnsupportedFeature(problems)
    machine = virtual_machine(job, defaults, repository.site_catalog)
    boot, template = repository.resolve(machine.image, formats)
    if not boot.runs_cloud_config:
        raise UnsupportedFeature(
            [
                f"a VM lease in {machine.image.describe()}: it has no cloud-init to install "
                "SSH keys (use the template debian-12)"
            ]
        )
    minimum = template.min_memory_mib if template is not None else 0
    return VmLease(
        lease_id=lease_id,
        boot=boot,
        lease=lease,
        wall_time_s=machine.wall_time_s or defaults.wall_time_s,
        network=lease_network(machine.network),
        files=machine.files,
        memory_mib=max(machine.memory_mib or defaults.memory_mib, minimum),
        vcpus=machine.vcpus or defaults.vcpus,
        os_type=machine.os_type or (template.os_type if template is not None else defaults.os_type),
        user_data=machine.user_data,
        cpu_cap_percent=cpu_cap_percent,
        boot_timeout_s=defaults.boot_timeout_s,
    )


def _limits(limits: Limits) -> GuestLimits:
    def kib(value: int | None) -> int | None:
        return None if value is None else max(1, value // 1024)

    return GuestLimits(
        cpu_time_s=limits.cpu_time_limit_s,
        open_files=limits.open_descriptors_limit,
        virtual_memory_kib=kib(limits.virtual_memory_limit_bytes),
        stack_kib=kib(limits.stack_size_limit_bytes),
        core_file_kib=kib(limits.core_dump_limit_bytes),
    )


def _at_least(value: RangeValue | None, unit: int) -> int | None:
    lowest = value.lowest() if value is not None else None
    if lowest is None or lowest <= 0:
        return None
    return max(1, math.ceil(lowest / unit))
