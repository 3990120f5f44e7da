"""GET /status/{id} and GET /download/{id}."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from imgcrunch import repository
from imgcrunch.api.deps import OwnerDep, RequestIdDep, ServicesDep, SessionDep, SettingsDep
from imgcrunch.api.errors import ApiError
from imgcrunch.api.schemas import (
    ErrorBody,
    ImageError,
    KeptOriginal,
    Progress,
    Status,
    WebhookAttemptInfo,
    WebhookState,
)
from imgcrunch.config import Settings
from imgcrunch.models import ACTIVE_STATUSES, DeliveryStatus, Request, utcnow
from imgcrunch.public_urls import PublicUrls

router = APIRouter(tags=["requests"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404)}


async def load_request(session: SessionDep, request_id: RequestIdDep, owner: str | None) -> Request:
    request = await repository.get_request(session, request_id)
    # Another key's request is not found, exactly like an unknown one: ids leak nothing.
    if request is None or (owner is not None and request.owner != owner):
        raise ApiError(404, "not_found", f"no request {request_id}")
    return request


@router.get("/status/{request_id}", response_model=Status, responses=_NOT_FOUND)
async def status(
    owner: OwnerDep, request_id: RequestIdDep, session: SessionDep, settings: SettingsDep
) -> Status:
    request = await load_request(session, request_id, owner)
    limit = settings.errors_in_status
    # Clients poll this while the CPUs are busy compressing: ask only what can be there.
    failed = (
        await repository.failed_images(session, request_id, limit=limit)
        if request.failed_images and limit
        else []
    )
    kept = (
        await repository.kept_images(session, request_id, limit=limit)
        if request.kept_images and limit
        else []
    )
    webhook = await webhook_state(session, request) if request.webhook_url else None
    return Status(
        request_id=request.id,
        status=request.status,
        error=request.error,
        quality=request.quality,
        effort=request.effort,
        progress=Progress.model_validate(request.progress()),
        **figures(request, now=utcnow()),
        output_csv_url=download_url(request, settings),
        errors=[
            ImageError(
                row=image.row_number,
                product_name=image.product_name,
                url=image.url,
                code=image.code,
                message=image.message,
            )
            for image in failed
        ],
        errors_truncated=request.failed_images > len(failed),
        kept_originals=[
            KeptOriginal(row=image.row_number, product_name=image.product_name, url=image.url)
            for image in kept
        ],
        kept_originals_truncated=request.kept_images > len(kept),
        webhook=webhook,
        created_at=request.created_at,
        updated_at=request.updated_at,
        started_at=request.started_at,
        completed_at=request.completed_at,
    )


def download_url(request: Request, settings: Settings) -> str | None:
    return PublicUrls(settings.public_base_url).download(request.id) if request.output_key else None


def figures(request: Request, *, now: datetime) -> dict[str, Any]:
    """The fields of schemas.Figures for a request, as of `now`."""
    finished = request.done_images + request.failed_images
    savings = None
    if request.bytes_in:
        savings = round(100 * (1 - request.bytes_out / request.bytes_in), 1)
    rate = eta = None
    if request.started_at and finished:
        end = request.completed_at or now
        elapsed = (end - request.started_at).total_seconds()
        if elapsed > 0:
            rate = round(finished / elapsed, 2)
            if request.status in ACTIVE_STATUSES:
                eta = round((request.total_images - finished) / rate, 1)
    return {
        "bytes_in": request.bytes_in,
        "bytes_out": request.bytes_out,
        "savings_percent": savings,
        "images_per_second": rate,
        "eta_seconds": eta,
    }


_HISTORY = 20  # attempts shown; a schedule has 8 at most


async def webhook_state(session: SessionDep, request: Request) -> WebhookState:
    assert request.webhook_url is not None
    delivery = await repository.latest_delivery(session, request.id)
    if delivery is None:
        return WebhookState(
            url=request.webhook_url,
            event_id=None,
            state="waiting",
            attempts=0,
            response_status=None,
            last_error=None,
            next_attempt_at=None,
            delivered_at=None,
        )
    attempts = (
        await repository.delivery_attempts(session, delivery.id, limit=_HISTORY)
        if delivery.attempts
        else []
    )
    pending = delivery.status == DeliveryStatus.PENDING
    return WebhookState(
        url=delivery.url,
        event_id=delivery.event_id,
        state="failing" if pending and delivery.attempts else delivery.status,
        attempts=delivery.attempts,
        response_status=delivery.response_status,
        last_error=delivery.last_error,
        next_attempt_at=delivery.next_attempt_at if pending else None,
        delivered_at=delivery.delivered_at,
        history=[
            WebhookAttemptInfo(
                attempt=attempt.attempt,
                at=attempt.attempted_at,
                response_status=attempt.response_status,
                error=attempt.error,
            )
            for attempt in attempts
        ],
    )


@router.get(
    "/download/{request_id}",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "the output CSV"},
        401: {"model": ErrorBody},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
    },
)
async def download(
    owner: OwnerDep, request_id: RequestIdDep, session: SessionDep, services: ServicesDep
) -> Response:
    request = await load_request(session, request_id, owner)
    if request.status in ACTIVE_STATUSES:
        raise ApiError(
            409,
            "not_ready",
            f"request {request_id} is {request.status} ({request.progress()['percent']}% done); "
            "the output CSV is ready when it completes",
        )
    if request.output_key is None:
        raise ApiError(
            409, "no_output", f"request {request_id} is {request.status}: it has no output"
        )
    content = await asyncio.to_thread(services.storage.get, request.output_key)
    return Response(
        content,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="imgcrunch-{request_id}.csv"'},
    )
