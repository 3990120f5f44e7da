"""The webhook outbox: events added with a request's final status, then leased, attempted and
redelivered."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from imgcrunch.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
)
from imgcrunch.repository._common import rowcount


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    event_id: str
    event_type: str
    url: str
    payload: str


def finished_with_event(
    session: AsyncSession,
    result: Any,
    request_id: uuid.UUID,
    event: NewEvent | None,
    now: datetime,
) -> bool:
    """After the conditional update that ends a request: whether it won (it moved exactly one
    row), and if so its webhook event queued in the same transaction."""
    if rowcount(result) != 1:
        return False
    if event is not None:
        add_event(session, request_id, event, now)
    return True


def add_event(session: AsyncSession, request_id: uuid.UUID, event: NewEvent, now: datetime) -> None:
    session.add(
        WebhookDelivery(
            request_id=request_id,
            event_id=event.event_id,
            event_type=event.event_type,
            url=event.url,
            payload=event.payload,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
        )
    )


# --- the webhook outbox ---------------------------------------------------------------------


async def lease_due_deliveries(
    session: AsyncSession, *, now: datetime, lease_until: datetime, limit: int = 50
) -> list[WebhookDelivery]:
    """Take the events due now, each by one caller only: several workers may ask at once.

    A leased event is not due again until `lease_until`, so one whose sender died is retried.
    """
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    # The due condition is checked again by the UPDATE itself: of two callers racing for a row,
    # the second finds it leased (next_attempt_at moved on) and leaves it.
    leased = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id.in_(due.scalar_subquery()),
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=lease_until)
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    ids = list(leased.scalars())
    if not ids:
        return []
    result = await session.execute(
        select(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids))
        .order_by(WebhookDelivery.id)
        .execution_options(populate_existing=True)
    )
    return list(result.scalars())


async def record_delivery_attempt(
    session: AsyncSession,
    delivery_id: int,
    *,
    status: DeliveryStatus,
    response_status: int | None,
    error: str | None,
    now: datetime,
    next_attempt_at: datetime | None = None,
) -> None:
    """The attempt, in the delivery's history, and where the delivery stands after it."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            status=status,
            attempts=WebhookDelivery.attempts + 1,
            response_status=response_status,
            last_error=error,
            delivered_at=now if status == DeliveryStatus.DELIVERED else None,
            next_attempt_at=next_attempt_at or now,
        )
        .returning(WebhookDelivery.attempts)
    )
    attempt = result.scalar_one_or_none()
    if attempt is None:
        return  # its request was deleted meanwhile
    session.add(
        WebhookAttempt(
            delivery_id=delivery_id,
            attempt=attempt,
            attempted_at=now,
            response_status=response_status,
            error=error,
        )
    )


async def seconds_until_delivery_due(session: AsyncSession, *, now: datetime) -> float | None:
    """How long until the next pending delivery is due (0 if one is); None if none waits."""
    result = await session.execute(
        select(func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.status == DeliveryStatus.PENDING
        )
    )
    due = result.scalar()
    if due is None:
        return None
    return max(0.0, (due - now).total_seconds())


async def delivery_attempts(
    session: AsyncSession, delivery_id: int, *, limit: int
) -> list[WebhookAttempt]:
    """The latest `limit` attempts, oldest first."""
    result = await session.execute(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(WebhookAttempt.attempt.desc())
        .limit(limit)
    )
    return list(reversed(result.scalars().all()))


async def redeliver(session: AsyncSession, request_id: uuid.UUID, *, now: datetime) -> bool:
    """Make the request's latest event due now, whatever became of it; False if it has none.

    Its event id stays the same, so a receiver that has it already can tell.
    """
    latest = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.request_id == request_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == latest)
        .values(
            status=DeliveryStatus.PENDING,
            next_attempt_at=now,
            delivered_at=None,
            schedule_start=WebhookDelivery.attempts,
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


async def latest_delivery(session: AsyncSession, request_id: uuid.UUID) -> WebhookDelivery | None:
    result = await session.execute(
        select(WebhookDelivery)
        .where(WebhookDelivery.request_id == request_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
    )
    return result.scalar_one_or_none()
