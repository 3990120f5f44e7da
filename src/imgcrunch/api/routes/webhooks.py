"""POST /requests/{id}/webhook/redeliver: send a request's webhook event again."""

from __future__ import annotations

from fastapi import APIRouter

from imgcrunch import repository
from imgcrunch.api.deps import OwnedRequestDep, ServicesDep, SessionDep
from imgcrunch.api.errors import ApiError
from imgcrunch.api.presenting import error_responses, webhook_state
from imgcrunch.api.schemas import WebhookState
from imgcrunch.models import utcnow

router = APIRouter(tags=["webhooks"])


@router.post(
    "/requests/{request_id}/webhook/redeliver",
    status_code=202,
    response_model=WebhookState,
    responses=error_responses(401, 404, 409),
)
async def redeliver(
    request: OwnedRequestDep, session: SessionDep, services: ServicesDep
) -> WebhookState:
    """Send the request's event again, now, with the same webhook-id: whatever became of it
    (delivered, failing, given up), it is pending again and the retry schedule starts over."""
    if not request.webhook_url:
        raise ApiError(409, "no_webhook", f"request {request.id} was made without a webhook_url")
    made_due = await repository.redeliver(session, request.id, now=utcnow())
    await session.commit()
    if not made_due:
        raise ApiError(
            409,
            "not_ready",
            f"request {request.id} is {request.status}: its event is sent when it finishes",
        )
    services.dispatcher.deliver_webhooks()
    return await webhook_state(session, request)
