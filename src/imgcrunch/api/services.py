"""What the routes need, built once per application and torn down with it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from imgcrunch.address_guard import AddressGuard
from imgcrunch.api.auth import ApiKeys
from imgcrunch.config import Settings
from imgcrunch.db import SessionFactory
from imgcrunch.dispatch import CeleryDispatcher, Dispatcher, InlineDispatcher, WebhookNudge
from imgcrunch.imaging import Variant
from imgcrunch.public_urls import PublicUrls
from imgcrunch.runtime import (
    address_guard,
    default_variants,
    open_runtime,
    open_sessions,
    storage_for,
)
from imgcrunch.storage import Storage

BrokerCheck = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    sessions: SessionFactory
    storage: Storage
    dispatcher: Dispatcher
    check_broker: BrokerCheck | None  # None in embedded mode, which has no broker
    guard: AddressGuard  # webhook URLs are checked against it at upload
    api_keys: ApiKeys
    urls: PublicUrls
    variants: tuple[Variant, ...]  # IMGCRUNCH_VARIANTS: what a request that names none makes


@asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    variants = default_variants(settings)  # a bad one stops the start, naming its fault
    async with AsyncExitStack() as stack:
        sessions = await stack.enter_async_context(open_sessions(settings))
        storage = storage_for(settings)
        check_broker: BrokerCheck | None = None
        if settings.queue == "celery":
            celery_dispatcher = CeleryDispatcher(settings)
            dispatcher: Dispatcher = celery_dispatcher
            check_broker = celery_dispatcher.check_broker
        else:
            dispatcher = await stack.enter_async_context(
                _inline_dispatcher(settings, sessions, storage)
            )
        await dispatcher.start()
        stack.push_async_callback(dispatcher.stop)
        yield Services(
            settings,
            sessions,
            storage,
            dispatcher,
            check_broker,
            address_guard(settings),
            ApiKeys.parse(settings.api_keys),
            PublicUrls(settings.public_base_url, images=settings.public_images_url),
            variants,
        )


@asynccontextmanager
async def _inline_dispatcher(
    settings: Settings, sessions: SessionFactory, storage: Storage
) -> AsyncIterator[InlineDispatcher]:
    nudge = WebhookNudge()
    async with open_runtime(
        settings,
        sessions,
        codec_workers=settings.cpu_workers,
        codec_processes=True,
        on_finished=nudge,
        storage=storage,  # the API's own: a bucket is opened and checked once
    ) as runtime:
        # Embedded mode is the only writer: a temp file found now belongs to a killed process.
        runtime.storage.remove_partial_writes()
        yield InlineDispatcher.for_settings(
            runtime.pipeline, runtime.deliverer, sessions, settings, nudge
        )
