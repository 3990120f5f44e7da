"""Where compression runs: worker processes, one per core, or threads; no I/O of its own.

Processes wherever they can be had (the embedded server, `imgcrunch process`): pyvips does some
0.5 ms of Python work per image around libvips' own, and in the server's process it would take
turns at one GIL with the event loop's downloads and database calls, leaving cores idle.
Processes gave 40% more small images per second and 8% more photos (bench/README.md). Threads
in a Celery prefork worker, which is itself one of several processes, and whose pool processes
may not have children of their own.

A worker process can die: killed by the operating system, or libvips crashing on a hostile file.
That breaks a process pool for every call in it; the pool is replaced and each call tried again,
so an image fails only if it is there every time its worker dies.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from imgcrunch import codec
from imgcrunch.storage import Storage, image_key

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 3  # runs of one call that may end with its worker process dead
ORPHAN_CHECK_SECONDS = 1.0
# Compression yields the CPU to the server it works for: with every core compressing, the API
# (status, uploads) and an ingest still get a core at once. Idle, it costs the codec nothing.
WORKER_NICENESS = 10


class CodecCrashed(Exception):
    """The worker process compressing an image died every time it was tried."""


@dataclass(frozen=True, slots=True)
class Output:
    """One variant of an image, stored (or to be): only its facts travel back from a worker
    process, and its bytes where the worker did not store them."""

    key: str
    size: int
    width: int
    height: int
    kept_original: bool
    quality: int | None = None  # what it was encoded at; None: the original, kept
    findings: tuple[codec.Finding, ...] = ()  # the profile's, on the first variant
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Encoded:
    """What came of one image: one output per variant, in the variants' order."""

    outputs: tuple[Output, ...]
    seconds: float  # compressing, hashing and writing them


def encode_and_store(
    storage: Storage | None, scope: uuid.UUID, data: bytes, options: codec.CodecOptions
) -> Encoded:
    """Runs in the pool: compress every variant, hash and (given a `storage`) store in one go.

    Writing from the same worker saves a hand-off and back per image, which costs more than
    the write itself (bench/README.md). The write does not wait for the disk (2 ms an image
    here, a core idle meanwhile): the pipeline syncs the batch's files at once. Without a
    storage (a bucket: a PUT waits on the network), the bytes come back to be written.
    """
    started = time.perf_counter()
    outputs = []
    for compressed in codec.make_variants(data, options):
        key = image_key(scope, compressed.data, compressed.extension)
        if storage is not None:
            storage.put(key, compressed.data, durable=False)
        outputs.append(
            Output(
                key=key,
                size=len(compressed.data),
                width=compressed.width,
                height=compressed.height,
                kept_original=compressed.kept_original,
                quality=compressed.quality,
                findings=compressed.findings,
                data=None if storage is not None else compressed.data,
            )
        )
    return Encoded(tuple(outputs), seconds=time.perf_counter() - started)


class CodecPool:
    def __init__(self, *, workers: int, processes: bool) -> None:
        self.workers = workers
        self.processes = processes
        self._executor = self._new_executor()

    def _new_executor(self) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(self.workers, thread_name_prefix="imgcrunch-codec")
        # Spawned, never forked: a fork of a process with threads (the event loop's helpers,
        # libvips') can inherit a lock that no thread is left to release.
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
        )

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        for attempt in range(1, ATTEMPTS + 1):
            executor = self._executor
            try:
                return await loop.run_in_executor(executor, function, *args)
            except BrokenProcessPool:
                log.warning("a codec worker process died (try %d of %d)", attempt, ATTEMPTS)
                self._replace(executor)
        raise CodecCrashed(f"its codec worker process died {ATTEMPTS} times")

    def _replace(self, broken: Executor) -> None:
        # Every call that was in the broken pool lands here; the first replaces it.
        if self._executor is broken:
            self._executor = self._new_executor()
            broken.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _start_worker() -> None:
    # Ctrl-C reaches the whole process group; the server decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_exit_when_orphaned, args=(os.getppid(),), name="orphan-watch", daemon=True
    ).start()
    codec.configure(concurrency=1)
    os.nice(WORKER_NICENESS)


def _exit_when_orphaned(parent: int) -> None:
    """A worker outlives a server killed with SIGKILL: its queue's pipe never closes (the
    worker holds both ends), so it would wait for work for ever. It goes when it is orphaned."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(0)
