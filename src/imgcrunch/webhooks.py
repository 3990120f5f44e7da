"""Webhook events: building them for the outbox, and delivering what the outbox holds, signed
as `signing` says (where `verify`, what a receiver runs, lives).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from imgcrunch import metrics, repository
from imgcrunch.address_guard import AddressGuard, check_destination, guarded_session
from imgcrunch.db import SessionFactory
from imgcrunch.fetcher import USER_AGENT
from imgcrunch.http_errors import FetchError, client_error, retry_after_seconds
from imgcrunch.models import DeliveryStatus, Request, RequestStatus, WebhookDelivery, utcnow
from imgcrunch.signing import new_secret, secret_key, signature_header

if TYPE_CHECKING:
    from imgcrunch.config import Settings

log = logging.getLogger(__name__)

COMPLETED = "request.completed"
FAILED = "request.failed"

SECRET_FILE = "webhook-secret"  # in the data folder, when IMGCRUNCH_WEBHOOK_SECRET is not set


def signing_secrets(configured: Sequence[str], data_dir: Path) -> tuple[str, ...]:
    """The configured secrets, or the one kept in the data folder, made on first use.
    ValueError, naming the setting but not the secret, if a configured one is unusable."""
    for secret in configured:
        try:
            secret_key(secret)
        except ValueError as error:
            raise ValueError(f"IMGCRUNCH_WEBHOOK_SECRET: {error}") from None
    if configured:
        return tuple(configured)
    return (_kept_secret(data_dir / SECRET_FILE),)


def _kept_secret(path: Path) -> str:
    """Read the secret, or create it: written whole to a temp file, then linked into place, so
    that processes starting together (API, workers on a shared folder) all end up with one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(new_secret() + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temp, path)
            log.info("made a webhook signing secret; receivers verify with it: %s", path)
        except FileExistsError:
            pass  # another process made it first: theirs is the one
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
    secret = path.read_text().strip()
    secret_key(secret)  # a hand-edited file must still hold a usable secret
    return secret


