"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from imgcrunch import __version__
from imgcrunch.api import errors
from imgcrunch.api.routes import health, images, manage, requests, upload, web, webhooks
from imgcrunch.api.services import running_services
from imgcrunch.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(settings) as services:
            app.state.services = services
            yield

    app = FastAPI(
        title="imgcrunch",
        version=__version__,
        summary="Batch image compression for product catalogs.",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    errors.install(app)
    for module in (upload, requests, manage, webhooks, images, health, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC), name="static")
    app.add_middleware(_IgnoreTrailingSlash)
    if not settings.api_keys:
        _without_authentication(app)
    return app


def _without_authentication(app: FastAPI) -> None:
    """A server without API keys asks for none: its OpenAPI document says so, rather than
    have clients (and schemathesis) believe each route needs a bearer token it ignores."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema.get("components", {}).pop("securitySchemes", None)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation.pop("security", None)
        return app.openapi_schema or schema

    app.openapi = openapi  # type: ignore[method-assign]


class _IgnoreTrailingSlash:
    """`/upload/` is `/upload`: answered directly, never with a redirect a POST would not follow."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope["path"]) > 1 and scope["path"].endswith("/"):
            scope = dict(scope, path=scope["path"].rstrip("/") or "/")
        await self.app(scope, receive, send)
