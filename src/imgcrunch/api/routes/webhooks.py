"""POST /requests/{id}/webhook/redeliver: send a request's webhook event again."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from imgcrunch import repository
from imgcrunch.api.deps import OwnerDep, RequestIdDep, ServicesDep, SessionDep
from imgcrunch.api.errors import ApiError
from imgcrunch.api.routes.requests import load_request, webhook_state
from imgcrunch.api.schemas import ErrorBody, WebhookState
from imgcrunch.models import utcnow

router = APIRouter(tags=["webhooks"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409)}


@router.post(
    "/requests/{request_id}/webhook/redeliver",
    status_code=202,
    response_model=WebhookState,
    responses=_ERRORS,
)
async def redeliver(
    owner: OwnerDep, request_id: RequestIdDep, session: SessionDep, services: ServicesDep
) -> WebhookState:
    """Send the request's event again, now, with the same webhook-id: whatever became of it
    (delivered, failing, given up), it is pending again and the retry schedule starts over."""
    request = await load_request(session, request_id, owner)
    if not request.webhook_url:
        raise ApiError(409, "no_webhook", f"request {request_id} was made without a webhook_url")
    made_due = await repository.redeliver(session, request_id, now=utcnow())
    await session.commit()
    if not made_due:
        raise ApiError(
            409,
            "not_ready",
            f"request {request_id} is {request.status}: its event is sent when it finishes",
        )
    services.dispatcher.deliver_webhooks()
    return await webhook_state(session, request)
