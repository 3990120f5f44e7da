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
    app.add_middleware(_RefuseOversizedUploads, limit=settings.max_csv_bytes)
    app.add_middleware(_IgnoreTrailingSlash)  # outermost: the path is plain for the others
    _openapi_as_served(app, keys=bool(settings.api_keys))
    return app


def _openapi_as_served(app: FastAPI, *, keys: bool) -> None:
    """The OpenAPI document as the server answers: a server without API keys asks for none
    (rather than have clients, and schemathesis, believe each route needs a bearer token it
    ignores); and a form is what a form can be (see `_as_forms_are`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            if not keys:
                schema.get("components", {}).pop("securitySchemes", None)
                for operations in schema["paths"].values():
                    for operation in operations.values():
                        operation.pop("security", None)
            _as_forms_are(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _as_forms_are(schema: dict[str, Any]) -> None:
    """A multipart form sends no nulls, and POST /upload refuses fields it does not know
    (`unknown_field`): its body's schema says both, so that what it allows is accepted."""
    for name, body in schema.get("components", {}).get("schemas", {}).items():
        if not name.startswith("Body_upload"):
            continue
        body["additionalProperties"] = False
        for field in body.get("properties", {}).values():
            choices = field.pop("anyOf", None)
            if choices is not None:
                field.update(next(c for c in choices if c.get("type") != "null"))


class _IgnoreTrailingSlash:
    """`/upload/` is `/upload`: answered directly, never with a redirect a POST would not follow."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope["path"]) > 1 and scope["path"].endswith("/"):
            scope = dict(scope, path=scope["path"].rstrip("/") or "/")
        await self.app(scope, receive, send)


class _RefuseOversizedUploads:
    """A `POST /upload` whose declared length is past the CSV limit answers 413 before its body
    is read: the form's parser would otherwise spool all of it to disk first, however big.
    (A body sent without a length is spooled, then refused by the route.)"""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/upload"
            and _declared_length(scope) > self.limit + upload.FORM_ALLOWANCE
        ):
            refusal = upload.file_too_large(self.limit)
            response = errors.error_response(
                refusal.status,
                refusal.code,
                refusal.message,
                refusal.details,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
