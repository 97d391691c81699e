"""Bad input refused at CreateActivity, before anything is stored or queued: staging FileNames
that leave the job's directory, and ``file:`` URIs outside the directories the site set aside
for them (none by default)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from bes.app import BesApp, create_app
from bes.config import ServiceConfig
from tests.support import soap
from tests.support.soap import ACTIONS
from tests.support.standards import assert_official

pytestmark = pytest.mark.anyio

SHARED = "/srv/grid-shared"
"""The site directory ``file:`` URIs may name in these tests (it need not exist: the service
only checks names; the worker checks the files)."""


async def serve(tmp_path: Path, file_roots: tuple[str, ...]) -> AsyncIterator[httpx.AsyncClient]:
    app: BesApp = create_app(ServiceConfig(data_dir=tmp_path / "data", file_roots=file_roots))
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bes.test") as client:
            yield client
    finally:
        await app.shutdown()


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The default: no directories for ``file:`` URIs."""
    async for client in serve(tmp_path, ()):
        yield client


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A site with one shared directory (given with a trailing slash, as people write it)."""
    async for client in serve(tmp_path, (SHARED + "/",)):
        yield client


def job(*stagings: str, sweep: str = "") -> bytes:
    return (
        '<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl" '
        'xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" '
        'xmlns:jsdl-u="http://www.unicore.eu/unicore/jsdl-extensions" '
        'xmlns:sweep="http://schemas.ogf.org/jsdl/2009/03/sweep" '
        'xmlns:sweepfunc="http://schemas.ogf.org/jsdl/2009/03/sweep/functions">'
        "<jsdl:JobDescription><jsdl:Application><posix:POSIXApplication>"
        "<posix:Executable>/bin/cat</posix:Executable><posix:Argument>in.txt</posix:Argument>"
        "</posix:POSIXApplication></jsdl:Application>"
        + "".join(stagings)
        + "</jsdl:JobDescription>"
        + sweep
        + "</jsdl:JobDefinition>"
    ).encode()


def staging(file_name: str, *, source: str = "", target: str = "", extra: str = "") -> str:
    parts = f"<jsdl:FileName>{file_name}</jsdl:FileName>"
    parts += "<jsdl:CreationFlag>overwrite</jsdl:CreationFlag>"
    if source:
        parts += f"<jsdl:Source><jsdl:URI>{source}</jsdl:URI></jsdl:Source>"
    if target:
        parts += f"<jsdl:Target><jsdl:URI>{target}</jsdl:URI></jsdl:Target>"
    return f"<jsdl:DataStaging>{parts}{extra}</jsdl:DataStaging>"


def sweep_of(match: str, *values: str) -> str:
    """A parameter sweep giving the node at ``match`` each of ``values``."""
    items = "".join(f"<sweepfunc:Value>{v}</sweepfunc:Value>" for v in values)
    return (
        "<sweep:Sweep><sweep:Assignment><sweep:DocumentNode>"
        '<sweep:NamespaceBinding ns="http://schemas.ggf.org/jsdl/2005/11/jsdl" prefix="jsdl"/>'
        f"<sweep:Match>{match}</sweep:Match></sweep:DocumentNode>"
        f"<sweepfunc:Values>{items}</sweepfunc:Values></sweep:Assignment></sweep:Sweep>"
    )


async def create(client: httpx.AsyncClient, document: bytes) -> httpx.Response:
    response = await client.post(
        "/bes",
        content=soap.envelope(soap.create_activity(document)),
        headers={"SOAPAction": f'"{ACTIONS}CreateActivity"', "Content-Type": "text/xml"},
    )
    assert_official(response.content, "CreateActivity answer")
    return response


def refusal(response: httpx.Response, kind: str) -> etree._Element:
    """The fault's detail element, which must be ``kind``."""
    assert response.status_code == 500, response.text
    fault = soap.fault_of(response.content)
    assert fault.findtext("faultcode") == "soap:Client"
    (detail,) = fault.find("detail")
    assert etree.QName(detail).localname == kind, response.text
    return detail


async def accepted(client: httpx.AsyncClient, document: bytes) -> None:
    response = await create(client, document)
    assert response.status_code == 200, response.text
    assert soap.xpath(soap.body_of(response.content), "bes:ActivityIdentifier")


async def nothing_stored(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/bes",
        content=soap.envelope(f'<bes:GetFactoryAttributesDocument xmlns:bes="{soap.BES}"/>'),
    )
    document = soap.body_of(response.content)
    assert soap.xpath(document, "string(//bes:TotalNumberOfActivities)") == "0"


# ------------------------------------------------------------------------------ FileName


@pytest.mark.parametrize(
    ("file_name", "said"),
    [
        ("../../etc/cron.d/x", "climbs out"),
        ("results/../../x", "climbs out"),
        ("/etc/passwd", "absolute path"),
        ("C:\\Users\\x", "absolute path"),
        ("", "is empty"),
        ("in&#9;put", "control character"),
        ("in&#x7f;put", "control character"),
    ],
)
async def test_unsafe_file_names_are_invalid_requests_naming_the_element(
    plain: httpx.AsyncClient, file_name: str, said: str
) -> None:
    response = await create(plain, job(staging(file_name, source="http://example.org/in")))
    detail = refusal(response, "InvalidRequestMessageFault")
    (invalid,) = soap.xpath(detail, "bes:InvalidElement/text()")
    assert invalid.endswith(
        "/jsdl:JobDefinition/jsdl:JobDescription/jsdl:DataStaging/jsdl:FileName"
    )
    assert said in soap.xpath(detail, "string(bes:Message)")
    await nothing_stored(plain)


