"""Shared fixtures: an in-process service (ASGI, real database) and a live server process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bes.app import BesApp, create_app
from bes.backends.fake import FakeBackend
from bes.config import ServiceConfig
from bes.db.store import Database
from tests.support.postgres import fresh_database, postgres_server
from tests.support.server import LiveServer, live_server
from tests.support.vm import cache_dir_for_tests

# Every bes process the tests start (local workers, bes vm run) shares the tests' image cache,
# not the user's: the node image cache of bes.vmlocal.default_image_cache.
os.environ.setdefault("BES_IMAGE_CACHE", str(cache_dir_for_tests() / "images"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[BesApp]:
    """The service in process, on a fresh SQLite database, with no backend."""
    app = create_app(ServiceConfig(data_dir=tmp_path / "data"))
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()


@pytest.fixture
async def client(service: BesApp) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the in-process service."""
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://bes.test") as c:
        yield c


@pytest.fixture
async def fake_service(tmp_path: Path) -> AsyncIterator[tuple[BesApp, FakeBackend]]:
    """The service in process with a scripted fake backend."""
    fake = FakeBackend()
    app = create_app(
        ServiceConfig(data_dir=tmp_path / "data", backend="fake"), backends={"fake": fake}
    )
    await app.startup()
    try:
        yield app, fake
    finally:
        await app.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real ``bes serve`` process on loopback, shared by the tests of a module."""
    with live_server(tmp_path_factory.mktemp("live") / "data") as s:
        yield s


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database: SQLite (WAL) and PostgreSQL, the same code on both."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bes.sqlite3'}"
    else:
        url = fresh_database(request.getfixturevalue("postgres_admin_url"), tmp_path.name.lower())
    database = Database(url)
    database.migrate()
    try:
        yield database
    finally:
        database.close()
