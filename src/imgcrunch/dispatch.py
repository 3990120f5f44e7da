"""Who runs a unit of work, and where. Embedded mode: asyncio tasks inside the API server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Protocol

from imgcrunch import repository
from imgcrunch.db import SessionFactory
from imgcrunch.pipeline import Pipeline
from imgcrunch.repository import Batch
from imgcrunch.webhooks import Deliverer

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    async def start(self) -> None: ...

    def submit(self, request_id: uuid.UUID) -> None: ...

    async def stop(self) -> None: ...


class InlineDispatcher:
    """Feeds batches of a request's pending images to a few lanes that run the pipeline.

    Every fact is in the database, so the in-memory queues may be lost at any moment: on start,
    unfinished requests are picked up again and claims left by a killed process are released.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        deliverer: Deliverer,
        *,
        sessions: SessionFactory,
        lanes: int,
        batch_size: int,
        shutdown_grace: float,
        webhook_poll: float = 5.0,
    ) -> None:
        self._pipeline = pipeline
        self._deliverer = deliverer
        self._sessions = sessions
        self._lane_count = lanes
        self._batch_size = batch_size
        self._shutdown_grace = shutdown_grace
        self._webhook_poll = webhook_poll
        self._requests: asyncio.Queue[uuid.UUID] = asyncio.Queue()
        # Bounded: batches are produced only as fast as lanes take them, so memory stays flat.
        self._batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=lanes)
        self._webhooks_due = asyncio.Event()
        self._feeder: asyncio.Task[None] | None = None
        self._lanes: list[asyncio.Task[None]] = []
        self._courier: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with self._sessions.begin() as session:
            # One embedded process owns the database, so any claim is a dead process's leftover.
            released = await repository.release_claims(session)
            unfinished = await repository.unfinished_request_ids(session)
        if released or unfinished:
            log.info(
                "resuming %d unfinished requests (%d claims released)", len(unfinished), released
            )
        for request_id in unfinished:
            self.submit(request_id)
        self._feeder = asyncio.create_task(self._feed(), name="imgcrunch-feeder")
        self._lanes = [
            asyncio.create_task(self._run_lane(), name=f"imgcrunch-lane-{n}")
            for n in range(self._lane_count)
        ]
        self._courier = asyncio.create_task(self._deliver_webhooks(), name="imgcrunch-webhooks")
        self._webhooks_due.set()

    def submit(self, request_id: uuid.UUID) -> None:
        self._requests.put_nowait(request_id)

    async def stop(self) -> None:
        """Take no new work, let in-flight batches finish within the grace, release the rest."""
        for task in (self._feeder, self._courier):
            if task is not None:
                task.cancel()
        while not self._batches.empty():  # their images stay pending in the database
            self._batches.get_nowait()
        for _ in self._lanes:
            self._batches.put_nowait(None)
        if self._lanes:
            _, late = await asyncio.wait(self._lanes, timeout=self._shutdown_grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._lanes, return_exceptions=True)
        for task in (self._feeder, self._courier):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        async with self._sessions.begin() as session:
            released = await repository.release_claims(session, worker=self._pipeline.worker_id)
        if released:
            log.info("shutdown: released %d images for the next start", released)

    async def _feed(self) -> None:
        while True:
            request_id = await self._requests.get()
            try:
                await self._feed_request(request_id)
            except Exception:
                log.exception("could not schedule request %s", request_id)

    async def _feed_request(self, request_id: uuid.UUID) -> None:
        if not await self._pipeline.ingest(request_id):
            return
        after_id = 0
        while True:
            async with self._sessions() as session:
                batch = await repository.next_batch(
                    session, request_id, after_id=after_id, size=self._batch_size
                )
            if batch is None:
                break
            await self._batches.put(batch)
            after_id = batch.last_id
        if after_id == 0 and await self._pipeline.finalize_if_complete(request_id):
            # Everything was processed before a restart, but the request was not finalised.
            self._webhooks_due.set()

    async def _run_lane(self) -> None:
        while (batch := await self._batches.get()) is not None:
            try:
                if await self._pipeline.process_batch(batch):
                    self._webhooks_due.set()
            except Exception:
                # Its claims hold until they go stale; then a fresh scan of the request re-runs it.
                retry_in = self._pipeline.options.claim_timeout + 1
                log.exception("batch %s failed; retrying in %.0f s", batch, retry_in)
                asyncio.get_running_loop().call_later(retry_in, self.submit, batch.request_id)

    async def _deliver_webhooks(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._webhook_poll):
                    await self._webhooks_due.wait()
            self._webhooks_due.clear()
            try:
                await self._deliverer.deliver_due()
            except Exception:
                log.exception("webhook delivery round failed")
