"""The typed model of a JSDL 1.0 job definition (GFD.136) and its profiles.

Every class mirrors one JSDL element and keeps the spec's name; fields are the element's
children in snake_case, with the unit in the name where the spec fixes one (bytes, seconds,
Hz, bits per second). All values are immutable: frozen, slotted, keyword-only dataclasses and
tuples. Wire enumerations are :class:`enum.StrEnum` with the spec's spelling as value.

Covered:

* JSDL 1.0 core: JobDefinition, JobDescription, JobIdentification, Application, Resources
  (every element, RangeValue semantics), DataStaging.
* JSDL POSIX Application (GFD.136 §8.1), HPC Profile Application (GFD.111), SPMD Application
  (GFD.115).
* HPC File Staging Profile credentials (GFD.135, ``ac:Credential`` with a
  ``wsse:UsernameToken``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from bes.vm.spec import VirtualMachine


class CreationFlag(StrEnum):
    """What to do when a staged file already exists (JSDL §6.5.3)."""

    OVERWRITE = "overwrite"
    """Replace the existing file."""
    DONT_OVERWRITE = "dontOverwrite"
    """Fail the staging if the file exists."""
    APPEND = "append"
    """Append to the existing file."""


class FileSystemType(StrEnum):
    """The kind of a file system a job asks for (JSDL §6.3.2.1)."""

    SWAP = "swap"
    """Swap space."""
    TEMPORARY = "temporary"
    """Scratch space, removed after the job."""
    SPOOL = "spool"
    """Space that survives the job for a while, e.g. for staging."""
    NORMAL = "normal"
    """An ordinary file system."""


class CPUArchitectureName(StrEnum):
    """Processor architectures (JSDL ProcessorArchitectureEnumeration, §6.4.1)."""

    SPARC = "sparc"
    """SPARC."""
    POWERPC = "powerpc"
    """PowerPC."""
    X86 = "x86"
    """Any Intel-compatible 32 or 64 bit processor."""
    X86_32 = "x86_32"
    """32 bit Intel-compatible."""
    X86_64 = "x86_64"
    """64 bit Intel-compatible (amd64)."""
    PARISC = "parisc"
    """HP PA-RISC."""
    MIPS = "mips"
    """MIPS."""
    IA64 = "ia64"
    """Itanium."""
    ARM = "arm"
    """ARM."""
    OTHER = "other"
    """Anything else."""


# --------------------------------------------------------------------------- RangeValue


@dataclass(frozen=True, slots=True, kw_only=True)
class Boundary:
    """One end of a range (JSDL ``Boundary_Type``): a value and whether it is excluded."""

    value: float
    exclusive: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Exact:
    """An exact value (JSDL ``Exact_Type``); matches ``x`` when ``|x - value| <= epsilon``."""

    value: float
    epsilon: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Range:
    """A closed or open interval between two boundaries (JSDL ``Range_Type``)."""

    lower: Boundary
    upper: Boundary


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeValue:
    """A set of acceptable numbers (JSDL ``RangeValue_Type``, §6.1.1).

    The set is the **union** of all parts: a value is acceptable when any part accepts it.
    ``upper_bounded_range`` is (-inf, value], ``lower_bounded_range`` is [value, +inf), each
    open at the bound when ``exclusive`` is set.
    """

    upper_bounded_range: Boundary | None = None
    lower_bounded_range: Boundary | None = None
    exact: tuple[Exact, ...] = ()
    range: tuple[Range, ...] = ()

    def contains(self, x: float) -> bool:
        """True if ``x`` lies in the union of the parts."""
        if math.isnan(x):
            return False
        ub, lb = self.upper_bounded_range, self.lower_bounded_range
        if ub is not None and (x < ub.value or (x == ub.value and not ub.exclusive)):
            return True
        if lb is not None and (x > lb.value or (x == lb.value and not lb.exclusive)):
            return True
        if any(abs(x - e.value) <= e.epsilon for e in self.exact):
            return True
        return any(_in_range(r, x) for r in self.range)

    def lowest(self) -> float | None:
        """The infimum of the set, or None if it is unbounded below or empty.

        Useful to size a resource from a request such as "at least 2 GB": the smallest amount
        that satisfies it. An exclusive bound returns the bound itself; callers that need a
        member round up.
        """
        if self.upper_bounded_range is not None:
            return None
        candidates = [e.value - e.epsilon for e in self.exact]
        candidates += [r.lower.value for r in self.range]
        if self.lower_bounded_range is not None:
            candidates.append(self.lower_bounded_range.value)
        return min(candidates) if candidates else None

    def highest(self) -> float | None:
        """The supremum of the set, or None if it is unbounded above or empty."""
        if self.lower_bounded_range is not None:
            return None
        candidates = [e.value + e.epsilon for e in self.exact]
        candidates += [r.upper.value for r in self.range]
        if self.upper_bounded_range is not None:
            candidates.append(self.upper_bounded_range.value)
        return max(candidates) if candidates else None


def _in_range(r: Range, x: float) -> bool:
    above = x > r.lower.value or (x == r.lower.value and not r.lower.exclusive)
    below = x < r.upper.value or (x == r.upper.value and not r.upper.exclusive)
    return above and below


# --------------------------------------------------------------------------- identification


@dataclass(frozen=True, slots=True, kw_only=True)
class JobIdentification:
    """``jsdl:JobIdentification`` (§6.1): names and labels of the job, not used to run it."""

    job_name: str | None = None
    description: str | None = None
    job_annotation: tuple[str, ...] = ()
    job_project: tuple[str, ...] = ()


# --------------------------------------------------------------------------- applications


@dataclass(frozen=True, slots=True, kw_only=True)
class FileName:
    """A path in a POSIX application element, optionally relative to a named file system."""

    path: str
    filesystem_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Argument:
    """One command-line argument (``jsdl-posix:Argument``, an ``xsd:normalizedString``)."""

    value: str
    filesystem_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvironmentVariable:
    """``Environment``: one variable, ``name`` is required; value may be empty."""

    name: str
    value: str
    filesystem_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The resource limits of ``jsdl-posix:POSIXApplication`` (GFD.136 §8.1.10 to §8.1.22).

    All optional; ``None`` means "not limited by the job". Sizes are bytes, times seconds.
    """

    wall_time_limit_s: int | None = None
    file_size_limit_bytes: int | None = None
    core_dump_limit_bytes: int | None = None
    data_segment_limit_bytes: int | None = None
    locked_memory_limit_bytes: int | None = None
    memory_limit_bytes: int | None = None
    open_descriptors_limit: int | None = None
    pipe_size_limit_bytes: int | None = None
    stack_size_limit_bytes: int | None = None
    cpu_time_limit_s: int | None = None
    process_count_limit: int | None = None
    virtual_memory_limit_bytes: int | None = None
    thread_count_limit: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class POSIXApplication:
    """``jsdl-posix:POSIXApplication``: a command to run on a POSIX system (GFD.136 §8.1)."""

    name: str | None = None
    executable: FileName | None = None
    argument: tuple[Argument, ...] = ()
    input: FileName | None = None
    output: FileName | None = None
    error: FileName | None = None
    working_directory: FileName | None = None
    environment: tuple[EnvironmentVariable, ...] = ()
    limits: Limits = field(default_factory=Limits)
    user_name: str | None = None
    group_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HPCProfileApplication:
    """``jsdl-hpcpa:HPCProfileApplication`` (GFD.111): POSIX-like, without limits or groups."""

    name: str | None = None
    executable: str | None = None
    argument: tuple[str, ...] = ()
    input: str | None = None
    output: str | None = None
    error: str | None = None
    working_directory: str | None = None
    environment: tuple[EnvironmentVariable, ...] = ()
    user_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SPMDApplication:
    """``jsdl-spmd:SPMDApplication`` (GFD.115): a parallel (MPI-style) application.

    ``number_of_processes`` may be replaced or completed by ``actual_total_cpu_count`` ("as
    many processes as CPUs allocated"); likewise ``threads_per_process`` with
    ``actual_individual_cpu_count``.
    """

    name: str | None = None
    executable: FileName | None = None
    argument: tuple[Argument, ...] = ()
    input: FileName | None = None
    output: FileName | None = None
    error: FileName | None = None
    working_directory: FileName | None = None
    environment: tuple[EnvironmentVariable, ...] = ()
    user_name: str | None = None
    number_of_processes: int | None = None
    actual_total_cpu_count: bool = False
    processes_per_host: int | None = None
    threads_per_process: int | None = None
    actual_individual_cpu_count: bool = False
    spmd_variation: str = ""


