"""Scale-out mode: the Celery app, its thin tasks, and the messages that set them going.

Messages carry no facts; every fact is in the database. A batch message says only "process a
batch": the worker that takes it claims the next batch of the request that has waited longest
(fair share; see `repository.claim_next_batch`), and an ingest sends one message per batch the
request makes. Tasks are idempotent (a redelivered message claims nothing already claimed) and
the broker is configured so a message is acknowledged only once its work is recorded.

Each worker process runs the pipeline on an asyncio loop in a thread of its own, built after the
fork, so the Celery pool (prefork by default, solo, threads) is free to be any of them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from celery import Celery, Task, signals
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import InterfaceError, OperationalError

from imgcrunch.codec_pool import WORKER_NICENESS
from imgcrunch.config import Settings
from imgcrunch.faults import InfrastructureFault
from imgcrunch.runtime import Runtime, open_runtime, open_sessions

log = logging.getLogger(__name__)

BATCHES_QUEUE = "imgcrunch"
# Ingests and sweeps get a queue of their own, so they never wait behind a big request's batches.
CONTROL_QUEUE = "imgcrunch-control"

INGEST = "imgcrunch.ingest"
PROCESS_NEXT = "imgcrunch.process_next"
SWEEP = "imgcrunch.sweep"
DELIVER = "imgcrunch.deliver_webhooks"

# The database or the broker is away for a moment: worth trying again, later.
TRANSIENT = (OperationalError, InterfaceError, OSError, TimeoutError)
RETRY_BACKOFF_MAX = 300.0
ABANDONED_WRITE_AGE = 3600.0  # seconds; a write takes milliseconds

T = TypeVar("T")


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {"visibility_timeout": settings.broker_visibility_timeout}
    if settings.broker_key_prefix:
        transport["global_keyprefix"] = settings.broker_key_prefix
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5.0,
        # A message is acknowledged after its task ran, not when it was received; a worker that
        # dies mid-task (even a killed pool process) puts it back in the queue.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message reserved per process: a long batch never holds others a free worker could run.
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,  # results live in the database, not in a result backend
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": BATCHES_QUEUE,
        "task_routes": {name: {"queue": CONTROL_QUEUE} for name in (INGEST, SWEEP, DELIVER)},
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("imgcrunch", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


app = Celery("imgcrunch")
_settings: Settings | None = None
_codec_threads: int | None = None


def configure(settings: Settings) -> Celery:
    """Point the worker app at the settings' broker; every worker process inherits them."""
    global _settings
    _settings = settings
    app.conf.update(celery_config(settings))
    return app


