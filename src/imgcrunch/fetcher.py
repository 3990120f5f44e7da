"""Downloading an image URL with bounded time and size, and naming why a download failed.

aiohttp carries the downloads: on this hot path it costs about a tenth of the CPU per image
that httpx does (bench/README.md), and its resolver seam lets the address guard check the very
addresses that are connected to.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import random
import re
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

USER_AGENT = "imgcrunch/0.1 (+https://github.com/imgcrunch/imgcrunch)"

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


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


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressGuard:
    """Where connections may go: public addresses, plus the hosts the operator allowed.

    `allowed_hosts` holds `host` (any port) or `host:port` (`[v6]:port`) entries, matched
    exactly, so a test server or an intranet origin can be let in without opening the rest.
    """

    allow_private_networks: bool = False
    allowed_hosts: frozenset[str] = frozenset()

    def admits(self, host: str, port: int | None) -> bool:
        if self.allow_private_networks:
            return True
        host = host.lower().rstrip(".")
        spelled = f"[{host}]" if ":" in host else host
        return host in self.allowed_hosts or f"{spelled}:{port}" in self.allowed_hosts


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchLimits:
    max_bytes: int = 25 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 60.0
    max_redirects: int = 5
    retries: int = 2  # further attempts after a transient failure (timeout, 429, 5xx...)
    retry_backoff: float = 0.5  # seconds; doubled at each attempt, with full jitter
    per_host: int = 8  # downloads from one origin at once (see Fetcher.host_slot)
    guard: AddressGuard = AddressGuard()


@dataclass(slots=True)
class _HostGate:
    slots: asyncio.Semaphore
    users: int = 0  # holding or waiting for a slot; the gate is dropped when none are left


class Fetcher:
    """One shared client session (connection pooling); every call is independent and bounded."""

    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self._gates: dict[tuple[str, str, int | None], _HostGate] = {}
        self._session = guarded_session(
            guard=limits.guard,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=limits.connect_timeout, sock_read=limits.read_timeout
            ),
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"},
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.total_timeout
        for attempt in range(self.limits.retries + 1):
            try:
                return await self._attempt(url, deadline)
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

    async def _attempt(self, url: str, deadline: float) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._follow(_parse(url))
        except aiohttp.ClientError as exc:
            raise client_error(exc) from None
        except TimeoutError:
            raise FetchError(
                "timeout", f"download took longer than {self.limits.total_timeout:g} s"
            ) from None

    async def _follow(self, url: URL) -> bytes:
        """Follow redirects by hand, so that every hop passes the address guard."""
        for _ in range(self.limits.max_redirects + 1):
            check_destination(url, self.limits.guard)
            async with self._session.get(url, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status not in _REDIRECTS or not location:
                    return await self._read(response)
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


def guarded_session(
    *,
    guard: AddressGuard,
    timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str],
) -> aiohttp.ClientSession:
    """A client session whose connections go only where the guard admits.

    Names are checked by the resolver; literal addresses, which aiohttp does not resolve, are
    checked by `check_destination` before each request. No cookies are kept between requests.
    """
    resolver = None if guard.allow_private_networks else _GuardedResolver(guard)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, resolver=resolver, ttl_dns_cache=10),
        timeout=timeout,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def check_url(url: str, guard: AddressGuard) -> None:
    """`check_destination` for a URL as text; FetchError says what is wrong with it."""
    check_destination(_parse(url), guard)


def check_destination(url: URL, guard: AddressGuard) -> None:
    """Refuse a non-HTTP URL, one with credentials, and a literal non-public address."""
    if url.scheme not in ("http", "https") or not url.host:
        raise FetchError("http_error", f"not an http(s) URL: {str(url)[:200]}")
    if url.user is not None or url.password is not None:
        raise FetchError("http_error", "URLs with credentials (user:password@) are refused")
    if guard.admits(url.host, url.port):
        return
    address = literal_address(url.host)
    if address is not None:
        _refuse_non_public(url.host, address)
    # else a name: the resolver checks every address it resolves to


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host spells, in any form a resolver would take: `127.1`, `2130706433`,
    `0x7f000001` and `0177.0.0.1` are all 127.0.0.1."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}", re.IGNORECASE)
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64, IPv4-compatible).
_EMBEDDING_IPV4 = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::/96"),
)


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast, and so is every IPv4 address an IPv6 one carries inside."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
        embedded += [
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            for network in _EMBEDDING_IPV4
            if address in network
        ]
        return all(is_public(inner) for inner in embedded if inner is not None)
    return True


class _GuardedResolver(AbstractResolver):
    """The system resolver, refusing a name with an address the guard does not admit.

    aiohttp connects to the addresses returned here and never resolves the name again, so the
    answer that was checked is the one used: DNS rebinding cannot slip in between.
    """

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._system = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._system.resolve(host, port, family)
        if not self._guard.admits(host, port):
            for result in results:
                _refuse_non_public(host, ipaddress.ip_address(result["host"]))
        return results

    async def close(self) -> None:
        await self._system.close()


def _refuse_non_public(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if not is_public(address):
        where = f"{address}" if host == str(address) else f"{host} resolves to {address}, which"
        raise FetchError(
            "blocked_address",
            f"{where} is not a public address (set IMGCRUNCH_ALLOWED_HOSTS, or "
            "IMGCRUNCH_ALLOW_PRIVATE_NETWORKS=true, for local sources)",
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    try:
        parts = urlsplit(url)
        return parts.scheme.lower(), (parts.hostname or ""), parts.port
    except ValueError:  # an unparseable URL fails in fetch; it shares one gate meanwhile
        return "", url, None


def _parse(url: str) -> URL:
    try:
        return URL(url)
    except ValueError as exc:
        raise FetchError("http_error", f"not a valid URL ({exc})") from None


def _redirect_target(current: URL, location: str) -> URL:
    try:
        return current.join(URL(location))
    except ValueError:
        raise FetchError("http_error", f"redirected to an invalid URL: {location[:200]}") from None


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
