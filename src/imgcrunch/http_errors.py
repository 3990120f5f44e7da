"""Why an outgoing HTTP call (an image download, a webhook delivery) failed, in codes a status
and an output CSV can show, and how long the other end asked us to wait."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

import aiohttp


class FetchError(Exception):
    """code: blocked_address | dns_error | connect_error | timeout | http_error | too_large."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after  # seconds the origin asked us to wait (Retry-After)

    @property
    def transient(self) -> bool:
        """Worth another try: the origin or the network may answer next time."""
        if self.code in ("timeout", "connect_error"):
            return True
        return self.status is not None and (self.status == 429 or self.status >= 500)


def client_error(exc: aiohttp.ClientError) -> FetchError:
    """What went wrong talking to a server, in the codes of FetchError."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return FetchError("timeout", "connecting timed out")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return FetchError("timeout", "reading the response timed out")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return FetchError("dns_error", f"host name could not be resolved ({exc})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FetchError("connect_error", f"could not connect ({exc})")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return FetchError("connect_error", f"the response broke off ({exc})")
    if isinstance(exc, aiohttp.ClientResponseError):
        # Raised by the parser (we never raise for a status): what came back is not HTTP.
        # Retried like a broken connection: a new connection may well answer properly.
        reason = (exc.message.splitlines() or ["unreadable"])[0].rstrip(":")
        return FetchError("connect_error", f"the answer is not valid HTTP ({reason})")
    return FetchError("connect_error", f"{type(exc).__name__}: {exc}")


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header, in seconds or as an HTTP date, as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
