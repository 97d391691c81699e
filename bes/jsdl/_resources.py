"""Parsing of ``jsdl:Resources`` and RangeValue (JSDL 1.0 §6.3, §6.1.1)."""

from __future__ import annotations

from typing import Any, Final

from lxml import etree

from bes.jsdl import xml
from bes.jsdl._values import Context, boolean, children, double, text, token
from bes.jsdl._vm import VIRTUAL_MACHINE, parse_virtual_machine
from bes.jsdl.model import (
    Boundary,
    CPUArchitectureName,
    Exact,
    FileSystem,
    FileSystemType,
    OperatingSystem,
    Range,
    RangeValue,
    Resources,
)
from bes.ns import JSDL, qname

_J = "{" + JSDL + "}"

# Resources child element -> model field (RangeValue elements only).
_RANGE_FIELDS: Final = {
    _J + "IndividualCPUSpeed": "individual_cpu_speed_hz",
    _J + "IndividualCPUTime": "individual_cpu_time_s",
    _J + "IndividualCPUCount": "individual_cpu_count",
    _J + "IndividualNetworkBandwidth": "individual_network_bandwidth_bps",
    _J + "IndividualPhysicalMemory": "individual_physical_memory_bytes",
    _J + "IndividualVirtualMemory": "individual_virtual_memory_bytes",
    _J + "IndividualDiskSpace": "individual_disk_space_bytes",
    _J + "TotalCPUTime": "total_cpu_time_s",
    _J + "TotalCPUCount": "total_cpu_count",
    _J + "TotalPhysicalMemory": "total_physical_memory_bytes",
    _J + "TotalVirtualMemory": "total_virtual_memory_bytes",
    _J + "TotalDiskSpace": "total_disk_space_bytes",
    _J + "TotalResourceCount": "total_resource_count",
}
_EXCLUSIVE: Final = "exclusiveBound"
_EPSILON: Final = "epsilon"


def parse_resources(element: etree._Element, ctx: Context) -> Resources:
    """Parse ``jsdl:Resources`` (§6.3)::

    <jsdl:Resources>
      <jsdl:CandidateHosts><jsdl:HostName>...</jsdl:HostName>+</jsdl:CandidateHosts>?
      <jsdl:FileSystem name="...">...</jsdl:FileSystem>*
      <jsdl:ExclusiveExecution>true</jsdl:ExclusiveExecution>?
      <jsdl:OperatingSystem>...</jsdl:OperatingSystem>?
      <jsdl:CPUArchitecture><jsdl:CPUArchitectureName>x86_64</...></...>?
      <jsdl:IndividualCPUCount><jsdl:Exact>2</jsdl:Exact></...>?   (and the other ranges)
      <xsd:any ##other/>*
    </jsdl:Resources>
    """
    values: dict[str, Any] = {}
    file_systems: list[FileSystem] = []
    for child in children(element):
        tag = xml.tag(child)
        if tag in _RANGE_FIELDS:
            values[_RANGE_FIELDS[tag]] = parse_range_value(child, ctx)
        elif tag == _J + "CandidateHosts":
            values["candidate_hosts"] = tuple(token(h) for h in children(child))
        elif tag == _J + "FileSystem":
            file_systems.append(_file_system(child, ctx))
        elif tag == _J + "ExclusiveExecution":
            values["exclusive_execution"] = boolean(child)
        elif tag == _J + "OperatingSystem":
            values["operating_system"] = _operating_system(child, ctx)
        elif tag == _J + "CPUArchitecture":
            values["cpu_architecture"] = _cpu_architecture(child, ctx)
        elif tag == VIRTUAL_MACHINE:
            values["virtual_machine"] = parse_virtual_machine(child, ctx)
        else:
            ctx.unsupported_here(child)
    names = [fs.name for fs in file_systems]
    for fs_element, fs in zip(element.iterchildren(_J + "FileSystem"), file_systems, strict=True):
        if names.count(fs.name) > 1:
            ctx.problem(fs_element, f"FileSystem name {fs.name!r} is declared more than once")
    return Resources(file_system=tuple(file_systems), **values)


