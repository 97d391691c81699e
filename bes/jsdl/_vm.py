"""Parsing of our VM extension, ``vm:VirtualMachine`` (schemas/bes-vm.xsd)."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Final, TypeVar

from lxml import etree

from bes.jsdl import xml
from bes.jsdl._values import Context, boolean, children, integer, text, token
from bes.ns import BES_VM, qname
from bes.vm.leaseguest import DEFAULT_USER, parse_public_key
from bes.vm.spec import (
    ContextFile,
    Hypervisor,
    ImageFormat,
    ImageRef,
    Lease,
    Network,
    NetworkMode,
    PortForward,
    Protocol,
    VirtualMachine,
)

_E = TypeVar("_E", bound=Enum)
_USER: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_V = "{" + BES_VM + "}"
VIRTUAL_MACHINE: Final = qname(BES_VM, "VirtualMachine")
_INTEGERS: Final = {
    _V + "MemoryMiB": "memory_mib",
    _V + "VirtualCPUs": "vcpus",
    _V + "ScratchDiskMiB": "scratch_disk_mib",
    _V + "WallTimeLimit": "wall_time_s",
}


def parse_virtual_machine(element: etree._Element, ctx: Context) -> VirtualMachine:
    """Parse ``vm:VirtualMachine``::

    <vm:VirtualMachine>
      <vm:Image><vm:Template>tiny</vm:Template></vm:Image>
        (or <vm:Image><vm:URI/><vm:SHA256/><vm:Format/></vm:Image>)
      <vm:OSType/>? <vm:MemoryMiB/>? <vm:VirtualCPUs/>? <vm:ScratchDiskMiB/>?
      <vm:Network mode="nat" outbound="false"><vm:PortForward guestPort="22"/>*</vm:Network>?
      <vm:Contextualization><vm:UserData/>? <vm:File path="/etc/x" mode="0600"/>*</...>?
      <vm:WallTimeLimit/>? <vm:Hypervisor>qemu</vm:Hypervisor>* <vm:Pool>cloud:lab</vm:Pool>?
      <vm:Lease><vm:User>debian</vm:User>? <vm:SSHPublicKey>ssh-ed25519 ...</...>*</vm:Lease>?
    </vm:VirtualMachine>
    """
    values: dict[str, Any] = {}
    hypervisors: list[Hypervisor] = []
    for child in children(element):
        tag = xml.tag(child)
        if tag == _V + "Image":
            values["image"] = _image(child, ctx)
        elif tag == _V + "OSType":
            values["os_type"] = token(child)
        elif tag in _INTEGERS:
            number = integer(child)
            if number <= 0:
                ctx.problem(child, "must be a positive number")
            values[_INTEGERS[tag]] = number
        elif tag == _V + "Network":
            values["network"] = _network(child, ctx)
        elif tag == _V + "Contextualization":
            user_data, files = _contextualization(child, ctx)
            values["user_data"] = user_data
            values["files"] = files
        elif tag == _V + "Hypervisor":
            hypervisor = _enum(Hypervisor, child, token(child), ctx)
            if hypervisor is not None:
                hypervisors.append(hypervisor)
        elif tag == _V + "Pool":
            values["pool"] = token(child)
        elif tag == _V + "Lease":
            values["lease"] = _lease(child, ctx)
        else:
            ctx.unsupported_here(child)
    if "image" not in values:
        ctx.problem(element, "names no Image")
        values["image"] = ImageRef()
    return VirtualMachine(hypervisors=tuple(hypervisors), **values)


def _lease(element: etree._Element, ctx: Context) -> Lease:
    user = DEFAULT_USER
    keys = []
    for child in children(element):
        tag = xml.tag(child)
        if tag == _V + "User":
            user = token(child)
            if not _USER.fullmatch(user):
                ctx.problem(child, f"{user!r} is not a login name")
        elif tag == _V + "SSHPublicKey":
            try:
                keys.append(parse_public_key(text(child)))
            except ValueError as exc:
                ctx.problem(child, str(exc))
        else:
            ctx.unsupported_here(child)
    return Lease(user=user, ssh_keys=tuple(keys))


def _image(element: etree._Element, ctx: Context) -> ImageRef:
    values: dict[str, Any] = {}
    for child in children(element):
        tag = xml.tag(child)
        if tag == _V + "Template":
            values["template"] = token(child)
        elif tag == _V + "URI":
            values["uri"] = token(child)
        elif tag == _V + "SHA256":
            values["sha256"] = token(child).lower()
        elif tag == _V + "Format":
            values["format"] = _enum(ImageFormat, child, token(child), ctx)
        else:
            ctx.unsupported_here(child)
    ref = ImageRef(**values)
    if ref.template is None and not (ref.uri and ref.sha256 and ref.format):
        ctx.problem(element, "an image is a Template, or a URI with its SHA256 and Format")
    return ref


def _network(element: etree._Element, ctx: Context) -> Network:
    mode = _enum(NetworkMode, element, (element.get("mode") or "none").strip(), ctx)
    outbound = boolean(element, element.get("outbound") or "false")
    forwards = []
    for child in children(element):
        if xml.tag(child) != _V + "PortForward":
            ctx.unsupported_here(child)
            continue
        protocol = _enum(Protocol, child, (child.get("protocol") or "tcp").strip(), ctx)
        forwards.append(
            PortForward(
                guest_port=_port(child, "guestPort", ctx, default=None),
                host_port=_port(child, "hostPort", ctx, default=0),
                host_address=(child.get("hostAddress") or "127.0.0.1").strip(),
                protocol=protocol or Protocol.TCP,
            )
        )
    if forwards and mode is not NetworkMode.NAT:
        ctx.problem(element, 'port forwards need mode="nat"')
    if outbound and mode is not NetworkMode.NAT:
        ctx.problem(element, 'outbound access needs mode="nat"')
    return Network(mode or NetworkMode.NONE, outbound, tuple(forwards))


def _contextualization(
    element: etree._Element, ctx: Context
) -> tuple[str | None, tuple[ContextFile, ...]]:
    user_data = None
    files = []
    for child in children(element):
        tag = xml.tag(child)
        if tag == _V + "UserData":
            user_data = text(child)
        elif tag == _V + "File":
            path = child.get("path") or ""
            if not path.startswith("/") or "/../" in f"{path}/":
                ctx.problem(child, f"{path!r} is not an absolute path in the guest")
            mode_text = (child.get("mode") or "0644").strip()
            try:
                mode = int(mode_text, 8)
            except ValueError:
                ctx.problem(child, f"{mode_text!r} is not an octal file mode")
                mode = 0o644
            files.append(ContextFile(path, text(child), mode))
        else:
            ctx.unsupported_here(child)
    return user_data, tuple(files)


def _port(element: etree._Element, name: str, ctx: Context, *, default: int | None) -> int:
    raw = element.get(name)
    if raw is None and default is not None:
        return default
    try:
        port = int((raw or "").strip())
    except ValueError:
        port = -1
    if not 0 <= port <= 65535 or (port == 0 and default is None):
        ctx.problem(element, f"{name} {raw!r} is not a port number")
    return port


def _enum(kind: type[_E], element: etree._Element, value: str, ctx: Context) -> _E | None:
    try:
        return kind(value)
    except ValueError:
        ctx.problem(element, f"{value!r} is not one of {[member.value for member in kind]}")
        return None
