"""GET /healthz (the process answers), GET /readyz (its database, its broker and its storage
answer too, and the storage has room) and GET /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from imgcrunch import metrics, repository
from imgcrunch.api.deps import OwnerDep, ServicesDep, SessionDep
from imgcrunch.api.schemas import ErrorBody, Health
from imgcrunch.faults import STORAGE_FULL, room_fault, storage_fault
from imgcrunch.models import RequestStatus

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(services: ServicesDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with services.sessions() as session:
            await repository.ping(session)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if services.check_broker is not None:
        try:
            await services.check_broker()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {type(exc).__name__}"
    checks["storage"] = await _storage_check(services)
    ready = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def _storage_check(services: ServicesDep) -> str:
    storage = services.storage
    try:
        await asyncio.to_thread(storage.check_writable)
        free = await asyncio.to_thread(storage.free_bytes)
    except OSError as exc:
        refused = storage_fault(exc)
        return f"{'full' if refused.reason == STORAGE_FULL else 'unwritable'}: {refused.detail}"
    if free is not None:
        metrics.STORAGE_FREE_BYTES.set(free)
    below = room_fault(free, services.settings.min_free_bytes)
    return "ok" if below is None else f"full: {below.detail}"


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        401: {"model": ErrorBody},
    },
)
async def prometheus(owner: OwnerDep, session: SessionDep, services: ServicesDep) -> Response:
    """This process's counters (in embedded mode: all the work), and the database's figures.
    With API keys on, any key may read them (they name no request)."""
    counts = await repository.requests_by_status(session)
    by_status = {status.value: counts.get(status, 0) for status in RequestStatus}
    queued = await repository.unfinished_image_count(session)
    free = await asyncio.to_thread(services.storage.free_bytes)
    if free is not None:
        metrics.STORAGE_FREE_BYTES.set(free)
    body = generate_latest() + metrics.database_figures(by_status, queued)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
