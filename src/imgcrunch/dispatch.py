"""Who runs a unit of work, and where.

Embedded mode: asyncio tasks inside the API server (`InlineDispatcher`). Scale-out mode: Celery
workers, sent messages over the broker (`CeleryDispatcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from imgcrunch import repository
from imgcrunch.config import Settings
from imgcrunch.db import SessionFactory
from imgcrunch.faults import InfrastructureFault
from imgcrunch.pipeline import Pipeline
from imgcrunch.webhooks import Deliverer

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 5.0  # an idle lane looks for work this often, wake-up or not
MAX_RETRY_SECONDS = 30.0


def backoff(failures: int) -> float:
    """Seconds before the next try after `failures` in a row: doubling from 1 s up to
    MAX_RETRY_SECONDS, with full jitter so that lanes and workers do not retry in step."""
    return random.uniform(0.5, 1.0) * min(2.0 ** (failures - 1), MAX_RETRY_SECONDS)


class Dispatcher(Protocol):
    async def start(self) -> None: ...

    def submit(self, request_id: uuid.UUID) -> None: ...

    def deliver_webhooks(self) -> None:
        """Have the due webhook events sent soon: one was just made due (a redelivery)."""

    def cancel(self, request_id: uuid.UUID) -> None:
        """The request was cancelled in the database: stop its work in hand, if any."""

    async def stop(self) -> None: ...


class WebhookNudge:
    """Embedded mode's finished hook: wakes the webhook courier when a request has finished.
    Made before the pipeline, which is given it, and handed to the dispatcher that waits on it."""

    def __init__(self) -> None:
        self.due = asyncio.Event()

    async def __call__(self, _request_id: uuid.UUID) -> None:
        self.due.set()


class InlineDispatcher:
    """A few lanes in the API server, each running the one work loop (`Pipeline.work_next`)
    until no request has an image left to claim, then waiting to be told of new work.

    Every fact is in the database, so nothing here needs to survive: on start, claims left by a
    killed process are released and unfinished requests are picked up again.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        deliverer: Deliverer,
        *,
        sessions: SessionFactory,
        nudge: WebhookNudge,
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
        self._requests: asyncio.Queue[uuid.UUID] = asyncio.Queue()  # to ingest, then claim from
        self._work = asyncio.Event()  # something may have become claimable
        self._webhooks_due = nudge.due
        self._stopping = False
        self._resumer: asyncio.Task[None] | None = None
        self._resuming: set[asyncio.Task[None]] = set()  # ingests under way
        self._lanes: list[asyncio.Task[None]] = []
        self._courier: asyncio.Task[None] | None = None

    @classmethod
    def for_settings(
        cls,
        pipeline: Pipeline,
        deliverer: Deliverer,
        sessions: SessionFactory,
        settings: Settings,
        nudge: WebhookNudge,
    ) -> InlineDispatcher:
        return cls(
            pipeline,
            deliverer,
            sessions=sessions,
            nudge=nudge,
            # Enough batches in flight that one batch's tail never leaves a core idle.
            lanes=max(2, -(-settings.fetch_concurrency // settings.batch_size) + 1),
            batch_size=settings.batch_size,
            shutdown_grace=settings.shutdown_grace,
        )

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
        self._resumer = asyncio.create_task(self._resume_submitted(), name="imgcrunch-resumer")
        self._lanes = [
            asyncio.create_task(self._run_lane(), name=f"imgcrunch-lane-{n}")
            for n in range(self._lane_count)
        ]
        self._courier = asyncio.create_task(self._deliver_webhooks(), name="imgcrunch-webhooks")
        self._webhooks_due.set()

    def submit(self, request_id: uuid.UUID) -> None:
        self._requests.put_nowait(request_id)

    def deliver_webhooks(self) -> None:
        self._webhooks_due.set()

    def cancel(self, request_id: uuid.UUID) -> None:
        self._pipeline.cancel(request_id)

    async def stop(self) -> None:
        """Take no new work, let in-flight batches finish within the grace, release the rest."""
        self._stopping = True
        self._work.set()  # idle lanes wake, and see they are to stop
        if self._lanes:
            log.info(
                "shutdown: no new work is claimed; batches in flight have %g s to finish",
                self._shutdown_grace,
            )
        for task in (self._resumer, self._courier, *self._resuming):
            if task is not None:
                task.cancel()  # an ingest stopped now resumes on the next start
        if self._lanes:
            _, late = await asyncio.wait(self._lanes, timeout=self._shutdown_grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._lanes, return_exceptions=True)
        for task in (self._resumer, self._courier, *self._resuming):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        async with self._sessions.begin() as session:
            released = await repository.release_claims(session, worker=self._pipeline.worker_id)
        if released:
            log.info("shutdown: released %d images for the next start", released)

    async def _resume_submitted(self) -> None:
        """Ingest each submitted request (once; a retried one is ingested already), each on its
        own, so that a small request is not held up behind a big one's ingest."""
        while True:
            request_id = await self._requests.get()
            task = asyncio.create_task(
                self._resume(request_id), name=f"imgcrunch-ingest-{request_id}"
            )
            self._resuming.add(task)
            task.add_done_callback(self._resuming.discard)

    async def _resume(self, request_id: uuid.UUID) -> None:
        """Ingest it, trying again with backoff while that fails (the database or storage
        away): a big ingest stopped midway goes on from its last chunk, not at the next start."""
        failures = 0
        while not self._stopping:
            try:
                await self._pipeline.resume(request_id, on_stored=self._stored)
                break
            except Exception as error:
                failures += 1
                retry_in = backoff(failures)
                if not isinstance(error, InfrastructureFault):
                    log.exception(
                        "could not store request %s's rows; trying again in %.1f s",
                        request_id,
                        retry_in,
                    )
                await asyncio.sleep(retry_in)
        self._work.set()

    async def _stored(self, _claimable: int) -> None:
        """A chunk of a request's rows is stored: the lanes have images to claim."""
        self._work.set()

    async def _run_lane(self) -> None:
        failures = 0
        while not self._stopping:
            self._work.clear()  # before the claim: work made claimable after it wakes the wait
            try:
                worked = await self._pipeline.work_next(batch_size=self._batch_size)
            except Exception as error:
                # Its claims were released (or will go stale): nothing is lost. The pipeline
                # said why already if it is a fault of ours; anything else is a bug.
                failures += 1
                retry_in = backoff(failures)
                if not isinstance(error, InfrastructureFault):
                    log.exception("a batch failed; claiming again in %.1f s", retry_in)
                await asyncio.sleep(retry_in)
                continue
            failures = 0
            if not worked and not self._stopping:
                # The database is the truth; the wake-up only saves waiting for this poll.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL_SECONDS):
                        await self._work.wait()

    async def _deliver_webhooks(self) -> None:
        """Deliver what is due, then sleep until the next retry is due or an event is made."""
        while True:
            self._webhooks_due.clear()
            wait = self._webhook_poll
            try:
                await self._deliverer.deliver_due()
                until_due = await self._deliverer.seconds_until_due()
                if until_due is not None:
                    wait = min(wait, max(until_due, 0.05))
            except Exception:
                log.exception("webhook delivery round failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._webhooks_due.wait()


class CeleryDispatcher:
    """The API side of scale-out mode: sends each request to the workers, and a periodic sweep.

    Sending blocks on the broker, so it runs in a thread; a send that fails is logged and left
    to the sweep, which re-sends what the database says was never picked up.
    """

    def __init__(self, settings: Settings) -> None:
        from imgcrunch import celery_app  # scale-out only: embedded installs have no Celery

        self._celery_app = celery_app
        self._sender: Celery = celery_app.make_celery(settings)
        self._sweep_interval = settings.sweep_interval
        self._sweeper: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name="imgcrunch-sweep")

    def submit(self, request_id: uuid.UUID) -> None:
        self._send(self._celery_app.send_ingest, self._sender, request_id)

    def deliver_webhooks(self) -> None:
        self._send(self._celery_app.send_deliver, self._sender)

    def cancel(self, request_id: uuid.UUID) -> None:
        pass  # workers claim only pending images: a batch in hand finishes, unrecorded

    def _send(self, send_task: Callable[..., None], *args: Any) -> None:
        send = asyncio.get_running_loop().run_in_executor(None, send_task, *args)
        self._sends.add(send)
        send.add_done_callback(self._sent)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._sends:
            await asyncio.wait(self._sends, timeout=10)
        self._sender.close()

    async def check_broker(self) -> None:
        async with asyncio.timeout(5):
            await asyncio.to_thread(self._celery_app.ping_broker, self._sender)

    def _sent(self, send: asyncio.Future[None]) -> None:
        self._sends.discard(send)
        if not send.cancelled() and (error := send.exception()) is not None:
            log.error("could not send a request to the workers (the sweep will): %s", error)

    async def _sweep_periodically(self) -> None:
        # At once on start too: whatever a crash left behind is picked up without waiting.
        while True:
            try:
                await asyncio.to_thread(
                    self._celery_app.send_sweep, self._sender, expires=self._sweep_interval
                )
            except Exception as exc:
                log.error("could not send the periodic sweep: %s", exc)
            await asyncio.sleep(self._sweep_interval)