async def test_a_nul_in_a_file_name_is_refused(plain: httpx.AsyncClient) -> None:
    """XML 1.0 cannot carry a NUL, not even as ``&#0;``: the message is not XML, so it is
    refused as a whole before any element is read (the FileName rule refuses a NUL that
    reaches the model by any other road: tests/jsdl/test_parse.py)."""
    for name in ("in&#0;put", "in\0put"):
        response = await create(plain, job(staging(name, source="http://example.org/in")))
        assert response.status_code == 500
        fault = soap.fault_of(response.content)
        assert fault.findtext("faultcode") == "soap:Client"
        assert "not well-formed" in fault.findtext("faultstring")
    await nothing_stored(plain)


async def test_the_second_staging_is_named_when_it_is_the_bad_one(
    plain: httpx.AsyncClient,
) -> None:
    document = job(
        staging("in.txt", source="http://example.org/in"),
        staging("../out.txt", target="http://example.org/out"),
    )
    detail = refusal(await create(plain, document), "InvalidRequestMessageFault")
    (invalid,) = soap.xpath(detail, "bes:InvalidElement/text()")
    assert invalid.endswith("/jsdl:JobDescription/jsdl:DataStaging[2]/jsdl:FileName")


async def test_a_sweep_point_with_an_unsafe_file_name_is_refused(
    plain: httpx.AsyncClient,
) -> None:
    document = job(
        staging("in.txt", source="http://example.org/in"),
        sweep=sweep_of("//jsdl:DataStaging/jsdl:FileName", "a.txt", "../../b.txt"),
    )
    detail = refusal(await create(plain, document), "InvalidRequestMessageFault")
    assert "point 2 of the parameter sweep" in soap.xpath(detail, "string(bes:Message)")
    await nothing_stored(plain)


# ------------------------------------------------------------------------------ file: URIs


@pytest.mark.parametrize("role", ["source", "target"])
async def test_file_uris_are_unsupported_where_the_site_has_no_directories(
    plain: httpx.AsyncClient, role: str
) -> None:
    uri = f"file://{SHARED}/in.txt"
    response = await create(plain, job(staging("in.txt", **{role: uri})))
    detail = refusal(response, "UnsupportedFeatureFault")
    (feature,) = soap.xpath(detail, "bes:Feature/text()")
    assert uri in feature and f"jsdl:{role.title()}" in feature
    assert "no directories" in feature
    await nothing_stored(plain)


@pytest.mark.parametrize(
    "uri",
    [
        f"file://{SHARED}/in.txt",
        f"file://{SHARED}/deeper/in.txt",
        f"file://localhost{SHARED}/in.txt",
        f"file://{SHARED}/a/../in.txt",
        f"file://{SHARED}",
    ],
)
async def test_file_uris_under_a_site_directory_are_taken(
    shared: httpx.AsyncClient, uri: str
) -> None:
    await accepted(shared, job(staging("in.txt", source=uri)))
    await accepted(shared, job(staging("out.txt", target=uri)))


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        f"file://{SHARED}/../../etc/passwd",
        f"file://{SHARED}/%2e%2e/etc/passwd",
        f"file://{SHARED}-evil/in.txt",
        f"file://fileserver.example.org{SHARED}/in.txt",
        "file:relative/in.txt",
        "file://./in.txt",
        "FILE:///etc/passwd",
    ],
)
async def test_file_uris_outside_the_site_directories_are_refused(
    shared: httpx.AsyncClient, uri: str
) -> None:
    for role, name in (("source", "in.txt"), ("target", "out.txt")):
        detail = refusal(
            await create(shared, job(staging(name, **{role: uri}))), "UnsupportedFeatureFault"
        )
        (feature,) = soap.xpath(detail, "bes:Feature/text()")
        assert f"under {SHARED}" in feature, feature
    await nothing_stored(shared)


async def test_a_sweep_point_with_a_file_uri_outside_is_refused(
    shared: httpx.AsyncClient,
) -> None:
    document = job(
        staging("out.txt", target=f"file://{SHARED}/out-1.txt"),
        sweep=sweep_of(
            "//jsdl:DataStaging/jsdl:Target/jsdl:URI",
            f"file://{SHARED}/out-1.txt",
            "file:///etc/out-2.txt",
        ),
    )
    response = await create(shared, document)
    detail = refusal(response, "UnsupportedFeatureFault")
    assert soap.xpath(detail, "bes:Feature[contains(., 'file:///etc/out-2.txt')]")
    fault = soap.fault_of(response.content)
    assert fault.findtext("faultstring").startswith("point 2 of the parameter sweep")
    await nothing_stored(shared)


async def test_other_sources_are_unaffected(plain: httpx.AsyncClient) -> None:
    """http, https, ftp and UNICORE's inline data are taken as before, without file roots."""
    document = job(
        staging("a.txt", source="http://example.org/a"),
        staging("b.txt", source="https://example.org/b", target="ftp://example.org/b"),
        staging(
            "c.txt",
            source="inline://dummy",
            extra="<jsdl-u:InlineData>hello from the document</jsdl-u:InlineData>",
        ),
        staging("dir/d.txt", target="https://example.org/d"),
    )
    await accepted(plain, document)
