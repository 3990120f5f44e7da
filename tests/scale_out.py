"""A scale-out deployment for real, as the tests run it: the API (`imgcrunch serve`, queue
`celery`) and `imgcrunch worker` processes, on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from imgcrunch.signing import new_secret
from tests import servers
from tests.plugins.services import Service, ServiceFactory
from tests.plugins.stores import Bucket
from tests.waiting import wait_until

CLAIM_TIMEOUT = 3.0  # seconds: the lease, short, so that a dead worker's claims go quickly


@dataclass
class Worker:
    """`imgcrunch worker` in a process group of its own, so it can be killed whole."""

    name: str
    env: dict[str, str]
    log_path: Path
    # Options passed through to `celery worker`; mingle and gossip only slow a test's start.
    options: list[str] = field(
        default_factory=lambda: ["--concurrency", "1", "--without-mingle", "--without-gossip"]
    )
    process: subprocess.Popen[bytes] | None = None
    _log_start: int = 0  # where this start's lines begin in the log

    def spawn(self) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "imgcrunch", "worker", "-n", f"{self.name}@%h"]
        self.process = subprocess.Popen(
            [*command, *self.options],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.log()}")
            return " ready." in self.log()[self._log_start :]

        try:
            wait_until(f"worker {self.name} to start", ready, timeout=timeout, interval=0.1)
        except AssertionError:
            raise RuntimeError(
                f"worker did not start within {timeout:g} s:\n{self.log()}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pool_pids(self) -> list[int]:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def kill_whole(self) -> None:
        """SIGKILL the worker and its pool at once, as when its machine dies."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class ScaleOut:
    api: Service
    workers: list[Worker]
    database_url: str
    key_prefix: str

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Rows of one query on the deployment's database, read directly."""

        async def fetch() -> list[tuple[Any, ...]]:
            url = self.database_url.replace("postgresql+asyncpg://", "postgresql://")
            connection = await asyncpg.connect(url)
            try:
                return [tuple(row) for row in await connection.fetch(sql, *args)]
            finally:
                await connection.close()

        return asyncio.run(fetch())

    def image_rows(self, request_id: str) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT source_url, status, output_key, attempts FROM images"
            " WHERE request_id = $1 ORDER BY id",
            request_id,
        )

    def claims_held_by(self, pid: int) -> int:
        rows = self.query(
            "SELECT count(*) FROM images WHERE status = 'pending' AND claimed_by LIKE $1",
            f"%:{pid}",
        )
        held: int = rows[0][0]
        return held


@contextlib.contextmanager
def running_scale_out(
    make_service: ServiceFactory,
    tmp_path: Path,
    *,
    database_url: str,
    broker_url: str,
    key_prefix: str = "",
    workers: int = 2,
    settings: dict[str, str] | None = None,
    own_folders: bool = False,
) -> Iterator[ScaleOut]:
    """The API and `workers` workers, sweeping every second, stopped afterwards. With
    `own_folders`, each worker has a data folder of its own: they share none with the API or
    with each other (the storage then has to be a bucket)."""
    configured = {
        "database_url": database_url,
        "queue": "celery",
        "broker_url": broker_url,
        "broker_key_prefix": key_prefix,
        "claim_timeout": str(CLAIM_TIMEOUT),
        "sweep_interval": "1",
        "batch_size": "8",
    } | (settings or {})
    api = make_service(**configured)
    started = []
    for n in range(workers):
        env = dict(api.env)
        if own_folders:
            folder = tmp_path / f"worker-{n}-data"
            folder.mkdir()
            env["IMGCRUNCH_DATA_DIR"] = str(folder)
        started.append(Worker(f"worker-{chr(ord('a') + n)}", env, tmp_path / f"worker-{n}.log"))
    try:
        for worker in started:
            worker.spawn()
        for worker in started:
            worker.wait_ready()
        yield ScaleOut(api, started, database_url, key_prefix)
    finally:
        for worker in started:
            worker.stop()


@contextmanager
def on_bucket(
    make_service: ServiceFactory,
    tmp_path: Path,
    bucket: Bucket,
    postgres: servers.Postgres,
    redis_server: servers.Redis,
) -> Iterator[ScaleOut]:
    """Scale-out (PostgreSQL, Redis, Celery workers) storing in the bucket, no folder shared."""
    with running_scale_out(
        make_service,
        tmp_path,
        database_url=postgres.new_database(),
        broker_url=servers.REDIS_URL,
        key_prefix=redis_server.new_prefix(),
        # No folder is shared, so neither is a made secret: the deployment names one.
        settings=bucket.settings() | {"webhook_secret": new_secret()},
        own_folders=True,
    ) as deployment:
        yield deployment