def parse_range_value(element: etree._Element, ctx: Context) -> RangeValue:
    """Parse a RangeValue_Type element (§6.1.1)::

        <jsdl:UpperBoundedRange exclusiveBound="false">10</...>?
        <jsdl:LowerBoundedRange exclusiveBound="true">1</...>?
        <jsdl:Exact epsilon="0.5">4</jsdl:Exact>*
        <jsdl:Range><jsdl:LowerBound>1</...><jsdl:UpperBound>8</...></jsdl:Range>*

    An empty Range (lower above upper, or equal with an exclusive end) and a negative epsilon
    are reported as problems: they cannot be what the author meant.
    """
    upper: Boundary | None = None
    lower: Boundary | None = None
    exact: list[Exact] = []
    ranges: list[Range] = []
    for child in children(element):
        local = etree.QName(child).localname
        if local == "UpperBoundedRange":
            upper = _boundary(child)
        elif local == "LowerBoundedRange":
            lower = _boundary(child)
        elif local == "Exact":
            epsilon_text = child.get(_EPSILON)
            epsilon = 0.0 if epsilon_text is None else double(child, epsilon_text)
            if epsilon < 0:
                ctx.problem(child, f"epsilon {epsilon} is negative")
            exact.append(Exact(value=double(child), epsilon=abs(epsilon)))
        elif local == "Range":
            bounds = {etree.QName(b).localname: _boundary(b) for b in children(child)}
            r = Range(lower=bounds["LowerBound"], upper=bounds["UpperBound"])
            if r.lower.value > r.upper.value or (
                r.lower.value == r.upper.value and (r.lower.exclusive or r.upper.exclusive)
            ):
                ctx.problem(child, f"empty range from {r.lower.value} to {r.upper.value}")
            ranges.append(r)
    if upper is None and lower is None and not exact and not ranges:
        ctx.problem(element, "the range holds no value at all")
    return RangeValue(
        upper_bounded_range=upper,
        lower_bounded_range=lower,
        exact=tuple(exact),
        range=tuple(ranges),
    )


def _boundary(element: etree._Element) -> Boundary:
    flag = element.get(_EXCLUSIVE)
    return Boundary(
        value=double(element), exclusive=False if flag is None else boolean(element, flag)
    )


def _file_system(element: etree._Element, ctx: Context) -> FileSystem:
    values: dict[str, Any] = {}
    for child in children(element):
        local = etree.QName(child).localname if xml.tag(child).startswith(_J) else None
        if local == "FileSystemType":
            values["file_system_type"] = FileSystemType(token(child))
        elif local == "Description":
            values["description"] = text(child)
        elif local == "MountPoint":
            values["mount_point"] = token(child)
        elif local == "DiskSpace":
            values["disk_space_bytes"] = parse_range_value(child, ctx)
        else:
            ctx.unsupported_here(child)
    return FileSystem(name=(element.get("name") or "").strip(), **values)


def _operating_system(element: etree._Element, ctx: Context) -> OperatingSystem:
    values: dict[str, Any] = {}
    for child in children(element):
        if child.tag == _J + "OperatingSystemType":
            for part in children(child):
                if part.tag == _J + "OperatingSystemName":
                    values["operating_system_name"] = token(part)
                else:
                    ctx.unsupported_here(part)
        elif child.tag == _J + "OperatingSystemVersion":
            values["operating_system_version"] = token(child)
        elif child.tag == _J + "Description":
            values["description"] = text(child)
        else:
            ctx.unsupported_here(child)
    return OperatingSystem(**values)


def _cpu_architecture(element: etree._Element, ctx: Context) -> CPUArchitectureName | None:
    name: CPUArchitectureName | None = None
    for child in children(element):
        if child.tag == qname(JSDL, "CPUArchitectureName"):
            name = CPUArchitectureName(token(child))
        else:
            ctx.unsupported_here(child)
    return name
