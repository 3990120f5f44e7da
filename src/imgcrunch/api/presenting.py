"""The pieces that several routes' responses share, each built in one place: a request's
figures and summary, its images as the API shows them, its webhook state, the error answers
a route documents. URLs come from `public_urls`; the routes only assemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession

from imgcrunch import repository
from imgcrunch.api.schemas import (
    ErrorBody,
    Finding,
    ImageError,
    ImageInfo,
    ImageVariant,
    KeptOriginal,
    Progress,
    RequestSummary,
    ReuseKind,
    VariantSummary,
    WebhookAttemptInfo,
    WebhookState,
)
from imgcrunch.csvio import OUTPUT_HEADER
from imgcrunch.imaging import variants as variant_specs
from imgcrunch.models import ACTIVE_STATUSES, DeliveryStatus, ImageStatus, Request, utcnow
from imgcrunch.public_urls import PublicUrls

_HISTORY = 20  # webhook attempts shown; a schedule has 8 at most


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route that may answer these error statuses."""
    return {code: {"model": ErrorBody} for code in codes}


def download_url(request: Request, urls: PublicUrls) -> str | None:
    return urls.download(request.id) if request.output_key else None


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
            pace = finished / elapsed  # unrounded: a slow pace rounds to 0.0
            rate = round(pace, 2)
            if request.status in ACTIVE_STATUSES:
                eta = round((request.total_images - finished) / pace, 1)
    return {
        "bytes_in": request.bytes_in,
        "bytes_out": request.bytes_out,
        "savings_percent": savings,
        "images_per_second": rate,
        "eta_seconds": eta,
    }


def progress(request: Request) -> Progress:
    return Progress.model_validate(request.progress())


def variant_summaries(
    request: Request, totals: Sequence[repository.VariantTotals]
) -> list[VariantSummary]:
    """The request's variants with their figures; a request without variants makes one, the
    default, whose figures are the request's own."""
    made = variant_specs.from_json(request.variants)
    by_position = {total.position: total for total in totals}
    summaries = []
    for position, variant in enumerate(made):
        total = by_position.get(position)
        if total is None:  # the default variant: the request's own figures
            bytes_out, kept = request.bytes_out, request.kept_images
        else:
            bytes_out, kept = total.bytes_out, total.kept_images
        summaries.append(
            VariantSummary(
                name=variant.name,
                spec=variant.spec(),
                width=variant.width,
                height=variant.height,
                fit=variant.fit,
                format=variant.format,
                quality=variant.quality or request.quality,
                effort=variant.effort or request.effort,
                column=OUTPUT_HEADER[3] if position == 0 else variant.column,
                max_bytes=variant.max_bytes,
                profile=request.profile if position == 0 else None,
                bytes_out=bytes_out,
                kept_original=kept,
            )
        )
    return summaries


def summary(
    request: Request, urls: PublicUrls, totals: Sequence[repository.VariantTotals]
) -> RequestSummary:
    return RequestSummary(
        request_id=request.id,
        status=request.status,
        profile=request.profile,
        variants=variant_summaries(request, totals),
        progress=progress(request),
        **figures(request, now=utcnow()),
        status_url=urls.status(request.id),
        output_csv_url=download_url(request, urls),
        created_at=request.created_at,
        completed_at=request.completed_at,
    )


def image_error(image: repository.ImageRow) -> ImageError:
    return ImageError(
        row=image.row_number,
        product_name=image.product_name,
        url=image.source_url,
        code=image.error_code or "unknown",
        message=image.error_message or "",
    )


def kept_original(image: repository.ImageRow) -> KeptOriginal:
    return KeptOriginal(row=image.row_number, product_name=image.product_name, url=image.source_url)


def image_info(
    image: repository.ImageRow,
    urls: PublicUrls,
    names: Sequence[str] = ("output",),
    *,
    request_active: bool = True,
) -> ImageInfo:
    """`names`: the request's variants' names, in order; `request_active`: its request is
    queued or processing."""
    return ImageInfo(
        row=image.row_number,
        product_name=image.product_name,
        source_url=image.source_url,
        status=_image_status(image.status, request_active=request_active),
        output_url=urls.stored(image.output_key) if image.output_key else None,
        bytes_in=image.bytes_in,
        bytes_out=image.bytes_out,
        width=image.width,
        height=image.height,
        kept_original=image.kept_original,
        error_code=image.error_code,
        error_message=image.error_message,
        variants=_image_variants(image, urls, names),
        reuse=cast("ReuseKind | None", image.reuse),
        findings=[Finding.model_validate(finding) for finding in image.findings or ()],
    )


def _image_status(status: str, *, request_active: bool) -> str:
    # A cancel leaves its request's pending images as they are (one row changes, not a million):
    # they will never be processed.
    if status == ImageStatus.PENDING and not request_active:
        return ImageStatus.CANCELLED
    return status


def _image_variants(
    image: repository.ImageRow, urls: PublicUrls, names: Sequence[str]
) -> list[ImageVariant]:
    if image.output_key is None:
        return []
    first = {
        "key": image.output_key,
        "bytes": image.bytes_out,
        "width": image.width,
        "height": image.height,
        "kept": image.kept_original,
        "quality": image.quality,
    }
    return [
        ImageVariant(
            name=name,
            url=urls.stored(output["key"]),
            width=output["width"],
            height=output["height"],
            bytes=output["bytes"],
            kept_original=output["kept"],
            quality=output.get("quality"),
        )
        for name, output in zip(names, [first, *(image.variants or ())], strict=False)
    ]


async def webhook_state(session: AsyncSession, request: Request) -> WebhookState:
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
