"""Parsing of ``jsdl:Application`` and its executable profiles.

POSIXApplication (GFD.136 §8.1), HPCProfileApplication (GFD.111) and SPMDApplication
(GFD.115). The profiles have no element extension point except SPMD's trailing ``##other``.
"""

from __future__ import annotations

from typing import Any, Final

from lxml import etree

from bes.jsdl import xml
from bes.jsdl._values import Context, boolean, children, integer, is_nil, normalized, text, token
from bes.jsdl._vm import VIRTUAL_MACHINE, parse_virtual_machine
from bes.jsdl.model import (
    Application,
    Argument,
    EnvironmentVariable,
    FileName,
    HPCProfileApplication,
    Limits,
    POSIXApplication,
    SPMDApplication,
)
from bes.ns import JSDL, JSDL_HPCPA, JSDL_POSIX, JSDL_SPMD, UNICORE_JSDL, qname

_J = "{" + JSDL + "}"
_P = "{" + JSDL_POSIX + "}"
_H = "{" + JSDL_HPCPA + "}"
_S = "{" + JSDL_SPMD + "}"

POSIX_APPLICATION: Final = qname(JSDL_POSIX, "POSIXApplication")
_UNICORE_PRE: Final = qname(UNICORE_JSDL, "UserPreCommand")
_UNICORE_POST: Final = qname(UNICORE_JSDL, "UserPostCommand")
HPC_PROFILE_APPLICATION: Final = qname(JSDL_HPCPA, "HPCProfileApplication")
SPMD_APPLICATION: Final = qname(JSDL_SPMD, "SPMDApplication")

# POSIX limit element -> Limits field (GFD.136 §8.1.10 - §8.1.22; bytes and seconds).
_LIMITS: Final = {
    _P + "WallTimeLimit": "wall_time_limit_s",
    _P + "FileSizeLimit": "file_size_limit_bytes",
    _P + "CoreDumpLimit": "core_dump_limit_bytes",
    _P + "DataSegmentLimit": "data_segment_limit_bytes",
    _P + "LockedMemoryLimit": "locked_memory_limit_bytes",
    _P + "MemoryLimit": "memory_limit_bytes",
    _P + "OpenDescriptorsLimit": "open_descriptors_limit",
    _P + "PipeSizeLimit": "pipe_size_limit_bytes",
    _P + "StackSizeLimit": "stack_size_limit_bytes",
    _P + "CPUTimeLimit": "cpu_time_limit_s",
    _P + "ProcessCountLimit": "process_count_limit",
    _P + "VirtualMemoryLimit": "virtual_memory_limit_bytes",
    _P + "ThreadCountLimit": "thread_count_limit",
}
_FILE_FIELDS: Final = {
    "Executable": "executable",
    "Input": "input",
    "Output": "output",
    "Error": "error",
    "WorkingDirectory": "working_directory",
}


def parse_application(element: etree._Element, ctx: Context) -> Application:
    """Parse ``jsdl:Application`` (§6.2)::

    <jsdl:Application>
      <jsdl:ApplicationName>...</jsdl:ApplicationName>?
      <jsdl:ApplicationVersion>...</jsdl:ApplicationVersion>?
      <jsdl:Description>...</jsdl:Description>?
      <jsdl-posix:POSIXApplication/> | <jsdl-hpcpa:HPCProfileApplication/>
        | <jsdl-spmd:SPMDApplication/>   (at most one)
      <vm:VirtualMachine/>?                          (ours)
      <jsdl-u:UserPreCommand>...</jsdl-u:UserPreCommand>*   (UNICORE; runOnLoginNode ignored:
      <jsdl-u:UserPostCommand>...</jsdl-u:UserPostCommand>*  the VM is the only node)
    </jsdl:Application>
    """
    values: dict[str, Any] = {}
    executables: list[etree._Element] = []
    pre: list[str] = []
    post: list[str] = []
    for child in children(element):
        tag = xml.tag(child)
        if tag == _J + "ApplicationName":
            values["application_name"] = token(child)
        elif tag == _J + "ApplicationVersion":
            values["application_version"] = token(child)
        elif tag == _J + "Description":
            values["description"] = text(child)
        elif tag == POSIX_APPLICATION:
            values["posix"] = parse_posix_application(child)
            executables.append(child)
        elif tag == HPC_PROFILE_APPLICATION:
            values["hpc_profile"] = parse_hpc_profile_application(child)
            executables.append(child)
        elif tag == SPMD_APPLICATION:
            values["spmd"] = parse_spmd_application(child, ctx)
            executables.append(child)
        elif tag == VIRTUAL_MACHINE:
            values["virtual_machine"] = parse_virtual_machine(child, ctx)
        elif tag == _UNICORE_PRE:
            pre.append(text(child).strip())
        elif tag == _UNICORE_POST:
            post.append(text(child).strip())
        else:
            ctx.unsupported_here(child)
    values.update(
        pre_commands=tuple(c for c in pre if c), post_commands=tuple(c for c in post if c)
    )
    if len(executables) > 1:
        ctx.problem(
            executables[1],
            "Application holds more than one of POSIXApplication, HPCProfileApplication "
            "and SPMDApplication; say what to run once",
        )
    return Application(**values)


