"""Downloading an image URL with bounded time and size, and naming why a download failed.

aiohttp carries the downloads: on this hot path it costs about a tenth of the CPU per image
that httpx does (bench/README.md), and its resolver seam lets the address guard
(`address_guard`) check the very addresses that are connected to.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from imgcrunch.address_guard import (
    AddressGuard,
    check_destination,
    guarded_session,
    parse_url,
)
from imgcrunch.http_errors import FetchError, client_error, retry_after_seconds

if TYPE_CHECKING:
    from imgcrunch.config import Settings

USER_AGENT = "imgcrunch/0.1 (+https://github.com/imgcrunch/imgcrunch)"

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchLimits:
    """What bounds a download. No defaults here: `Settings` is the one place that has them."""

    max_bytes: int
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    max_redirects: int
    retries: int  # further attempts after a transient failure (timeout, 429, 5xx...)
    retry_backoff: float  # seconds; doubled at each attempt, with full jitter
    per_host: int  # downloads from one origin at once (see Fetcher.host_slot)
    guard: AddressGuard

    @classmethod
    def from_settings(cls, settings: Settings, *, guard: AddressGuard) -> FetchLimits:
        return cls(
            max_bytes=settings.max_download_bytes,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            total_timeout=settings.fetch_timeout,
            max_redirects=settings.max_redirects,
            retries=settings.fetch_retries,
            retry_backoff=settings.fetch_retry_backoff,
            per_host=settings.fetch_concurrency_per_host,
            guard=guard,
        )


@dataclass(frozen=True, slots=True)
class Validators:
    """What an origin said identifies the version it sent, to ask next time whether it
    changed (RFC 9110: If-None-Match, preferred, and If-Modified-Since)."""

    etag: str | None = None
    last_modified: str | None = None

    def conditional_headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes | None  # None: the origin answered 304 Not Modified to the validators sent
    validators: Validators  # those of the version it has: to send next time


@dataclass(slots=True)
class _HostGate:
    slots: asyncio.Semaphore
    users: int = 0  # holding or waiting for a slot; the gate is dropped when none are left


class Fetcher:
    """One shared client session (connection pooling); every call is independent and bounded.

    `resolver` looks up the origins' names (the system's resolver by default); the address
    guard checks its answers.
    """

    def __init__(self, limits: FetchLimits, *, resolver: AbstractResolver | None = None) -> None:
        self.limits = limits
        self._gates: dict[tuple[str, str, int | None], _HostGate] = {}
        self._session = guarded_session(
            guard=limits.guard,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=limits.connect_timeout, sock_read=limits.read_timeout
            ),
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"},
            resolver=resolver,
        )

    async def aclose(self) -> None:
        await self._session.close()

    @asynccontextmanager
    async def host_slot(self, url: str) -> AsyncIterator[None]:
        """One of the `per_host` download slots of the URL's origin (scheme, host and port).

        A caller that takes it before any other scarce resource (a memory slot) makes sure a
        slow or stalling origin holds no more than `per_host` of them, whatever the share of
        its URLs: images from other origins go on meanwhile.
        """
        key = _origin(url)
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _HostGate(asyncio.Semaphore(self.limits.per_host))
        gate.users += 1
        try:
            async with gate.slots:
                yield
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[key]

    async def fetch(self, url: str) -> bytes:
        """The body, or FetchError; transient failures are tried again within the total time."""
        fetched = await self.fetch_if_changed(url, Validators())
        assert fetched.data is not None  # nothing was asked conditionally
        return fetched.data

    async def fetch_if_changed(self, url: str, validators: Validators) -> Fetched:
        """As `fetch`, asking the origin for the body only if it changed since `validators`:
        `data` is None when it answers 304. A 304 to a request that sent no validators is an
        error, as any other answer outside 2xx."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.total_timeout
        for attempt in range(self.limits.retries + 1):
            try:
                return await self._attempt(url, validators, deadline)
            except FetchError as error:
                if attempt == self.limits.retries or not error.transient:
                    raise
                delay = self._delay(attempt, error.retry_after)
                if loop.time() + delay >= deadline:
                    raise  # the origin asks for more time than this download has left
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        return random.uniform(0, self.limits.retry_backoff * 2**attempt)

    async def _attempt(self, url: str, validators: Validators, deadline: float) -> Fetched:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._follow(parse_url(url), validators)
        except aiohttp.ClientError as exc:
            raise client_error(exc) from None
        except TimeoutError:
            raise FetchError(
                "timeout", f"download took longer than {self.limits.total_timeout:g} s"
            ) from None

    async def _follow(self, url: URL, validators: Validators) -> Fetched:
        """Follow redirects by hand, so that every hop passes the address guard."""
        headers = validators.conditional_headers()
        for _ in range(self.limits.max_redirects + 1):
            check_destination(url, self.limits.guard)
            async with self._session.get(url, allow_redirects=False, headers=headers) as response:
                location = response.headers.get("Location")
                if response.status not in _REDIRECTS or not location:
                    if response.status == 304 and headers:  # what was sent still holds
                        return Fetched(None, _validators(response, validators))
                    return Fetched(await self._read(response), _validators(response))
                url = _redirect_target(response.url, location)
        raise FetchError("http_error", f"more than {self.limits.max_redirects} redirects")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        if not 200 <= response.status < 300:
            raise FetchError(
                "http_error",
                f"HTTP {response.status} {response.reason or ''}".strip(),
                status=response.status,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        declared = response.content_length
        if declared is not None and declared > self.limits.max_bytes:
            raise self._too_large(declared)
        chunks: list[bytes] = []
        received = 0
        # Content-Length can lie or be absent, and a body can be gzipped: the cap holds on the
        # decoded bytes that actually arrive.
        async for chunk in response.content.iter_any():
            received += len(chunk)
            if received > self.limits.max_bytes:
                raise self._too_large(received)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, size: int) -> FetchError:
        return FetchError(
            "too_large",
            f"image is over the {self.limits.max_bytes:,} byte limit (at least {size:,})",
        )


def _validators(response: aiohttp.ClientResponse, sent: Validators = Validators()) -> Validators:
    """The response's validators; a 304 may leave out those that did not change."""
    return Validators(
        etag=response.headers.get("ETag") or sent.etag,
        last_modified=response.headers.get("Last-Modified") or sent.last_modified,
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    try:
        parts = urlsplit(url)
        return parts.scheme.lower(), (parts.hostname or ""), parts.port
    except ValueError:  # an unparseable URL fails in fetch; it shares one gate meanwhile
        return "", url, None


def _redirect_target(current: URL, location: str) -> URL:
    try:
        return current.join(URL(location))
    except ValueError:
        raise FetchError("http_error", f"redirected to an invalid URL: {location[:200]}") from None


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