ApplicationKind = POSIXApplication | HPCProfileApplication | SPMDApplication


@dataclass(frozen=True, slots=True, kw_only=True)
class Application:
    """``jsdl:Application`` (§6.2): what to run.

    At most one of the executable profiles is set; ``None`` with only an ``application_name``
    means "the site's installation of that application" (UNICORE's style).
    """

    application_name: str | None = None
    application_version: str | None = None
    description: str | None = None
    posix: POSIXApplication | None = None
    hpc_profile: HPCProfileApplication | None = None
    spmd: SPMDApplication | None = None
    virtual_machine: VirtualMachine | None = None  # our extension, urn:bes-grid:vm:1.0
    pre_commands: tuple[str, ...] = ()
    """UNICORE's ``jsdl-u:UserPreCommand``: shell lines run before the application."""
    post_commands: tuple[str, ...] = ()
    """UNICORE's ``jsdl-u:UserPostCommand``: shell lines run after the application."""

    @property
    def executable_part(self) -> ApplicationKind | None:
        """The one executable profile element, whichever it is."""
        return self.posix or self.hpc_profile or self.spmd


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSystem:
    """``jsdl:FileSystem`` (§6.3.2): a named file system the job needs."""

    name: str
    file_system_type: FileSystemType | None = None
    description: str | None = None
    mount_point: str | None = None
    disk_space_bytes: RangeValue | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatingSystem:
    """``jsdl:OperatingSystem`` (§6.3.4). ``operating_system_name`` is one of the 70 names of
    JSDL's OperatingSystemTypeEnumeration (from the DMTF CIM list, e.g. ``LINUX``, ``WINNT``),
    enforced by the schema."""

    operating_system_name: str | None = None
    operating_system_version: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """``jsdl:Resources`` (§6.3): what the job needs from the machine that runs it.

    "Individual" values apply to each resource (host) allocated, "Total" values across all of
    them. Each numeric requirement is a :class:`RangeValue`.
    """

    candidate_hosts: tuple[str, ...] = ()
    file_system: tuple[FileSystem, ...] = ()
    exclusive_execution: bool | None = None
    operating_system: OperatingSystem | None = None
    cpu_architecture: CPUArchitectureName | None = None
    individual_cpu_speed_hz: RangeValue | None = None
    individual_cpu_time_s: RangeValue | None = None
    individual_cpu_count: RangeValue | None = None
    individual_network_bandwidth_bps: RangeValue | None = None
    individual_physical_memory_bytes: RangeValue | None = None
    individual_virtual_memory_bytes: RangeValue | None = None
    individual_disk_space_bytes: RangeValue | None = None
    total_cpu_time_s: RangeValue | None = None
    total_cpu_count: RangeValue | None = None
    total_physical_memory_bytes: RangeValue | None = None
    total_virtual_memory_bytes: RangeValue | None = None
    total_disk_space_bytes: RangeValue | None = None
    total_resource_count: RangeValue | None = None
    virtual_machine: VirtualMachine | None = None  # our extension, urn:bes-grid:vm:1.0


