"""The JSDL documents ``bes check`` submits: harmless jobs (``/bin/true``, ``/bin/echo``) in
the shapes the standards define, each named so that it can be recognised as the checker's
(``bes-check-RUN-WHAT``), and the feature probes.

Every document is valid JSDL 1.0 (with its profiles) except the one meant to be invalid.
"""

from __future__ import annotations

from typing import Final

from bes.ns import BES_VM, JSDL, JSDL_HPCPA, JSDL_POSIX, JSDL_SPMD

SWEEP: Final = "http://schemas.ogf.org/jsdl/2009/03/sweep"
SWEEP_FUNC: Final = "http://schemas.ogf.org/jsdl/2009/03/sweep/functions"
_NS: Final = (
    f'xmlns:jsdl="{JSDL}" xmlns:posix="{JSDL_POSIX}" xmlns:hpcpa="{JSDL_HPCPA}" '
    f'xmlns:spmd="{JSDL_SPMD}"'
)


def _wrap(name: str, application: str, more: str = "") -> bytes:
    return (
        f"<jsdl:JobDefinition {_NS}><jsdl:JobDescription>"
        f"<jsdl:JobIdentification><jsdl:JobName>{name}</jsdl:JobName>"
        f"<jsdl:Description>bes check: a harmless test job</jsdl:Description>"
        f"</jsdl:JobIdentification>"
        f"<jsdl:Application>{application}</jsdl:Application>{more}"
        "</jsdl:JobDescription></jsdl:JobDefinition>"
    ).encode()


def posix(command: str, *arguments: str) -> str:
    args = "".join(f"<posix:Argument>{a}</posix:Argument>" for a in arguments)
    return (
        f"<posix:POSIXApplication><posix:Executable>{command}</posix:Executable>{args}"
        "<posix:Output>stdout</posix:Output><posix:Error>stderr</posix:Error>"
        "</posix:POSIXApplication>"
    )


def hpcp_job(name: str) -> bytes:
    """An HPC Basic Profile job: HPCProfileApplication, nothing else (HPCBP 1.0 §3)."""
    return _wrap(
        name,
        "<hpcpa:HPCProfileApplication><hpcpa:Executable>/bin/true</hpcpa:Executable>"
        "<hpcpa:Output>/dev/null</hpcpa:Output></hpcpa:HPCProfileApplication>",
    )


def posix_job(name: str, *, seconds: int = 0) -> bytes:
    """A POSIX job; with ``seconds`` it sleeps that long (a job that stays Running)."""
    if seconds:
        return _wrap(name, posix("/bin/sleep", str(seconds)))
    return _wrap(name, posix("/bin/echo", "bes", "check"))


def staging_job(name: str, source: str, target: str | None) -> bytes:
    """A job that copies its staged-in input to an output staged out (HPC File Staging)."""
    staging = (
        "<jsdl:DataStaging><jsdl:FileName>input.txt</jsdl:FileName>"
        "<jsdl:CreationFlag>overwrite</jsdl:CreationFlag>"
        f"<jsdl:Source><jsdl:URI>{source}</jsdl:URI></jsdl:Source></jsdl:DataStaging>"
    )
    if target is not None:
        staging += (
            "<jsdl:DataStaging><jsdl:FileName>output.txt</jsdl:FileName>"
            "<jsdl:CreationFlag>overwrite</jsdl:CreationFlag>"
            f"<jsdl:Target><jsdl:URI>{target}</jsdl:URI></jsdl:Target></jsdl:DataStaging>"
        )
    return _wrap(name, posix("/bin/cp", "input.txt", "output.txt"), staging)


def invalid_job(name: str) -> bytes:
    """Schema-invalid on purpose: two Executables in one POSIXApplication (JSDL 1.0 §8.1.2
    allows one)."""
    return _wrap(
        name,
        "<posix:POSIXApplication><posix:Executable>/bin/true</posix:Executable>"
        "<posix:Executable>/bin/false</posix:Executable></posix:POSIXApplication>",
    )


