"""Real-world JSDL as it is sent, made canonical before validation (tolerant by default).

What UNICORE, ARC, GridSAM, JSAGA and VENUS-C clients send is often not what the schema says,
and their own servers accepted it. Each of these known variants is rewritten in place, and
each rewrite is reported as a warning (the operator sees it in the log; the user reads it back
in the activity's status as ``besa:Warning``):

* a ``DataStaging`` without the mandatory ``CreationFlag`` gets ``overwrite``, what those
  servers did;
* children out of schema order are put in order: ``DataStaging`` before ``Application``,
  ``posix:Argument`` after ``Output``, ``UpperBound`` before ``LowerBound``, ...;
* the HPC Profile Application under ``schemas.ogf.org`` (instead of ``schemas.ggf.org``) and
  the HPC-FSP ``Credential`` under the ``hpcp/2007/01/fs`` namespace (instead of
  ``hpcp/2007/11/ac``) are moved to the standard namespaces;
* ``jsdl:StagingSchedule`` of the SC07 HPC Basic Profile demos is dropped (staging happens
  before and after the job here, whatever it says);
* unqualified attributes the schema does not allow (GridSAM's templating ``id="..."``) are
  dropped;
* a ``FileSystem`` without its required ``name`` gets one.

Everything else that is invalid stays invalid and gets InvalidRequestMessageFault. With the
service's strict setting, nothing is rewritten.
"""

from __future__ import annotations

from typing import Final

from lxml import etree

from bes.jsdl.schema import element_path
from bes.ns import HPCP_AC, HPCP_FS, JSDL, JSDL_HPCPA, JSDL_POSIX, JSDL_SPMD, qname

HPCPA_OGF_VARIANT: Final = "http://schemas.ogf.org/jsdl/2006/07/jsdl-hpcpa"

_J: Final = "{" + JSDL + "}"
_P: Final = "{" + JSDL_POSIX + "}"
_S: Final = "{" + JSDL_SPMD + "}"

_LIMITS: Final = (
    "WallTimeLimit",
    "FileSizeLimit",
    "CoreDumpLimit",
    "DataSegmentLimit",
    "LockedMemoryLimit",
    "MemoryLimit",
    "OpenDescriptorsLimit",
    "PipeSizeLimit",
    "StackSizeLimit",
    "CPUTimeLimit",
    "ProcessCountLimit",
    "VirtualMemoryLimit",
    "ThreadCountLimit",
)
# Child order of each element whose children real clients misplace (GFD.56, GFD.115).
_ORDER: Final[dict[str, tuple[str, ...]]] = {
    _J + "JobDescription": tuple(
        _J + n for n in ("JobIdentification", "Application", "Resources", "DataStaging")
    ),
    _J + "DataStaging": tuple(
        _J + n
        for n in (
            "FileName",
            "FilesystemName",
            "CreationFlag",
            "DeleteOnTermination",
            "Source",
            "Target",
        )
    ),
    _J + "Range": (_J + "LowerBound", _J + "UpperBound"),
    _P + "POSIXApplication": tuple(
        _P + n
        for n in (
            "Executable",
            "Argument",
            "Input",
            "Output",
            "Error",
            "WorkingDirectory",
            "Environment",
            *_LIMITS,
            "UserName",
            "GroupName",
        )
    ),
    _S + "SPMDApplication": (
        *(
            _P + n
            for n in (
                "Executable",
                "Argument",
                "Input",
                "Output",
                "Error",
                "WorkingDirectory",
                "Environment",
                "UserName",
            )
        ),
        *(
            _S + n
            for n in ("NumberOfProcesses", "ProcessesPerHost", "ThreadsPerProcess", "SPMDVariation")
        ),
    ),
}
_RANKS: Final = {
    parent: {tag: i for i, tag in enumerate(order)} for parent, order in _ORDER.items()
}
"""Each child's place in :data:`_ORDER`."""
_DROPPED: Final = {_J + "StagingSchedule": "staging happens before and after the job here"}
_STANDARD_NAMESPACES: Final = {HPCPA_OGF_VARIANT: JSDL_HPCPA}
_VARIANTS: Final = tuple("{" + namespace + "}" for namespace in _STANDARD_NAMESPACES)
_JPS: Final = (_J, _P, _S)
_CREDENTIAL_VARIANT: Final = qname(HPCP_FS, "Credential")
_CREDENTIAL: Final = qname(HPCP_AC, "Credential")
# Unqualified attributes the JSDL schemas declare (any other one is not allowed).
_DECLARED_ATTRIBUTES: Final = {
    _J + "JobDefinition": {"id"},
    _J + "DataStaging": {"name"},
    _J + "FileSystem": {"name"},
    _J + "LowerBoundedRange": {"exclusiveBound"},
    _J + "UpperBoundedRange": {"exclusiveBound"},
    _J + "LowerBound": {"exclusiveBound"},
    _J + "UpperBound": {"exclusiveBound"},
    _J + "Exact": {"epsilon"},
    _P + "Executable": {"filesystemName"},
    _P + "Argument": {"filesystemName"},
    _P + "Input": {"filesystemName"},
    _P + "Output": {"filesystemName"},
    _P + "Error": {"filesystemName"},
    _P + "WorkingDirectory": {"filesystemName"},
    _P + "Environment": {"name", "filesystemName"},
    _P + "POSIXApplication": {"name"},
    _S + "SPMDApplication": {"name"},
    _S + "NumberOfProcesses": {"actualTotalCPUCount"},
    _S + "ProcessesPerHost": {"actualIndividualCPUCount"},
}


