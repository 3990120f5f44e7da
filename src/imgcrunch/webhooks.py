"""Webhook events: building them for the outbox, and delivering what the outbox holds."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta

import aiohttp
from yarl import URL

from imgcrunch import repository
from imgcrunch.db import SessionFactory
from imgcrunch.fetcher import (
    USER_AGENT,
    AddressGuard,
    FetchError,
    check_destination,
    guarded_session,
)
from imgcrunch.models import DeliveryStatus, Request, utcnow

log = logging.getLogger(__name__)

COMPLETED = "request.completed"


def completed_event(
    request: Request, *, status: str, output_csv_url: str, now: datetime
) -> repository.NewEvent:
    """The event for a finished request; its body is fixed here so every attempt sends the same."""
    assert request.webhook_url is not None
    body = {
        "type": COMPLETED,
        "timestamp": now.isoformat(),
        "data": {
            "request_id": str(request.id),
            "status": status,
            "progress": request.progress(),
            "output_csv_url": output_csv_url,
        },
    }
    return repository.NewEvent(
        event_id=f"msg_{uuid.uuid4().hex}",
        event_type=COMPLETED,
        url=request.webhook_url,
        payload=json.dumps(body, separators=(",", ":")),
    )


class Deliverer:
    """Sends due outbox events. One attempt each for now; retries are recorded as failures."""

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        timeout: float,
        guard: AddressGuard,
    ) -> None:
        self._sessions = sessions
        self._lease = timedelta(seconds=timeout + 60)  # an attempt ends within its timeout
        self._guard = guard
        self._client = guarded_session(
            guard=guard,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def deliver_due(self) -> int:
        """Deliver every event that is due; returns how many were attempted."""
        now = utcnow()
        async with self._sessions.begin() as session:
            due = await repository.lease_due_deliveries(
                session, now=now, lease_until=now + self._lease
            )
        for delivery in due:
            response_status, error = await self._send(
                delivery.url, delivery.event_id, delivery.payload
            )
            ok = response_status is not None and 200 <= response_status < 300
            if not ok:
                log.warning("webhook %s to %s failed: %s", delivery.event_id, delivery.url, error)
            async with self._sessions.begin() as session:
                await repository.record_delivery_attempt(
                    session,
                    delivery.id,
                    status=DeliveryStatus.DELIVERED if ok else DeliveryStatus.FAILED,
                    response_status=response_status,
                    error=None if ok else error,
                    now=utcnow(),
                )
        return len(due)

    async def _send(self, url: str, event_id: str, payload: str) -> tuple[int | None, str | None]:
        try:
            target = URL(url)
            check_destination(target, self._guard)
            async with self._client.post(
                target,
                data=payload.encode(),
                headers={"webhook-id": event_id},
                allow_redirects=False,  # a redirect is the receiver's misconfiguration, not a hop
            ) as response:
                return response.status, f"HTTP {response.status}"
        except FetchError as exc:
            return None, f"{exc.code}: {exc.message}"
        except TimeoutError:
            return None, "timeout: no answer in time"
        except (aiohttp.ClientError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