def unsupported_job(name: str) -> bytes:
    """A valid document with an extension element no BES knows (a lax wildcard in
    jsdl:Application): it must be refused with UnsupportedFeatureFault (GFD.108 §6.1)."""
    return _wrap(
        name,
        posix("/bin/true") + '<x:TimeMachine xmlns:x="urn:bes-check:no-such-extension">'
        "1985-10-26</x:TimeMachine>",
    )


# ------------------------------------------------------------------------------ probes


def probe_ranges(name: str) -> bytes:
    """JSDL RangeValue resources (JSDL 1.0 §6.4): 1 to 4 CPUs, at least 64 MiB."""
    resources = (
        "<jsdl:Resources><jsdl:IndividualPhysicalMemory><jsdl:LowerBoundedRange>67108864"
        "</jsdl:LowerBoundedRange></jsdl:IndividualPhysicalMemory>"
        "<jsdl:TotalCPUCount><jsdl:Range><jsdl:LowerBound>1</jsdl:LowerBound>"
        "<jsdl:UpperBound>4</jsdl:UpperBound></jsdl:Range></jsdl:TotalCPUCount></jsdl:Resources>"
    )
    return _wrap(name, posix("/bin/true"), resources)


def probe_posix_limits(name: str) -> bytes:
    """POSIX limits (JSDL 1.0 §8.1): wall time, open files, CPU time (in schema order)."""
    return _wrap(
        name,
        "<posix:POSIXApplication><posix:Executable>/bin/true</posix:Executable>"
        "<posix:WallTimeLimit>600</posix:WallTimeLimit>"
        "<posix:OpenDescriptorsLimit>256</posix:OpenDescriptorsLimit>"
        "<posix:CPUTimeLimit>300</posix:CPUTimeLimit>"
        "</posix:POSIXApplication>",
    )


def probe_spmd(name: str) -> bytes:
    """An SPMD (MPI) application (GFD.115)."""
    return _wrap(
        name,
        "<spmd:SPMDApplication><posix:Executable>/bin/true</posix:Executable>"
        "<spmd:NumberOfProcesses>2</spmd:NumberOfProcesses>"
        "<spmd:SPMDVariation>http://www.ogf.org/jsdl/2007/02/jsdl-spmd/MPI</spmd:SPMDVariation>"
        "</spmd:SPMDApplication>",
    )


def probe_sweep(name: str) -> bytes:
    """A parameter sweep (GFD.149): three values of an argument."""
    sweep = (
        f'<sweep:Sweep xmlns:sweep="{SWEEP}" xmlns:sf="{SWEEP_FUNC}"><sweep:Assignment>'
        f'<sweep:DocumentNode><sweep:NamespaceBinding prefix="p" ns="{JSDL_POSIX}"/>'
        "<sweep:Match>//p:Argument[1]</sweep:Match></sweep:DocumentNode>"
        "<sf:Values><sf:Value>a</sf:Value><sf:Value>b</sf:Value><sf:Value>c</sf:Value>"
        "</sf:Values></sweep:Assignment></sweep:Sweep>"
    )
    document = _wrap(name, posix("/bin/echo", "x")).decode()
    return document.replace("</jsdl:JobDefinition>", sweep + "</jsdl:JobDefinition>").encode()


def probe_vm(name: str) -> bytes:
    """The bes VM extension (``urn:bes-grid:vm:1.0``): the template tiny."""
    vm = (
        f'<vm:VirtualMachine xmlns:vm="{BES_VM}"><vm:Image><vm:Template>tiny</vm:Template>'
        "</vm:Image></vm:VirtualMachine>"
    )
    return _wrap(name, posix("/bin/true") + vm)


PROBES: Final = {
    "ranges (JSDL RangeValue)": probe_ranges,
    "POSIX limits": probe_posix_limits,
    "SPMD (MPI)": probe_spmd,
    "parameter sweep (GFD.149)": probe_sweep,
    "bes VM extension": probe_vm,
}