def finished_event(
    request: Request, *, status: str, download_url: str | None, now: datetime
) -> repository.NewEvent:
    """The event for a request that reached a final status; its body is fixed here, once, so
    that every attempt sends the same bytes. Small: ids, counts and links, never the rows."""
    assert request.webhook_url is not None
    event_type = FAILED if status == RequestStatus.FAILED else COMPLETED
    body = {
        "type": event_type,
        "timestamp": now.isoformat(),
        "data": {
            "request_id": str(request.id),
            "status": status,
            "progress": request.progress(),
            "output_csv_url": download_url,
            "download_url": download_url,
        },
    }
    return repository.NewEvent(
        event_id=f"msg_{uuid.uuid4().hex}",
        event_type=event_type,
        url=request.webhook_url,
        payload=json.dumps(body, separators=(",", ":")),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryPolicy:
    timeout: float  # per attempt
    retry_schedule: tuple[float, ...]  # the waits before each retry; then it gives up
    jitter: float = 0.2  # each wait is the schedule's, give or take this share
    longest_retry_after: float = 86400  # a receiver's Retry-After is honoured up to this

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(timeout=settings.webhook_timeout, retry_schedule=settings.webhook_retry_schedule)

    def after(
        self, attempt: int, outcome: Outcome, now: datetime
    ) -> tuple[DeliveryStatus, datetime]:
        """Where a delivery stands after its `attempt`-th try (1 for the first), and when to
        try again."""
        if outcome.delivered:
            return DeliveryStatus.DELIVERED, now
        if outcome.status == 410 or attempt > len(self.retry_schedule):
            return DeliveryStatus.GAVE_UP, now
        wait = self.retry_schedule[attempt - 1] * random.uniform(1 - self.jitter, 1 + self.jitter)
        if outcome.retry_after is not None:  # the receiver said when
            wait = min(outcome.retry_after, self.longest_retry_after)
        return DeliveryStatus.PENDING, now + timedelta(seconds=wait)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int | None  # the HTTP status, or None when no answer came
    error: str | None  # None when delivered
    retry_after: float | None = None  # seconds, from a 429 or 503 answer

    @property
    def delivered(self) -> bool:
        return self.error is None


_OUTCOMES = {
    DeliveryStatus.DELIVERED: "delivered",
    DeliveryStatus.PENDING: "retry",
    DeliveryStatus.GAVE_UP: "gave_up",
}


class Deliverer:
    """Sends the outbox's due events, signed; records every attempt and schedules the next.

    Only a 2xx answer delivers. A redirect is not followed (it is the receiver's mistake, and
    would carry the signed body elsewhere); 410 Gone stops the retries; 429 and 503 are retried
    when their Retry-After says. `resolver` looks up the receivers' names (the system's
    resolver by default); the address guard checks its answers at every attempt.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        signing_secrets: Sequence[str],
        policy: DeliveryPolicy,
        guard: AddressGuard,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._sessions = sessions
        self._secrets = tuple(signing_secrets)
        self._policy = policy
        self._lease = timedelta(seconds=policy.timeout + 60)  # an attempt ends within its timeout
        self._guard = guard
        self._client = guarded_session(
            guard=guard,
            timeout=aiohttp.ClientTimeout(total=policy.timeout),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            resolver=resolver,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def deliver_due(self) -> int:
        """Attempt every event that is due, side by side; returns how many were attempted.

        Side by side, so a round lasts one timeout at most, well within the lease each event
        was taken under: no other worker sends it meanwhile.
        """
        now = utcnow()
        async with self._sessions.begin() as session:
            due = await repository.lease_due_deliveries(
                session, now=now, lease_until=now + self._lease
            )
        await asyncio.gather(*(self._attempt(delivery) for delivery in due))
        return len(due)

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        outcome = await self._send(delivery.url, delivery.event_id, delivery.payload)
        attempt = delivery.attempts + 1
        now = utcnow()
        # The schedule counts from the latest redelivery, if any.
        scheduled = attempt - delivery.schedule_start
        status, next_attempt_at = self._policy.after(scheduled, outcome, now)
        metrics.WEBHOOK_ATTEMPTS.labels(_OUTCOMES[status]).inc()
        if status != DeliveryStatus.DELIVERED:
            gave_up = status == DeliveryStatus.GAVE_UP
            then = "giving up" if gave_up else f"next at {next_attempt_at:%H:%M:%S}"
            log.warning(
                "webhook %s to %s, attempt %d: %s; %s",
                delivery.event_id,
                delivery.url,
                attempt,
                outcome.error,
                then,
            )
        async with self._sessions.begin() as session:
            await repository.record_delivery_attempt(
                session,
                delivery.id,
                status=status,
                response_status=outcome.status,
                error=outcome.error,
                now=now,
                next_attempt_at=next_attempt_at,
            )

    async def seconds_until_due(self) -> float | None:
        """How long until an event is due (0 if one is now); None if none waits."""
        async with self._sessions() as session:
            return await repository.seconds_until_delivery_due(session, now=utcnow())

    async def _send(self, url: str, event_id: str, payload: str) -> Outcome:
        body = payload.encode()
        timestamp = int(time.time())
        headers = {
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(self._secrets, event_id, timestamp, body),
        }
        try:
            target = URL(url)
            check_destination(target, self._guard)
            async with self._client.post(
                target, data=body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return Outcome(response.status, None)
                retry_after = None
                if response.status in (429, 503):
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                reason = f"HTTP {response.status} {response.reason or ''}".strip()
                return Outcome(response.status, reason, retry_after)
        except aiohttp.ClientError as exc:
            return _failed(client_error(exc))
        except FetchError as exc:
            return _failed(exc)
        except TimeoutError:
            return Outcome(None, f"timeout: no answer within {self._policy.timeout:g} s")
        except ValueError as exc:  # a URL yarl cannot take
            return Outcome(None, f"invalid URL: {exc}")


def _failed(error: FetchError) -> Outcome:
    return Outcome(None, f"{error.code}: {error.message}")
