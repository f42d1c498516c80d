"""Fixtures for the storage tests, parametrized over SQLite and PostgreSQL.

PostgreSQL tests use scratch databases on the server TEST_DATABASE_URL names (default
postgresql://postgres@127.0.0.1:5432/ai_stream_test). Each database's name is that one's plus a
suffix unique to the test run (process id and a random part), so two runs on one server never
drop each other's databases. It is created once per test module (connecting to the `postgres`
maintenance database), dropped after it, and its tables are truncated before each test. They
fail when the server cannot be reached.

Import what you need, e.g. in conftest.py:
    from tests.storage_fixtures import fresh_target, pg_url, store, store_target  # noqa: F401
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from storage import Store, create_store

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/ai_stream_test"
BACKENDS = ["sqlite", "postgresql"]
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

T = TypeVar("T")


def run_in_thread(factory: Callable[[], Awaitable[T]]) -> T:
    """Run async setup from a sync fixture on its own loop in a worker thread, so it never
    touches the event loop pytest-asyncio manages for the tests."""

    async def main() -> T:
        return await factory()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def with_address(url: str, host: str, port: int) -> str:
    """`url` pointing at host:port instead (keeps user and password)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def database_name(url: str) -> str:
    name = urlsplit(url).path.lstrip("/")
    if not _SAFE_NAME.match(name):
        raise ValueError(f"test database name must match {_SAFE_NAME.pattern}: {name!r}")
    return name


async def recreate_database(url: str) -> None:
    """Drop and create the database `url` names, through the `postgres` database."""
    name = database_name(url)  # checked above: safe to put in DDL, which takes no parameters
    conn = await asyncpg.connect(with_database(url, "postgres"), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(url: str) -> None:
    name = database_name(url)
    conn = await asyncpg.connect(with_database(url, "postgres"), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# Unique to this test run: two runs on one server (CI beside a developer, say) never share a database.
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"


def scratch_database_url(suffix: str = "") -> str:
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # one database per xdist worker
    extra = "_".join(part for part in (suffix, worker, RUN_ID) if part)
    return with_database(url, f"{database_name(url)}_{extra}")


@dataclass
class StoreTarget:
    """A database for one test: its DATABASE_URL and raw access for assertions."""

    backend: str
    url: str

    def new_store(self) -> Store:
        return create_store(self.url)

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a parameterless query outside any store (same SQL on both backends)."""
        if self.backend == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as conn:
                rows = conn.execute(sql).fetchall()
            conn.close()
            return rows
        conn = await asyncpg.connect(self.url, timeout=5)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()


def _create_or_fail(url: str) -> None:
    # A missing database fails the run: the PostgreSQL half of the suite is never silently skipped.
    try:
        run_in_thread(lambda: recreate_database(url))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL for tests is not reachable at TEST_DATABASE_URL ({type(exc).__name__}); start it first")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database, fresh for each test module, with migrations applied."""
    url = scratch_database_url()
    _create_or_fail(url)

    async def migrate() -> None:
        store = create_store(url)
        await store.open()
        await store.close()

    run_in_thread(migrate)
    yield url
    run_in_thread(lambda: drop_database(url))


@pytest.fixture(params=BACKENDS)
async def store_target(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreTarget]:
    """An empty, migrated database (SQLite: a new file, migrated on first open)."""
    if request.param == "sqlite":
        yield StoreTarget("sqlite", f"sqlite:///{tmp_path / 'store.db'}")
        return
    url = request.getfixturevalue("pg_url")
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute("TRUNCATE threads, messages CASCADE")  # and the tables that refer to them
    finally:
        await conn.close()
    yield StoreTarget("postgresql", url)


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[Store]:
    """An opened store on an empty database, closed after the test."""
    opened = store_target.new_store()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(params=BACKENDS)
def fresh_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreTarget]:
    """A database with no tables at all, not even schema_migrations."""
    if request.param == "sqlite":
        yield StoreTarget("sqlite", f"sqlite:///{tmp_path / 'fresh.db'}")
        return
    url = scratch_database_url("fresh")
    _create_or_fail(url)
    yield StoreTarget("postgresql", url)
    run_in_thread(lambda: drop_database(url))


class TcpProxy:
    """Forwards a local port to host:port; `stop()` refuses new connections and cuts open
    ones, as a database outage would. `start()` again reuses the same port."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._forward(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            await asyncio.gather(
                _pipe(reader, upstream_writer), _pipe(upstream_reader, writer)
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for stream in (writer, upstream_writer):
                if stream is not None:
                    stream.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
