"""Requests put in a test's database through the repository, as an upload, and the pipeline
finishing them, would have left them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from imgcrunch import repository
from imgcrunch.db import SessionFactory
from imgcrunch.models import RequestStatus, utcnow


async def add_request(
    sessions: SessionFactory,
    *,
    total_images: int = 0,
    extra_columns: Sequence[str] = (),
    webhook_url: str | None = None,
) -> uuid.UUID:
    """A queued request, at quality 50 and balanced effort; its rows are not stored."""
    new = repository.NewRequest(
        id=uuid.uuid4(),
        total_images=total_images,
        extra_columns=tuple(extra_columns),
        quality=50,
        effort="balanced",
        input_key="csv/input.csv",
        webhook_url=webhook_url,
    )
    async with sessions.begin() as session:
        await repository.create_request(session, new)
    return new.id


async def finish_with_event(
    sessions: SessionFactory,
    request_id: uuid.UUID,
    *,
    event_id: str,
    url: str = "http://hooks.example.com/",
    now: datetime | None = None,
) -> bool:
    """Finish the request `completed`, with a webhook event for `url` in the outbox, as the
    pipeline does; False if it was not complete or finished already."""
    event = repository.NewEvent(
        event_id=event_id, event_type="request.completed", url=url, payload="{}"
    )
    async with sessions.begin() as session:
        return await repository.finish_request(
            session,
            request_id,
            status=RequestStatus.COMPLETED,
            output_key="csv/output.csv",
            now=now or utcnow(),
            event=event,
        )