def parse_posix_application(element: etree._Element) -> POSIXApplication:
    """Parse ``jsdl-posix:POSIXApplication`` (GFD.136 §8.1)::

    <jsdl-posix:POSIXApplication name="...">
      <jsdl-posix:Executable filesystemName="...">/bin/echo</jsdl-posix:Executable>?
      <jsdl-posix:Argument>hello</jsdl-posix:Argument>*
      <jsdl-posix:Input/>? <jsdl-posix:Output/>? <jsdl-posix:Error/>?
      <jsdl-posix:WorkingDirectory/>?
      <jsdl-posix:Environment name="X">value</jsdl-posix:Environment>*
      <jsdl-posix:WallTimeLimit>60</...>? ... (the thirteen limits, in order)
      <jsdl-posix:UserName/>? <jsdl-posix:GroupName/>?
    </jsdl-posix:POSIXApplication>
    """
    values: dict[str, Any] = {}
    arguments: list[Argument] = []
    environment: list[EnvironmentVariable] = []
    limits: dict[str, int] = {}
    for child in children(element):
        tag = xml.tag(child)
        local = tag[len(_P) :]
        if tag == _P + "Argument":
            arguments.append(
                Argument(value=normalized(child), filesystem_name=child.get("filesystemName"))
            )
        elif tag == _P + "Environment":
            environment.append(_environment(child))
        elif tag in _LIMITS:
            limits[_LIMITS[tag]] = integer(child)
        elif local in _FILE_FIELDS:
            values[_FILE_FIELDS[local]] = _file_name(child)
        elif local == "UserName":
            values["user_name"] = token(child)
        elif local == "GroupName":
            values["group_name"] = token(child)
    return POSIXApplication(
        name=element.get("name"),
        argument=tuple(arguments),
        environment=tuple(environment),
        limits=Limits(**limits),
        **values,
    )


def parse_hpc_profile_application(element: etree._Element) -> HPCProfileApplication:
    """Parse ``jsdl-hpcpa:HPCProfileApplication`` (GFD.111 §3)::

    <jsdl-hpcpa:HPCProfileApplication name="...">
      <jsdl-hpcpa:Executable>/bin/sleep</jsdl-hpcpa:Executable>?
      <jsdl-hpcpa:Argument>10</jsdl-hpcpa:Argument>*
      <jsdl-hpcpa:Input/>? <jsdl-hpcpa:Output/>? <jsdl-hpcpa:Error/>?
      <jsdl-hpcpa:WorkingDirectory/>?
      <jsdl-hpcpa:Environment name="X">value</jsdl-hpcpa:Environment>*
      <jsdl-hpcpa:UserName/>?
    </jsdl-hpcpa:HPCProfileApplication>
    """
    values: dict[str, Any] = {}
    arguments: list[str] = []
    environment: list[EnvironmentVariable] = []
    for child in children(element):
        local = xml.tag(child)[len(_H) :]
        if local == "Argument":
            arguments.append(text(child))
        elif local == "Environment":
            environment.append(_environment(child))
        elif local in _FILE_FIELDS:
            values[_FILE_FIELDS[local]] = token(child)
        elif local == "UserName":
            values["user_name"] = token(child)
    return HPCProfileApplication(
        name=element.get("name"),
        argument=tuple(arguments),
        environment=tuple(environment),
        **values,
    )


def parse_spmd_application(element: etree._Element, ctx: Context) -> SPMDApplication:
    """Parse ``jsdl-spmd:SPMDApplication`` (GFD.115 §4)::

    <jsdl-spmd:SPMDApplication>
      (the POSIX elements Executable .. UserName, in the POSIX namespace)
      <jsdl-spmd:NumberOfProcesses actualtotalcpucount="false">8</...>?
      <jsdl-spmd:ProcessesPerHost>4</jsdl-spmd:ProcessesPerHost>?
      <jsdl-spmd:ThreadsPerProcess actualindividualcpucount="true" xsi:nil="true"/>?
      <jsdl-spmd:SPMDVariation>http://www.ogf.org/jsdl/2007/02/jsdl-spmd/MPI</...>
      <xsd:any ##other/>*
    </jsdl-spmd:SPMDApplication>
    """
    values: dict[str, Any] = {}
    arguments: list[Argument] = []
    environment: list[EnvironmentVariable] = []
    for child in children(element):
        tag = xml.tag(child)
        if tag.startswith(_P):
            local = tag[len(_P) :]
            if local == "Argument":
                arguments.append(
                    Argument(value=normalized(child), filesystem_name=child.get("filesystemName"))
                )
            elif local == "Environment":
                environment.append(_environment(child))
            elif local in _FILE_FIELDS:
                values[_FILE_FIELDS[local]] = _file_name(child)
            elif local == "UserName":
                values["user_name"] = token(child)
        elif tag == _S + "NumberOfProcesses":
            flag = child.get("actualtotalcpucount")
            values["actual_total_cpu_count"] = flag is not None and boolean(child, flag)
            if not is_nil(child):
                values["number_of_processes"] = integer(child)
        elif tag == _S + "ProcessesPerHost":
            values["processes_per_host"] = integer(child)
        elif tag == _S + "ThreadsPerProcess":
            flag = child.get("actualindividualcpucount")
            values["actual_individual_cpu_count"] = flag is not None and boolean(child, flag)
            if not is_nil(child):
                values["threads_per_process"] = integer(child)
        elif tag == _S + "SPMDVariation":
            values["spmd_variation"] = token(child)
        else:
            ctx.unsupported_here(child)
    return SPMDApplication(
        name=element.get("name"),
        argument=tuple(arguments),
        environment=tuple(environment),
        **values,
    )


def _file_name(element: etree._Element) -> FileName:
    return FileName(path=token(element), filesystem_name=element.get("filesystemName"))


def _environment(element: etree._Element) -> EnvironmentVariable:
    return EnvironmentVariable(
        name=(element.get("name") or "").strip(),
        value=text(element),
        filesystem_name=element.get("filesystemName"),
    )
