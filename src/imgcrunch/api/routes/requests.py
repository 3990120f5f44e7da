"""GET /status/{id} and GET /download/{id}."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from imgcrunch import repository
from imgcrunch.api.deps import OwnedRequestDep, ServicesDep, SessionDep, SettingsDep, UrlsDep
from imgcrunch.api.errors import ApiError
from imgcrunch.api.presenting import (
    download_url,
    error_responses,
    figures,
    image_error,
    kept_original,
    progress,
    variant_summaries,
    webhook_state,
)
from imgcrunch.api.schemas import Status
from imgcrunch.faults import storage_fault
from imgcrunch.models import ACTIVE_STATUSES, utcnow

router = APIRouter(tags=["requests"])


@router.get("/status/{request_id}", response_model=Status, responses=error_responses(401, 404))
async def status(
    request: OwnedRequestDep, session: SessionDep, settings: SettingsDep, urls: UrlsDep
) -> Status:
    limit = settings.errors_in_status
    # Clients poll this while the CPUs are busy compressing: ask only what can be there.
    failed = (
        await repository.failed_images(session, request.id, limit=limit)
        if request.failed_images and limit
        else []
    )
    kept = (
        await repository.kept_images(session, request.id, limit=limit)
        if request.kept_images and limit
        else []
    )
    webhook = await webhook_state(session, request) if request.webhook_url else None
    totals = await repository.variant_totals(session, [request.id]) if request.variants else {}
    return Status(
        request_id=request.id,
        status=request.status,
        error=request.error,
        waiting=request.waiting if request.status in ACTIVE_STATUSES else None,
        quality=request.quality,
        effort=request.effort,
        profile=request.profile,
        variants=variant_summaries(request, totals.get(request.id, [])),
        progress=progress(request),
        **figures(request, now=utcnow()),
        output_csv_url=download_url(request, urls),
        errors=[image_error(image) for image in failed],
        errors_truncated=request.failed_images > len(failed),
        kept_originals=[kept_original(image) for image in kept],
        kept_originals_truncated=request.kept_images > len(kept),
        webhook=webhook,
        created_at=request.created_at,
        updated_at=request.updated_at,
        started_at=request.started_at,
        completed_at=request.completed_at,
    )


@router.get(
    "/download/{request_id}",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "the output CSV"},
        **error_responses(401, 404, 409),
    },
)
async def download(request: OwnedRequestDep, services: ServicesDep) -> Response:
    if request.status in ACTIVE_STATUSES:
        raise ApiError(
            409,
            "not_ready",
            f"request {request.id} is {request.status} ({request.progress()['percent']}% done); "
            "the output CSV is ready when it completes",
        )
    if request.output_key is None:
        raise ApiError(
            409, "no_output", f"request {request.id} is {request.status}: it has no output"
        )
    try:  # opened first, so that a storage away answers 503 before the body starts
        chunks = await asyncio.to_thread(services.storage.read_chunks, request.output_key)
    except OSError as exc:
        raise storage_fault(exc) from exc
    # Streamed, a piece at a time (in a thread, as storage reads block): a million images'
    # output CSV is never in memory whole.
    return StreamingResponse(
        chunks,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="imgcrunch-{request.id}.csv"'},
    )
