"""JSDL documents from Python arguments, and the check every document gets before it is sent.

Workflow engines should not have to write XML::

    from bes.client import jsdl
    doc = jsdl.build(["/bin/sh", "-c", "sha256sum data.bin > sum.txt"],
                     name="checksum", image="tiny", memory_mib=512, wall_time_s=600,
                     inputs={"data.bin": "https://example.org/data.bin"},
                     keep=["sum.txt"])

:func:`build` writes JSDL 1.0 with a POSIXApplication and, unless ``vm=False``, our VM extension
(``urn:bes-grid:vm:1.0``, ``schemas/bes-vm.xsd``). Without it the document is plain JSDL that any
BES accepts; ours runs it in the site's default VM. The result is validated like every document
:func:`check` sees, so an argument that makes it invalid fails here, not on the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from lxml import etree

from bes.client.faults import InvalidJsdl
from bes.errors import MalformedXml
from bes.jsdl import schema
from bes.jsdl.normalize import normalize
from bes.jsdl.xml import parse_untrusted
from bes.ns import BES_VM, JSDL, JSDL_POSIX, qname

_J: Final = "{" + JSDL + "}"
_P: Final = "{" + JSDL_POSIX + "}"
_V: Final = "{" + BES_VM + "}"
_NSMAP: Final = {"jsdl": JSDL, "jsdl-posix": JSDL_POSIX, "vm": BES_VM}
_FORMATS: Final = frozenset({"raw", "qcow2", "vdi", "vmdk", "iso"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageURI:
    """The user's own disk image (instead of a template name).

    Attributes:
        uri: ``https://``, ``http://`` or ``file://`` URL of the image.
        sha256: Its checksum; a node never boots an image that does not match.
        format: ``raw``, ``qcow2``, ``vdi``, ``vmdk`` or ``iso``.
    """

    uri: str
    sha256: str
    format: str = "qcow2"


def build(
    command: Sequence[str],
    *,
    name: str | None = None,
    image: str | ImageURI = "tiny",
    vm: bool = True,
    memory_mib: int | None = None,
    vcpus: int | None = None,
    wall_time_s: int | None = None,
    environment: Mapping[str, str] | None = None,
    working_directory: str | None = None,
    stdin: str | None = None,
    stdout: str = "stdout",
    stderr: str = "stderr",
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    keep: Sequence[str] = (),
    commented: bool = False,
) -> bytes:
    """A JSDL document running ``command`` (the executable, then its arguments).

    Args:
        command: Executable and arguments, one list item each (no shell parsing).
        name: The JobName.
        image: A template name of the repository (``bes images`` lists them) or an
            :class:`ImageURI`. Ignored when ``vm`` is false.
        vm: Add our VM extension; without it the service picks its default VM.
        memory_mib: Guest memory.
        vcpus: Virtual CPUs.
        wall_time_s: Seconds the job may run, boot included.
        environment: Environment variables of the application.
        working_directory: Where it runs in the guest.
        stdin: File the application reads on standard input.
        stdout: File standard output goes to (kept by our service).
        stderr: File standard error goes to (kept by our service).
        inputs: File name in the job's directory → URI to fetch it from before the job runs.
            A relative path with no scheme (``data.csv``, percent-encoded as a URI: see
            :func:`bes.client.staging.source_uri`) names a local file relative to where the
            document is written, which ``bes submit`` uploads (:mod:`bes.client.staging`).
        outputs: File name → URI to deliver it to after the job ran.
        keep: Files the service keeps for ``bes get`` (no URI needed).
        commented: Explain each part in XML comments (for a file people edit).

    Raises:
        InvalidJsdl: The arguments give an invalid document (an empty command, a bad
            checksum, …).
    """
    if not command or not command[0].strip():
        raise InvalidJsdl("the command is empty: give the executable to run", ())
    nsmap = _NSMAP if vm else {k: v for k, v in _NSMAP.items() if k != "vm"}
    root = etree.Element(_J + "JobDefinition", nsmap=nsmap)
    if commented:
        root.addprevious(etree.Comment(_HEAD))
    description = etree.SubElement(root, _J + "JobDescription")
    if name:
        identification = etree.SubElement(description, _J + "JobIdentification")
        etree.SubElement(identification, _J + "JobName").text = name
    application = etree.SubElement(description, _J + "Application")
    if commented:
        application.append(etree.Comment(_APPLICATION))
    posix = etree.SubElement(application, _P + "POSIXApplication")
    etree.SubElement(posix, _P + "Executable").text = command[0]
    for argument in command[1:]:
        etree.SubElement(posix, _P + "Argument").text = argument
    for tag, value in (("Input", stdin), ("Output", stdout), ("Error", stderr)):
        if value:
            etree.SubElement(posix, _P + tag).text = value
    if working_directory:
        etree.SubElement(posix, _P + "WorkingDirectory").text = working_directory
    for key, value in (environment or {}).items():
        etree.SubElement(posix, _P + "Environment", name=key).text = value
    if vm:
        if commented:
            application.append(etree.Comment(_VM))
        application.append(_virtual_machine(image, memory_mib, vcpus, wall_time_s))
    elif wall_time_s:
        etree.SubElement(posix, _P + "WallTimeLimit").text = str(wall_time_s)
    _staging(description, inputs, outputs, keep, commented=commented)
    document = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    check(document)
    return document


def lease(
    *,
    ssh_keys: Sequence[str] = (),
    template: str | ImageURI = "debian-12",
    name: str | None = None,
    ports: Sequence[int] = (),
    user: str | None = None,
    memory_mib: int | None = None,
    vcpus: int | None = None,
    wall_time_s: int | None = None,
    outbound: bool = False,
    pool: str | None = None,
) -> bytes:
    """A VM lease: a JSDL document whose VM runs no application; it is its owner's to log
    into with SSH until they terminate it (``vm:Lease``).

    Args:
        ssh_keys: OpenSSH public key lines authorized for the login.
        template: The image (it needs cloud-init and an SSH server: debian-12 has both).
        ports: Guest ports to forward besides 22 (reached through the service with
            ``bes port-forward``).
        user: The login (default: the service's, ``debian``).
        wall_time_s: How long the VM may run (suspended time does not count).
        outbound: Let the guest reach the network (apt-get, pip); off by default.
        pool: The pool of workers it runs in (default: the service's routing).
    """
    root = etree.Element(_J + "JobDefinition", nsmap=_NSMAP)
    description = etree.SubElement(root, _J + "JobDescription")
    if name:
        identification = etree.SubElement(description, _J + "JobIdentification")
        etree.SubElement(identification, _J + "JobName").text = name
    resources = etree.SubElement(description, _J + "Resources")
    machine = _virtual_machine(template, memory_mib, vcpus, None)
    network = etree.SubElement(machine, _V + "Network", mode="nat")
    if outbound:
        network.set("outbound", "true")
    for port in dict.fromkeys([22, *ports]):
        etree.SubElement(network, _V + "PortForward", guestPort=str(port))
    if wall_time_s is not None:
        etree.SubElement(machine, _V + "WallTimeLimit").text = str(wall_time_s)
    if pool:
        etree.SubElement(machine, _V + "Pool").text = pool
    element = etree.SubElement(machine, _V + "Lease")
    if user:
        etree.SubElement(element, _V + "User").text = user
    for key in ssh_keys:
        etree.SubElement(element, _V + "SSHPublicKey").text = key.strip()
    resources.append(machine)
    document = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    check(document)
    return document


def check(document: bytes) -> list[str]:
    """Check that ``document`` is JSDL 1.0 a BES can take, before it is sent.

    The check forgives what our service's tolerant mode normalizes (a missing CreationFlag,
    known namespace variants, elements out of order: real clients send those), and returns
    those rewrites as warnings; the document itself is sent unchanged.

    Raises:
        InvalidJsdl: Not well-formed, not a JobDefinition, or schema-invalid; with the line and
            element of each problem.
    """
    try:
        root = parse_untrusted(document)
    except MalformedXml as exc:
        where = f"line {exc.line}: " if exc.line else ""
        raise InvalidJsdl(f"{where}{exc.message}", ((exc.line, "", exc.message),)) from exc
    if root.tag != _J + "JobDefinition":
        found = etree.QName(root)
        message = (
            f"the document is a {found.localname!r} in namespace {found.namespace or '(none)'}, "
            f"not a jsdl:JobDefinition ({JSDL})"
        )
        raise InvalidJsdl(message, ((root.sourceline, "/", message),))
    warnings = normalize(root)
    problems = schema.validate(root)
    if problems:
        raise InvalidJsdl(
            "not valid JSDL 1.0:\n"
            + "\n".join(
                f"  line {p.line}, {p.path}: {p.message}" if p.line else f"  {p.path}: {p.message}"
                for p in problems
            ),
            tuple((p.line, p.path, p.message) for p in problems),
        )
    return warnings


def job_name(document: bytes) -> str | None:
    """The JobName of a JSDL document, or None (also for one that does not parse)."""
    try:
        root = parse_untrusted(document)
    except MalformedXml:
        return None
    found = root.find(f"{_J}JobDescription/{_J}JobIdentification/{_J}JobName")
    return (found.text or "").strip() or None if found is not None else None


def _virtual_machine(
    image: str | ImageURI, memory_mib: int | None, vcpus: int | None, wall_time_s: int | None
) -> etree._Element:
    machine = etree.Element(_V + "VirtualMachine")
    image_element = etree.SubElement(machine, _V + "Image")
    if isinstance(image, ImageURI):
        if image.format not in _FORMATS:
            raise InvalidJsdl(
                f"image format {image.format!r} is not one of {', '.join(sorted(_FORMATS))}", ()
            )
        etree.SubElement(image_element, _V + "URI").text = image.uri
        etree.SubElement(image_element, _V + "SHA256").text = image.sha256
        etree.SubElement(image_element, _V + "Format").text = image.format
    else:
        etree.SubElement(image_element, _V + "Template").text = image
    for tag, value in (
        ("MemoryMiB", memory_mib),
        ("VirtualCPUs", vcpus),
        ("WallTimeLimit", wall_time_s),
    ):
        if value is not None:
            etree.SubElement(machine, _V + tag).text = str(value)
    return machine


def _staging(
    description: etree._Element,
    inputs: Mapping[str, str] | None,
    outputs: Mapping[str, str] | None,
    keep: Sequence[str],
    *,
    commented: bool,
) -> None:
    entries: list[tuple[str, str | None, str | None]]
    entries = [(n, "Source", u) for n, u in (inputs or {}).items()]
    entries += [(n, "Target", u) for n, u in (outputs or {}).items()]
    entries += [(n, None, None) for n in keep]
    if commented:
        description.append(etree.Comment(_STAGING))
    for file_name, direction, uri in entries:
        staging = etree.SubElement(description, _J + "DataStaging")
        etree.SubElement(staging, _J + "FileName").text = file_name
        etree.SubElement(staging, _J + "CreationFlag").text = "overwrite"
        etree.SubElement(staging, _J + "DeleteOnTermination").text = (
            "true" if direction == "Source" else "false"
        )
        if direction is not None:
            where = etree.SubElement(staging, qname(JSDL, direction))
            etree.SubElement(where, _J + "URI").text = uri


_HEAD: Final = """
  A JSDL 1.0 job (GFD.136) for an OGSA-BES service. Submit it with
      bes submit THIS-FILE
  (its wait option waits for the end), then fetch what it wrote with
      bes get ID
"""
_APPLICATION: Final = """
  What runs: the executable (an absolute path inside the VM) and one Argument element per
  argument, no shell parsing. Output and Error name the files standard output and error go to;
  the service keeps them (bes get). Add <jsdl-posix:Environment name="VAR">value</...> for the
  environment, <jsdl-posix:WorkingDirectory> to run elsewhere.
"""
_VM: Final = """
  The virtual machine the job runs in (urn:bes-grid:vm:1.0, schemas/bes-vm.xsd).
  Image: a Template of the site's repository by name (bes images lists them), or your own
  image as <vm:URI>, <vm:SHA256> and <vm:Format> (raw, qcow2, vdi, vmdk, iso).
  MemoryMiB and VirtualCPUs size the guest; WallTimeLimit is in seconds, boot included.
  Network is off unless you add <vm:Network mode="nat" outbound="true"/>.
  Without this element the service runs the job in its default VM.
"""
_STAGING: Final = """
  Files. A DataStaging with a Source is fetched into the job's directory before it runs;
  one with a Target is delivered there afterwards (http, https, ftp); one with neither and
  DeleteOnTermination false is kept by the service for bes get.
  A Source that is a relative path (data.csv) is a file on your machine, relative to this
  document: bes submit uploads it to the service's file store and sends its URL instead
  (only bes submit understands such a path; file: URIs name files on the worker).
"""
