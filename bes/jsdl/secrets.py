"""The secrets a JSDL document may carry, kept out of everything but the job's worker.

Two kinds: the ``wsse:Password`` of an HPC File Staging ``ac:Credential`` (GFD.135) and
UNICORE's ``jsdl-u:BearerToken``. Before an activity is stored, its document (the XML that
GetActivityDocuments gives back) has them replaced by :data:`REDACTED`, and its job (the model,
stored as JSON for the backends and workers) has them sealed with the service's key
(:mod:`bes.sealing`). Only the worker gateway opens them, for the worker that leases the job.

Opening passes values that are not sealed through unchanged: jobs stored before sealing was
introduced still run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Final

from lxml import etree

from bes.errors import JsdlError
from bes.jsdl.model import Credential, DataStaging, JobDefinition
from bes.jsdl.xml import parse_stored
from bes.ns import UNICORE_JSDL, WSSE, qname
from bes.sealing import Sealer, UnsealError, is_sealed

REDACTED: Final = "***"
"""What a redacted document holds in place of each password and bearer token (valid
xs:string content, so the document stays as valid as it was)."""

_PASSWORD: Final = qname(WSSE, "Password")
_BEARER_TOKEN: Final = qname(UNICORE_JSDL, "BearerToken")
_NAMES: Final = ("Password", "BearerToken")
"""Local names of the secret elements: a document without them as text has none to redact."""


def redact_document(document: str) -> str:
    """``document`` with the text of every ``wsse:Password`` and non-empty
    ``jsdl-u:BearerToken`` replaced by :data:`REDACTED`; the document itself (unchanged,
    character for character) if it holds none.

    Raises:
        JsdlError: It holds a secret's element name but is not well-formed XML (never the case
            for a document that was parsed at the edge).
    """
    if not any(name in document for name in _NAMES):
        return document
    try:
        root = parse_stored(document)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise JsdlError(f"the document cannot be redacted: {exc}") from exc
    changed = False
    for element in root.iter(_PASSWORD, _BEARER_TOKEN):
        value = str(element.xpath("string()"))
        if not (value if element.tag == _PASSWORD else value.strip()):
            continue  # nothing secret: an empty password, or an empty token meaning none
        for child in list(element):  # comments between pieces of the value, with their tails
            element.remove(child)
        element.text = REDACTED
        changed = True
    return etree.tostring(root, encoding="unicode") if changed else document


def has_credentials(job: JobDefinition) -> bool:
    """Whether the job carries a password or bearer token."""
    return any(_secrets(s.credential) for s in job.job_description.data_staging)


def seal_credentials(job: JobDefinition, sealer: Sealer) -> JobDefinition:
    """``job`` with every staging password and bearer token sealed (for storing)."""
    return _map_credentials(job, sealer.seal)


def open_credentials(job: JobDefinition, sealer: Sealer | None) -> JobDefinition:
    """``job`` with its sealed passwords and bearer tokens opened (for the worker that leased
    it). Values that are not sealed (stored before sealing) pass through unchanged.

    Raises:
        UnsealError: A value was sealed with a key ``sealer`` does not hold, or there is no
            sealer.
    """

    def open_one(value: str) -> str:
        if not is_sealed(value):
            return value
        if sealer is None:
            raise UnsealError("a sealed value, and this service has no sealing key")
        return sealer.open(value)

    return _map_credentials(job, open_one)


def _secrets(credential: Credential | None) -> list[str]:
    if credential is None:
        return []
    token = credential.username_token
    found = [token.password] if token is not None and token.password else []
    return found + ([credential.bearer_token] if credential.bearer_token else [])


def _map_credentials(job: JobDefinition, change: Callable[[str], str]) -> JobDefinition:
    """``job`` with ``change`` applied to every non-empty password and bearer token (the same
    object if it has none)."""
    staging = job.job_description.data_staging
    if not any(_secrets(s.credential) for s in staging):
        return job
    return dataclasses.replace(
        job,
        job_description=dataclasses.replace(
            job.job_description, data_staging=tuple(_map_staging(s, change) for s in staging)
        ),
    )


def _map_staging(staging: DataStaging, change: Callable[[str], str]) -> DataStaging:
    credential = staging.credential
    if credential is None or not _secrets(credential):
        return staging
    token = credential.username_token
    if token is not None and token.password:
        token = dataclasses.replace(token, password=change(token.password))
    bearer = change(credential.bearer_token) if credential.bearer_token else None
    return dataclasses.replace(
        staging,
        credential=dataclasses.replace(credential, username_token=token, bearer_token=bearer),
    )
