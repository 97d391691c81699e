"""From a ``jsdl:JobDefinition`` element to the typed model (JSDL 1.0, GFD.136).

:func:`parse_job_definition` is the only entry point the rest of the service uses. It

1. validates the element against the project's schemas; every error becomes one entry of a
   :class:`~bes.errors.JsdlError` (InvalidRequestMessageFault on the wire);
2. builds the model, collecting semantic problems (empty ranges, references to undeclared file
   systems, two executables) into the same kind of error;
3. refuses every extension element it does not implement with
   :class:`~bes.errors.UnsupportedFeature`, listing them all. Nothing is silently ignored.
"""

from __future__ import annotations

import re
from typing import Any, Final

from lxml import etree

from bes.errors import JsdlError, UnsupportedFeature
from bes.jsdl import schema
from bes.jsdl._application import parse_application
from bes.jsdl._resources import parse_resources
from bes.jsdl._values import Context, boolean, children, text, token
from bes.jsdl._vm import VIRTUAL_MACHINE
from bes.jsdl.model import (
    CreationFlag,
    Credential,
    DataStaging,
    JobDefinition,
    JobDescription,
    JobIdentification,
    UsernameToken,
)
from bes.jsdl.xml import parse_untrusted
from bes.jsdl.xml import tag as xml_tag
from bes.ns import HPCP_AC, JSDL, UNICORE_JSDL, WSSE, qname

_J = "{" + JSDL + "}"
_FILE_SYSTEM_REFERENCES: Final = etree.XPath(
    "descendant-or-self::*[@filesystemName] | descendant-or-self::j:FilesystemName",
    namespaces={"j": JSDL},
)
"""The elements that name a FileSystem (found in one pass in C: every create comes here)."""
JOB_DEFINITION: Final = qname(JSDL, "JobDefinition")
_CREDENTIAL: Final = qname(HPCP_AC, "Credential")
_INLINE_DATA: Final = qname(UNICORE_JSDL, "InlineData")
_BEARER_TOKEN: Final = qname(UNICORE_JSDL, "BearerToken")
_USERNAME_TOKEN: Final = qname(WSSE, "UsernameToken")
_USERNAME: Final = qname(WSSE, "Username")
_PASSWORD: Final = qname(WSSE, "Password")
_PATH_STEPS: Final = re.compile(r"[/\\]")
_WINDOWS_ABSOLUTE: Final = re.compile(r"[A-Za-z]:[/\\]")


def parse_job_definition(element: etree._Element, *, validated: bool = False) -> JobDefinition:
    """Validate and parse a JobDefinition element (its own root or inside a SOAP body).

    Args:
        element: The ``jsdl:JobDefinition`` element.
        validated: The caller already validated an enclosing element against
            :func:`bes.jsdl.schema.validate`; skip doing it again.

    Raises:
        JsdlError: The document is schema-invalid or inconsistent; ``invalid_elements`` names
            every offending element.
        UnsupportedFeature: It uses extension elements this service does not implement.
    """
    if element.tag != JOB_DEFINITION:
        found = etree.QName(element)
        raise JsdlError(
            f"expected jsdl:JobDefinition in namespace {JSDL}, found {found.localname!r}"
            + (f" in namespace {found.namespace}" if found.namespace else " in no namespace"),
            [schema.element_path(element)],
            line=element.sourceline,
        )
    problems = [] if validated else schema.validate(element)
    if problems:
        raise JsdlError(
            "the job definition is not valid JSDL 1.0: "
            + "; ".join(f"line {p.line}: {p.message}" if p.line else p.message for p in problems),
            [p.path for p in problems],
            line=problems[0].line,
        )
    ctx = Context()
    job = _job_definition(element, ctx)
    _check_file_system_references(job, element, ctx)
    _check_one_virtual_machine(element, ctx)
    if ctx.problems:
        raise JsdlError(
            "; ".join(f"{schema.element_path(e)}: {msg}" for e, msg in ctx.problems),
            [schema.element_path(e) for e, _ in ctx.problems],
            line=ctx.problems[0][0].sourceline,
        )
    if ctx.unsupported:
        raise UnsupportedFeature(ctx.unsupported)
    return job


def load_job_definition(data: bytes) -> JobDefinition:
    """Parse a standalone JSDL document (a file a user wrote) with the hardened parser.

    Raises:
        MalformedXml: Not well-formed, or holds a DOCTYPE.
        JsdlError: See :func:`parse_job_definition`.
        UnsupportedFeature: See :func:`parse_job_definition`.
    """
    return parse_job_definition(parse_untrusted(data))


def _job_definition(element: etree._Element, ctx: Context) -> JobDefinition:
    description = JobDescription()
    for child in children(element):
        if child.tag == _J + "JobDescription":
            description = _job_description(child, ctx)
        else:
            ctx.unsupported_here(child)
    return JobDefinition(id=element.get("id"), job_description=description)


def _job_description(element: etree._Element, ctx: Context) -> JobDescription:
    """``jsdl:JobDescription``: JobIdentification?, Application?, Resources?, DataStaging*."""
    values: dict[str, Any] = {}
    staging: list[DataStaging] = []
    for child in children(element):
        tag = xml_tag(child)
        if tag == _J + "DataStaging":
            staging.append(_data_staging(child, ctx))
        elif tag == _J + "Application":
            values["application"] = parse_application(child, ctx)
        elif tag == _J + "Resources":
            values["resources"] = parse_resources(child, ctx)
        elif tag == _J + "JobIdentification":
            values["job_identification"] = _job_identification(child, ctx)
        else:
            ctx.unsupported_here(child)
    return JobDescription(data_staging=tuple(staging), **values)


