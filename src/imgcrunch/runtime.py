"""What a process needs to run the pipeline, built from the settings and closed in order.

The API server builds one in embedded mode; each Celery worker process builds its own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from imgcrunch import codec
from imgcrunch.address_guard import AddressGuard
from imgcrunch.codec_pool import CodecPool
from imgcrunch.config import Settings
from imgcrunch.db import SessionFactory, create_engine, session_factory
from imgcrunch.fetcher import Fetcher, FetchLimits
from imgcrunch.imaging import Variant, VariantsError
from imgcrunch.imaging import variants as variant_specs
from imgcrunch.pipeline import FinishedHook, Pipeline, PipelineOptions
from imgcrunch.storage import Storage, open_storage
from imgcrunch.webhooks import Deliverer, DeliveryPolicy, signing_secrets


@dataclass(frozen=True, slots=True)
class Runtime:
    sessions: SessionFactory
    storage: Storage
    pipeline: Pipeline
    deliverer: Deliverer


class StorageUnusable(RuntimeError):
    """The configured bucket cannot be written at start: a setting to fix, not a fault to wait
    out."""


def storage_for(settings: Settings) -> Storage:
    """The storage the settings name. A bucket is checked at once (it exists, these credentials
    may write); a local folder is not, so that a full disk does not stop the API from starting
    and saying so in /readyz."""
    bucket = settings.storage_url.startswith("s3://")
    try:
        return open_storage(
            settings.storage_url, s3_endpoint=settings.s3_endpoint_url, check=bucket
        )
    except OSError as exc:
        raise StorageUnusable(
            f"IMGCRUNCH_STORAGE_URL {settings.storage_url} cannot be written: {exc}"
        ) from exc


class VariantsUnusable(ValueError):
    """IMGCRUNCH_VARIANTS cannot be made: a setting to fix before the service starts."""


def default_variants(settings: Settings) -> tuple[Variant, ...]:
    """What a request makes when it names no variants (IMGCRUNCH_VARIANTS)."""
    try:
        return variant_specs.parse(settings.variants, max_pixels=settings.max_pixels)
    except VariantsError as exc:
        raise VariantsUnusable(f"IMGCRUNCH_VARIANTS={settings.variants!r}: {exc}") from None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def address_guard(settings: Settings) -> AddressGuard:
    """Where image downloads and webhooks may connect to."""
    return AddressGuard(
        allow_private_networks=settings.allow_private_networks,
        allowed_hosts=frozenset(settings.allowed_hosts),
    )


@asynccontextmanager
async def open_sessions(settings: Settings) -> AsyncIterator[SessionFactory]:
    engine = create_engine(settings.database_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    sessions: SessionFactory,
    *,
    codec_workers: int,
    codec_processes: bool,
    on_finished: FinishedHook,
    storage: Storage | None = None,
) -> AsyncIterator[Runtime]:
    """`codec_processes`: compress in worker processes (see codec_pool), else in threads.
    `storage`: one opened already (the API's), else it is opened from the settings.
    `on_finished`: how this mode has a finished request's webhook events sent."""
    storage = storage or storage_for(settings)
    codec.configure(concurrency=1)  # parallel across images, one worker each, not within one
    codec_pool = CodecPool(workers=codec_workers, processes=codec_processes)
    guard = address_guard(settings)
    fetcher = Fetcher(FetchLimits.from_settings(settings, guard=guard))
    deliverer = Deliverer(
        sessions,
        signing_secrets=signing_secrets(settings.webhook_secret, settings.data_dir),
        policy=DeliveryPolicy.from_settings(settings),
        guard=guard,
    )
    pipeline = Pipeline(
        sessions=sessions,
        fetcher=fetcher,
        storage=storage,
        codec_pool=codec_pool,
        options=PipelineOptions(
            public_base_url=settings.public_base_url,
            public_images_url=settings.public_images_url,
            max_pixels=settings.max_pixels,
            background=settings.background,
            max_in_flight=settings.fetch_concurrency,
            claim_timeout=settings.claim_timeout,
            min_free_bytes=settings.min_free_bytes,
        ),
        worker_id=worker_id(),
        on_finished=on_finished,
    )
    try:
        yield Runtime(sessions, storage, pipeline, deliverer)
    finally:
        await fetcher.aclose()
        await deliverer.aclose()
        codec_pool.shutdown()