def normalize(job: etree._Element) -> list[str]:
    """Rewrite the known real-world variants in the ``jsdl:JobDefinition`` ``job``, in place.

    Returns one readable warning per rewrite, empty if the document needed none.
    """
    warnings: list[str] = []
    # Every CreateActivity comes through here, and most need nothing: each check is a string
    # test on the tag before any work (the elements are listed once, before any is removed).
    nodes = list(job.iter(etree.Element))
    for node in nodes:
        tag = str(node.tag)
        if tag.startswith(_VARIANTS) or tag == _CREDENTIAL_VARIANT:
            _namespace(node, warnings)
    for node in nodes:
        tag = str(node.tag)
        if tag in _DROPPED:
            warnings.append(f"{element_path(node)}: dropped (not JSDL 1.0; {_DROPPED[tag]})")
            parent = node.getparent()
            if parent is not None:
                parent.remove(node)
            continue
        if not tag.startswith(_JPS):
            continue
        if node.keys():
            _attributes(node, warnings)
        if tag in _RANKS:
            _order(node, warnings)
        if tag == _J + "DataStaging":
            _creation_flag(node, warnings)
        elif tag == _J + "FileSystem" and node.get("name") is None:
            name = _free_name(job)
            node.set("name", name)
            warnings.append(f"{element_path(node)}: had no name (required); named it {name!r}")
    return warnings


def _namespace(node: etree._Element, warnings: list[str]) -> None:
    qualified = etree.QName(node)
    standard = _STANDARD_NAMESPACES.get(qualified.namespace or "")
    if standard is not None:
        before = element_path(node)
        node.tag = qname(standard, qualified.localname)
        if qualified.localname == "HPCProfileApplication":
            warnings.append(
                f"{before}: moved from namespace {qualified.namespace} to the HPC Profile "
                f"Application's, {standard}"
            )
    elif node.tag == _CREDENTIAL_VARIANT:
        node.tag = _CREDENTIAL
        warnings.append(
            f"{element_path(node)}: the HPC-FSP Credential moved from namespace {HPCP_FS} "
            f"to {HPCP_AC}"
        )


def _attributes(node: etree._Element, warnings: list[str]) -> None:
    declared = _DECLARED_ATTRIBUTES.get(str(node.tag), set())
    for name in list(node.attrib):
        if not name.startswith("{") and name not in declared:
            warnings.append(
                f"{element_path(node)}: dropped the attribute {name}={node.get(name)!r} "
                "(not declared by the schema)"
            )
            del node.attrib[name]


def _order(node: etree._Element, warnings: list[str]) -> None:
    rank = _RANKS[str(node.tag)]
    last = len(rank)
    elements = [c for c in node if isinstance(c.tag, str)]
    ranks = [rank.get(str(c.tag), last) for c in elements]
    if ranks == sorted(ranks):
        return  # already in order (a stable sort would change nothing)
    ranked = sorted(elements, key=lambda c: rank.get(str(c.tag), last))
    warnings.append(f"{element_path(node)}: children put in the order of the schema")
    for child in elements:
        node.remove(child)
    for child in ranked:
        node.append(child)


def _creation_flag(staging: etree._Element, warnings: list[str]) -> None:
    if staging.find(_J + "CreationFlag") is not None:
        return
    flag = etree.Element(_J + "CreationFlag")
    flag.text = "overwrite"
    anchor = staging.find(_J + "FilesystemName")
    if anchor is None:
        anchor = staging.find(_J + "FileName")
    if anchor is None:
        return  # no FileName either: invalid, and left so
    anchor.addnext(flag)
    flag.tail = anchor.tail
    warnings.append(
        f"{element_path(staging)}: CreationFlag (required) was missing; overwrite assumed"
    )


def _free_name(job: etree._Element) -> str:
    taken = {fs.get("name") for fs in job.iter(_J + "FileSystem")}
    n = 1
    while f"fs{n}" in taken:
        n += 1
    return f"fs{n}"
