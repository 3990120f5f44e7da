"""One error shape for every 4xx and 5xx: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgcrunch.faults import InfrastructureFault, infrastructure_fault

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Sequence[dict[str, Any]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    details: Sequence[dict[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": list(details)}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
}


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such path: {request.url.path}"
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {
            "row": None,
            "column": None,
            "field": ".".join(str(part) for part in error["loc"][1:]) or str(error["loc"][0]),
            "reason": error["msg"],
        }
        for error in exc.errors()
    ]
    fields = ", ".join(sorted({str(detail["field"]) for detail in details}))
    return error_response(422, "invalid_request", f"invalid or missing: {fields}", details)


_UNAVAILABLE_RETRY_AFTER = "5"  # seconds: a database restart or a freed disk takes about that


async def _fault(request: Request, exc: Exception) -> JSONResponse:
    """A fault of ours (database away, storage full): 503, saying which, never a 500."""
    fault = infrastructure_fault(exc)
    if fault is None:
        return await _unexpected_error(request, exc)
    log.warning("%s %s: %s", request.method, request.url.path, fault.waiting)
    return error_response(
        503,
        fault.reason.replace(" ", "_"),
        f"{fault.waiting}; nothing was changed, try again shortly",
        headers={"Retry-After": _UNAVAILABLE_RETRY_AFTER},
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "the server failed; the error is logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for fault in (InfrastructureFault, DBAPIError, OSError):
        app.add_exception_handler(fault, _fault)
    app.add_exception_handler(Exception, _unexpected_error)
