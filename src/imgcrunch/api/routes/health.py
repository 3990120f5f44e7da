"""GET /healthz (the process answers) and GET /readyz (its database, and broker, answer too)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from imgcrunch import repository
from imgcrunch.api.deps import ServicesDep
from imgcrunch.api.schemas import Health

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
    ready = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
