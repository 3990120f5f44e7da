"""GET /requests (newest first, a page at a time); cancel, retry and delete a request."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from imgcrunch import repository
from imgcrunch.api.deps import OwnedRequestDep, OwnerDep, ServicesDep, SessionDep, UrlsDep
from imgcrunch.api.errors import ApiError
from imgcrunch.api.presenting import error_responses, image_info, summary
from imgcrunch.api.schemas import ImageList, RequestList, RequestSummary
from imgcrunch.imaging import variants as variant_specs
from imgcrunch.models import ACTIVE_STATUSES, Request, RequestStatus, utcnow

router = APIRouter(tags=["requests"])

_PAGE = 20
_MAX_PAGE = 100


@router.get("/requests", response_model=RequestList, responses=error_responses(401))
async def list_requests(
    owner: OwnerDep,
    session: SessionDep,
    urls: UrlsDep,
    status: Annotated[RequestStatus | None, Query(description="only those in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=_MAX_PAGE)] = _PAGE,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> RequestList:
    """Your requests, newest first; with API keys on, only the key owner's."""
    # One more than asked: whether there is a next page, without counting them all.
    found = await repository.list_requests(
        session, owner=owner, status=status, limit=limit + 1, offset=offset
    )
    with_variants = [request.id for request in found[:limit] if request.variants]
    totals = await repository.variant_totals(session, with_variants)
    page = [summary(request, urls, totals.get(request.id, [])) for request in found[:limit]]
    next_url = None
    if len(found) > limit:
        query = f"limit={limit}&offset={offset + limit}" + (f"&status={status}" if status else "")
        next_url = urls.page(f"/requests?{query}")
    return RequestList(requests=page, next_url=next_url)


_ERRORS = error_responses(401, 404, 409)


@router.get(
    "/requests/{request_id}/images",
    response_model=ImageList,
    responses=error_responses(401, 404),
)
async def list_images(
    request: OwnedRequestDep,
    session: SessionDep,
    urls: UrlsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[
        str | None,
        Query(
            pattern=r"^\d{1,9}\.\d{1,9}$",
            description="where the page starts: after this place (as `next_url` gives it)",
        ),
    ] = None,
) -> ImageList:
    """Each image of the request, in the input's order: where it came from, what became of it
    (output URL, sizes) or why it failed. Paged by place, so that every page of a big request
    is as quick as the first: follow `next_url`."""
    start = None if after is None else _place(after)
    found = await repository.request_images(session, request.id, limit=limit + 1, after=start)
    names = [variant.name for variant in variant_specs.from_json(request.variants)]
    active = request.status in ACTIVE_STATUSES
    images = [image_info(image, urls, names, request_active=active) for _, image in found[:limit]]
    next_url = None
    if len(found) > limit:
        (row, position), _ = found[limit - 1]
        next_url = urls.page(f"/requests/{request.id}/images?limit={limit}&after={row}.{position}")
    return ImageList(images=images, next_url=next_url)


def _place(after: str) -> repository.ImagePlace:
    row, position = after.split(".")
    return int(row), int(position)


@router.post("/requests/{request_id}/cancel", response_model=RequestSummary, responses=_ERRORS)
async def cancel(
    request: OwnedRequestDep, session: SessionDep, services: ServicesDep, urls: UrlsDep
) -> RequestSummary:
    """Stop a queued or processing request: no image of it is started afterwards, and none
    still in flight is recorded. What was done stays (its files, its counts); it has no output
    CSV. The status becomes `cancelled`."""
    cancelled = await repository.cancel_request(session, request.id, now=utcnow())
    await session.commit()
    await session.refresh(request)  # as the conditional update left it, or found it
    if not cancelled:
        raise ApiError(409, "not_active", f"request {request.id} is {request.status} already")
    services.dispatcher.cancel(request.id)
    return await _summary(session, request, urls)


@router.post(
    "/requests/{request_id}/retry",
    status_code=202,
    response_model=RequestSummary,
    responses=_ERRORS,
)
async def retry(
    request: OwnedRequestDep, session: SessionDep, services: ServicesDep, urls: UrlsDep
) -> RequestSummary:
    """Try a `completed_with_errors` request's failed images again (say, once their origin is
    back). The request is `processing` until they are done; then a new output CSV, and a new
    webhook event if it has a webhook."""
    retried = await repository.retry_failed_images(session, request.id, now=utcnow())
    await session.commit()
    await session.refresh(request)
    if not retried:
        raise ApiError(
            409,
            "nothing_to_retry",
            f"request {request.id} is {request.status}: only a request completed with errors "
            "has failed images to retry",
        )
    services.dispatcher.submit(request.id)
    return await _summary(session, request, urls)


async def _summary(session: SessionDep, request: Request, urls: UrlsDep) -> RequestSummary:
    totals = await repository.variant_totals(session, [request.id])
    return summary(request, urls, totals[request.id])


@router.delete(
    "/requests/{request_id}",
    status_code=204,
    response_class=Response,
    responses=_ERRORS,
)
async def delete_request(
    request: OwnedRequestDep, session: SessionDep, services: ServicesDep
) -> Response:
    """Remove a finished request: its rows, its CSVs, and its images that no other request of
    the same owner shares (an unchanged image keeps one URL across re-runs): those URLs stop
    working. A request still queued or processing cannot be deleted."""
    if request.status in ACTIVE_STATUSES:
        raise ApiError(
            409,
            "still_active",
            f"request {request.id} is {request.status}; it can be deleted once it has finished",
        )
    # Rows first: were the files removed first and the rows not, the request would point at
    # files that are gone. Files left by a failed removal are only wasted space.
    unshared = await repository.delete_request(session, request.id)
    await session.commit()
    if unshared is None:
        raise ApiError(404, "not_found", f"no request {request.id}")
    await asyncio.to_thread(services.storage.remove, unshared)
    await asyncio.to_thread(services.storage.remove_request, request.id)
    return Response(status_code=204)
