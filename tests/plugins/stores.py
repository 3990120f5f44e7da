"""PostgreSQL, Redis and an S3 server (tests/servers.py), each fresh per test: a new database,
key prefix or bucket prefix; and a migrated SQLite database for tests of the queries' users."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgcrunch.db import SessionFactory, create_engine, session_factory, upgrade
from tests import servers


@pytest.fixture(scope="session")
def postgres() -> Iterator[servers.Postgres]:
    server = servers.connect_postgres()
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.Redis]:
    server = servers.connect_redis()
    yield server
    server.clean()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind, for tests that must hold on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    postgres: servers.Postgres = request.getfixturevalue("postgres")
    return postgres.new_database()


@pytest.fixture
async def sqlite_sessions(tmp_path: Path) -> AsyncIterator[SessionFactory]:
    """Sessions on a fresh, migrated SQLite database of the test's own."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    await upgrade(engine)
    yield session_factory(engine)
    await engine.dispose()


@dataclass(frozen=True)
class Bucket:
    """The session's bucket on its S3 server, under a prefix of this test's own."""

    server: servers.SeaweedS3
    name: str
    prefix: str

    def storage_url(self, prefix: str | None = None) -> str:
        return f"s3://{self.name}/{self.prefix if prefix is None else prefix}"

    def stored(self) -> list[str]:
        """Every key under this test's prefix, relative to it."""
        found = self.server.keys(self.name, f"{self.prefix}/")
        return [key.removeprefix(f"{self.prefix}/") for key in found]

    def settings(self) -> dict[str, str]:
        """make_service's settings for it; the credentials are in the environment."""
        return {"storage_url": self.storage_url(), "s3_endpoint_url": self.server.endpoint}


SESSION_BUCKET = "imgcrunch-tests"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.SeaweedS3]:
    """SeaweedFS, started once a session (about ten seconds), with one bucket; each test takes
    a prefix of its own in it (a new bucket costs SeaweedFS seven volumes)."""
    server = servers.SeaweedS3.start_in(tmp_path_factory.getbasetemp())
    server.create_bucket(SESSION_BUCKET)
    yield server
    server.remove()


@pytest.fixture
def bucket(s3_server: servers.SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh prefix in the session's bucket, with the server's credentials in this process's
    AWS variables (and so in those of the services it starts)."""
    for key, value in s3_server.credentials.items():
        monkeypatch.setenv(key, value)
    return Bucket(s3_server, SESSION_BUCKET, f"t-{uuid.uuid4().hex[:12]}")
