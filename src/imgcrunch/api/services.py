"""What the routes need, built once per application and torn down with it."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from imgcrunch import codec
from imgcrunch.config import Settings
from imgcrunch.db import SessionFactory, create_engine, session_factory
from imgcrunch.dispatch import Dispatcher, InlineDispatcher
from imgcrunch.fetcher import Fetcher, FetchLimits
from imgcrunch.pipeline import Pipeline, PipelineOptions
from imgcrunch.storage import LocalStorage
from imgcrunch.webhooks import Deliverer


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    sessions: SessionFactory
    storage: LocalStorage
    dispatcher: Dispatcher


@asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    storage = LocalStorage(settings.storage_root)
    # Embedded mode is the only writer: a temp file found now belongs to a killed process.
    storage.remove_partial_writes()
    (settings.storage_root / "images").mkdir(parents=True, exist_ok=True)
    codec.configure(concurrency=1)
    codec_pool = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="imgcrunch-codec")
    fetcher = Fetcher(
        FetchLimits(
            max_bytes=settings.max_download_bytes,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            total_timeout=settings.fetch_timeout,
            max_redirects=settings.max_redirects,
            allow_private_networks=settings.allow_private_networks,
        )
    )
    deliverer = Deliverer(
        sessions,
        timeout=settings.webhook_timeout,
        allow_private_networks=settings.allow_private_networks,
    )
    pipeline = Pipeline(
        sessions=sessions,
        fetcher=fetcher,
        storage=storage,
        codec_pool=codec_pool,
        options=PipelineOptions(
            public_base_url=settings.public_base_url,
            max_pixels=settings.max_pixels,
            background=settings.background,
            max_in_flight=settings.fetch_concurrency,
            claim_timeout=settings.claim_timeout,
        ),
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
    )
    dispatcher = InlineDispatcher(
        pipeline,
        deliverer,
        sessions=sessions,
        # Enough batches in flight that one batch's tail never leaves a core idle.
        lanes=max(2, -(-settings.fetch_concurrency // settings.batch_size) + 1),
        batch_size=settings.batch_size,
        shutdown_grace=settings.shutdown_grace,
    )
    await dispatcher.start()
    try:
        yield Services(settings, sessions, storage, dispatcher)
    finally:
        await dispatcher.stop()
        await fetcher.aclose()
        await deliverer.aclose()
        codec_pool.shutdown(wait=True, cancel_futures=True)
        await engine.dispose()
