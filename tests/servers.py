"""The machine's PostgreSQL and Redis, for tests: a fresh database or key prefix each time.

Where a server is not reachable its tests skip, saying why; with IMGCRUNCH_REQUIRE_SERVICES=1
(CI) they fail instead, so a missing server can never pass for a green run.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from typing import NoReturn

import asyncpg
import pytest
import redis

POSTGRES_ADMIN_URL = os.environ.get(
    "IMGCRUNCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("IMGCRUNCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_PREFIX = "imgcrunch_test_"


def services_required() -> bool:
    return os.environ.get("IMGCRUNCH_REQUIRE_SERVICES") == "1"


def unavailable(what: str, error: BaseException) -> NoReturn:
    reason = f"{what} is not reachable ({type(error).__name__}: {error})"
    if services_required():
        pytest.fail(f"{reason}, and IMGCRUNCH_REQUIRE_SERVICES=1 says it must be", pytrace=False)
    pytest.skip(f"{reason}; start it (README, Development)")


def _run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _database_names() -> list[str]:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", DATABASE_PREFIX + "%"
        )
    finally:
        await connection.close()
    return [row["datname"] for row in rows]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Postgres:
    """Creates databases named imgcrunch_test_<pid>_<random> and drops them all at the end."""

    created: list[str] = field(default_factory=list)

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy (asyncpg) URL."""
        name = f"{DATABASE_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:12]}"
        _run(_admin(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return self.url(name)

    @staticmethod
    def url(name: str) -> str:
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace(
            "postgresql://", "postgresql+asyncpg://"
        )
        return f"{base}/{name}"

    def drop_all(self) -> None:
        for name in self.created:
            _run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.clear()


def connect_postgres() -> Postgres:
    try:
        names = _run(_database_names())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL}", exc)
    assert isinstance(names, list)
    # Databases a killed earlier run left behind: their creator's pid is in the name.
    for name in names:
        pid = name.removeprefix(DATABASE_PREFIX).split("_", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            _run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return Postgres()


@dataclass
class Redis:
    """A key prefix of its own per use, and every key under it deleted at the end."""

    client: redis.Redis
    prefixes: list[str] = field(default_factory=list)

    def new_prefix(self) -> str:
        prefix = f"imgcrunch-test-{uuid.uuid4().hex[:12]}:"
        self.prefixes.append(prefix)
        return prefix

    def keys(self, prefix: str) -> list[bytes]:
        return list(self.client.scan_iter(match=f"{prefix}*"))

    def clean(self) -> None:
        for prefix in self.prefixes:
            for key in self.keys(prefix):
                self.client.delete(key)
        self.prefixes.clear()
        self.client.close()


def connect_redis() -> Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL}", exc)
    return Redis(client)