# --------------------------------------------------------------------------- data staging


@dataclass(frozen=True, slots=True, kw_only=True)
class UsernameToken:
    """A WS-Security UsernameToken carried as an HPC-FSP transfer credential.

    The password is kept out of ``repr`` so that it never reaches a log line.
    """

    username: str
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """``ac:Credential`` (HPC File Staging Profile, GFD.135): how to authenticate one
    transfer."""

    username_token: UsernameToken | None = None
    bearer_token: str | None = field(default=None, repr=False)
    """UNICORE's ``jsdl-u:BearerToken``: sent as ``Authorization: Bearer`` (kept out of
    ``repr``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataStaging:
    """``jsdl:DataStaging`` (§6.5): one file to fetch before and/or deliver after the job.

    ``source`` set: stage in before the job runs. ``target`` set: stage out after it ends.
    Both: stage in, then out. Neither: a file to keep (or delete) locally.
    """

    name: str | None = None
    file_name: str
    filesystem_name: str | None = None
    creation_flag: CreationFlag
    delete_on_termination: bool | None = None
    source: str | None = None
    target: str | None = None
    credential: Credential | None = None
    inline_data: str | None = field(default=None, repr=False)
    """UNICORE's ``jsdl-u:InlineData``: the file's content, carried in the document itself
    (its Source is then an ``inline:`` URI)."""


# --------------------------------------------------------------------------- the document


@dataclass(frozen=True, slots=True, kw_only=True)
class JobDescription:
    """``jsdl:JobDescription`` (§6.1)."""

    job_identification: JobIdentification | None = None
    application: Application | None = None
    resources: Resources | None = None
    data_staging: tuple[DataStaging, ...] = ()

    @property
    def virtual_machine(self) -> VirtualMachine | None:
        """The VM the job asks for, in Application or in Resources (never both)."""
        if self.application is not None and self.application.virtual_machine is not None:
            return self.application.virtual_machine
        return self.resources.virtual_machine if self.resources is not None else None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobDefinition:
    """``jsdl:JobDefinition``, the root of a JSDL document (§5)."""

    id: str | None = None
    job_description: JobDescription = field(default_factory=JobDescription)

    @property
    def job_name(self) -> str | None:
        """The JobName, if the document gives one."""
        ident = self.job_description.job_identification
        return ident.job_name if ident else None