@signals.celeryd_after_setup.connect
def _size_codec_pool(sender: str, instance: Any, **_: Any) -> None:
    # Celery's -c counts pool processes. Each prefork process compresses one batch at a time, so
    # the cores are shared among them; a threads or solo pool shares one runtime and one pool.
    global _codec_threads
    cores = _current_settings().cpu_workers
    prefork = "prefork" in getattr(instance.pool_cls, "__module__", "")
    _codec_threads = max(1, cores // int(instance.concurrency)) if prefork else cores


def _current_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings()
    return _settings


# --- one runtime per worker process ---------------------------------------------------------


class WorkerRuntime:
    """The pipeline of one worker process, on an event loop running in a thread of its own."""

    def __init__(self, settings: Settings, *, codec_threads: int) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="imgcrunch-loop", daemon=True
        )
        self._thread.start()
        self._stack = AsyncExitStack()
        self.runtime: Runtime = self.run(self._open(codec_threads))

    async def _open(self, codec_threads: int) -> Runtime:
        sessions = await self._stack.enter_async_context(open_sessions(self.settings))
        return await self._stack.enter_async_context(
            # Threads: a prefork pool process may not have children (see codec_pool).
            open_runtime(
                self.settings,
                sessions,
                codec_workers=codec_threads,
                codec_processes=False,
                on_finished=self._finished,
            )
        )

    async def _finished(self, _request_id: uuid.UUID) -> None:
        # The pipeline's finished hook: this worker sends the webhook events at once.
        await _deliver(self)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def close(self) -> None:
        try:
            self.run(self._stack.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


_runtime_lock = threading.Lock()
_worker_runtime: WorkerRuntime | None = None


def worker_runtime() -> WorkerRuntime:
    """This process's runtime, built on first use: after the fork, never inherited across it."""
    global _worker_runtime
    with _runtime_lock:
        if _worker_runtime is None or _worker_runtime.pid != os.getpid():
            settings = _current_settings()
            threads = _codec_threads or settings.cpu_workers
            # Its codec threads yield the CPU to the API and the database where they share
            # a machine, as embedded mode's codec processes yield it to the server.
            os.nice(WORKER_NICENESS)
            _worker_runtime = WorkerRuntime(settings, codec_threads=threads)
            atexit.register(_close_runtime)
            log.info("process %d runs the pipeline with %d codec threads", os.getpid(), threads)
        return _worker_runtime


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _close_runtime(**_: Any) -> None:
    global _worker_runtime
    with _runtime_lock:
        runtime, _worker_runtime = _worker_runtime, None
    if runtime is not None and runtime.pid == os.getpid():
        with contextlib.suppress(Exception):
            runtime.close()


# --- the tasks ------------------------------------------------------------------------------


def _retry_unless_exhausted(task: Task, exc: BaseException) -> None:
    """Raise Celery's Retry, with exponential backoff and jitter, while retries remain."""
    max_retries = _current_settings().task_max_retries
    if task.request.retries >= max_retries:
        log.error("%s: %s; giving up after %d retries", task.name, exc, max_retries)
        return
    countdown = get_exponential_backoff_interval(
        factor=1, retries=task.request.retries, maximum=RETRY_BACKOFF_MAX, full_jitter=True
    )
    log.warning("%s: %s; retrying in %d s", task.name, exc, countdown)
    task.retry(exc=exc, countdown=countdown, max_retries=max_retries)


@app.task(name=INGEST, bind=True)
def ingest(task: Task, request_id: str) -> int:
    """Store a request's rows from its kept CSV, sending a message per batch of images each
    chunk stored makes; returns how many were sent."""
    worker = worker_runtime()
    try:
        return worker.run(_ingest(worker, uuid.UUID(request_id)))
    except TRANSIENT as exc:
        _retry_unless_exhausted(task, exc)
        raise


async def _ingest(worker: WorkerRuntime, request_id: uuid.UUID) -> int:
    pipeline = worker.runtime.pipeline
    batch_size = worker.settings.batch_size
    sent = 0

    async def send_batches(claimable: int) -> None:
        nonlocal sent
        batches = -(-claimable // batch_size)
        for _ in range(batches):
            await asyncio.to_thread(send_next, app)
        sent += batches

    await pipeline.resume(request_id, on_stored=send_batches)
    if not sent:  # stored before (a redelivered message): its work may never have been sent
        await send_batches(await pipeline.unclaimed_images(request_id))
    return sent


@app.task(name=PROCESS_NEXT, bind=True)
def process_next(task: Task) -> bool:
    """Run the one work loop once: process the next batch of the request that has waited
    longest. False when a message finds nothing left to claim (it then does nothing)."""
    worker = worker_runtime()
    try:
        return worker.run(worker.runtime.pipeline.work_next(batch_size=worker.settings.batch_size))
    except (InfrastructureFault, *TRANSIENT) as exc:
        # Nothing of it was recorded against an image. Were the retries to run out, the sweep
        # sends work again for every image still unclaimed.
        _retry_unless_exhausted(task, exc)
        raise


@app.task(name=DELIVER)
def deliver_webhooks() -> int:
    """Send the webhook events that are due; returns how many were attempted."""
    worker = worker_runtime()
    return worker.run(_deliver(worker))


async def _deliver(worker: WorkerRuntime) -> int:
    """Deliver what is due; a retry due before the next sweep gets a task of its own."""
    attempted = await worker.runtime.deliverer.deliver_due()
    until_due = await worker.runtime.deliverer.seconds_until_due()
    if until_due is not None and until_due < worker.settings.sweep_interval:
        send_deliver(app, countdown=until_due)
    return attempted


@app.task(name=SWEEP)
def sweep() -> None:
    """Send again the work dead workers left behind; finalise and deliver what only waits."""
    worker = worker_runtime()
    found = worker.run(worker.runtime.pipeline.sweep(batch_size=worker.settings.batch_size))
    # The database is the truth: as many messages on their way as there are batches to claim,
    # whatever became of the earlier ones (a broker restarted empty, a purge, retries run out).
    queued = queued_batch_messages(app)
    if found.claimable and not queued:
        log.warning(
            "sweep: %d batches to claim and no message queued: sending them", found.claimable
        )
    for _ in range(max(0, found.claimable - queued)):
        send_next(app)
    for request_id in found.uningested:
        send_ingest(app, request_id)
    worker.run(_deliver(worker))
    # Workers share the folder, so only a temp file far older than any write is abandoned.
    worker.runtime.storage.remove_partial_writes(older_than=ABANDONED_WRITE_AGE)


# --- sending work ---------------------------------------------------------------------------


def send_next(sender: Celery) -> None:
    sender.send_task(PROCESS_NEXT, queue=BATCHES_QUEUE)


def send_ingest(sender: Celery, request_id: uuid.UUID) -> None:
    sender.send_task(INGEST, args=[str(request_id)], queue=CONTROL_QUEUE)


def send_sweep(sender: Celery, *, expires: float) -> None:
    # A sweep not run within its interval is replaced by the next one, not added to it.
    sender.send_task(SWEEP, queue=CONTROL_QUEUE, expires=expires)


def send_deliver(sender: Celery, *, countdown: float = 0) -> None:
    sender.send_task(DELIVER, queue=CONTROL_QUEUE, countdown=countdown)


def queued_batch_messages(sender: Celery) -> int:
    """Batch messages waiting in the broker (not those a worker holds already).

    Read as the Redis transport counts a queue (every priority's list): its passive
    `queue_declare` misses a queue under `global_keyprefix`, and says it does not exist.
    """
    with sender.connection_for_write() as connection:
        return int(connection.default_channel._size(BATCHES_QUEUE))


def ping_broker(sender: Celery) -> None:
    with sender.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