def _job_identification(element: etree._Element, ctx: Context) -> JobIdentification:
    """``jsdl:JobIdentification``: JobName?, Description?, JobAnnotation*, JobProject*."""
    values: dict[str, Any] = {}
    annotations: list[str] = []
    projects: list[str] = []
    for child in children(element):
        tag = xml_tag(child)
        if tag == _J + "JobName":
            values["job_name"] = text(child)
        elif tag == _J + "Description":
            values["description"] = text(child)
        elif tag == _J + "JobAnnotation":
            annotations.append(text(child))
        elif tag == _J + "JobProject":
            projects.append(text(child))
        else:
            ctx.unsupported_here(child)
    return JobIdentification(
        job_annotation=tuple(annotations), job_project=tuple(projects), **values
    )


def _data_staging(element: etree._Element, ctx: Context) -> DataStaging:
    """Parse ``jsdl:DataStaging`` (§6.5)::

    <jsdl:DataStaging name="...">
      <jsdl:FileName>input.dat</jsdl:FileName>
      <jsdl:FilesystemName>scratch</jsdl:FilesystemName>?
      <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
      <jsdl:DeleteOnTermination>true</jsdl:DeleteOnTermination>?
      <jsdl:Source><jsdl:URI>http://...</jsdl:URI></jsdl:Source>?
      <jsdl:Target><jsdl:URI>ftp://...</jsdl:URI></jsdl:Target>?
      <ac:Credential><wsse:UsernameToken>...</wsse:UsernameToken></ac:Credential>?
      <jsdl-u:InlineData>file content</jsdl-u:InlineData>?   (UNICORE, with an inline: Source)
    </jsdl:DataStaging>
    """
    values: dict[str, Any] = {}
    for child in children(element):
        tag = xml_tag(child)
        if tag == _J + "FileName":
            values["file_name"] = token(child)
        elif tag == _J + "FilesystemName":
            values["filesystem_name"] = token(child)
        elif tag == _J + "CreationFlag":
            values["creation_flag"] = CreationFlag(token(child))
        elif tag == _J + "DeleteOnTermination":
            values["delete_on_termination"] = boolean(child)
        elif tag in (_J + "Source", _J + "Target"):
            values[tag[len(_J) :].lower()] = _uri(child, ctx)
        elif tag == _CREDENTIAL:
            values["credential"] = _credential(child, ctx)
        elif tag == _INLINE_DATA:
            values["inline_data"] = child.text or ""
        else:
            ctx.unsupported_here(child)
    staging = DataStaging(name=element.get("name"), **values)
    file_name = element.find(_J + "FileName")
    problem = file_name_problem(staging.file_name)
    if problem is not None and file_name is not None:
        ctx.problem(file_name, problem)
    inline_source = (staging.source or "").lower().startswith("inline:")
    if staging.inline_data is not None and not inline_source:
        ctx.problem(element, "jsdl-u:InlineData goes with an inline: Source URI")
    elif inline_source and staging.inline_data is None:
        ctx.problem(element, "an inline: Source needs its jsdl-u:InlineData")
    return staging


def file_name_problem(name: str) -> str | None:
    """Why a DataStaging FileName cannot name a file in the job's directory, or None.

    The worker checks again where it stages (:func:`bes.vm.media.safe_relative`); refusing
    here tells the submitter at once, as InvalidRequestMessageFault naming the element.
    """
    if not name:
        return "the FileName is empty; it must name a file in the job's directory"
    control = next((c for c in name if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if control is not None:
        return f"the FileName {name!r} holds the control character U+{ord(control):04X}"
    if name.startswith(("/", "\\")) or _WINDOWS_ABSOLUTE.match(name):
        return (
            f"the FileName {name!r} is an absolute path; it must be relative to the job's directory"
        )
    if ".." in _PATH_STEPS.split(name):
        return f"the FileName {name!r} climbs out of the job's directory with '..'"
    return None


def _uri(element: etree._Element, ctx: Context) -> str | None:
    uri: str | None = None
    for child in children(element):
        if child.tag == _J + "URI":
            uri = token(child)
        else:
            ctx.unsupported_here(child)
    return uri


def _credential(element: etree._Element, ctx: Context) -> Credential:
    """``ac:Credential`` holding one ``wsse:UsernameToken`` (HPC-FSP, GFD.135 §3), or
    UNICORE's ``jsdl-u:BearerToken`` (an empty one means none)."""
    token_value: UsernameToken | None = None
    bearer: str | None = None
    for child in children(element):
        if child.tag == _BEARER_TOKEN:
            bearer = (child.text or "").strip() or None
        elif child.tag == _USERNAME_TOKEN:
            username = child.find(_USERNAME)
            password = child.find(_PASSWORD)
            token_value = UsernameToken(
                username=text(username) if username is not None else "",
                password=text(password) if password is not None else "",
            )
        else:
            ctx.unsupported_here(child)
    return Credential(username_token=token_value, bearer_token=bearer)


def _check_one_virtual_machine(element: etree._Element, ctx: Context) -> None:
    machines = list(element.iter(VIRTUAL_MACHINE))
    for extra in machines[1:]:
        ctx.problem(extra, "a job runs in one virtual machine; this is a second VirtualMachine")


def _check_file_system_references(
    job: JobDefinition, element: etree._Element, ctx: Context
) -> None:
    """Every ``FilesystemName`` and ``@filesystemName`` must name a declared FileSystem."""
    resources = job.job_description.resources
    declared = {fs.name for fs in resources.file_system} if resources else set()
    for node in _FILE_SYSTEM_REFERENCES(element):
        ref = node.get("filesystemName") if node.tag != _J + "FilesystemName" else token(node)
        if ref is not None and ref.strip() and ref.strip() not in declared:
            ctx.problem(
                node, f"file system {ref.strip()!r} is not declared in Resources/FileSystem"
            )
