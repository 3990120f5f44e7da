"""Downloading an image URL with bounded time and size, and naming why a download failed."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

USER_AGENT = "imgcrunch/0.1 (+https://github.com/imgcrunch/imgcrunch)"


class FetchError(Exception):
    """code: blocked_address | dns_error | connect_error | timeout | http_error | too_large."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchLimits:
    max_bytes: int = 25 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 60.0
    max_redirects: int = 5
    allow_private_networks: bool = False


class Fetcher:
    """One shared HTTP client (connection pooling); every call is independent and bounded."""

    def __init__(
        self, limits: FetchLimits, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.limits = limits
        hooks = [] if limits.allow_private_networks else [refuse_private_destination]
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=True,
            max_redirects=limits.max_redirects,
            timeout=httpx.Timeout(
                limits.read_timeout, connect=limits.connect_timeout, pool=limits.total_timeout
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"},
            event_hooks={"request": hooks},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        try:
            async with asyncio.timeout(self.limits.total_timeout):
                return await self._download(url)
        except TimeoutError:
            raise FetchError(
                "timeout", f"download took longer than {self.limits.total_timeout:g} s"
            ) from None
        except httpx.TimeoutException as exc:
            raise FetchError("timeout", f"{_describe_timeout(exc)} timed out") from None
        except httpx.TooManyRedirects:
            raise FetchError(
                "http_error", f"more than {self.limits.max_redirects} redirects"
            ) from None
        except httpx.ConnectError as exc:
            raise _connect_failure(exc) from None
        except (httpx.TransportError, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise FetchError("connect_error", f"{type(exc).__name__}: {exc}") from None

    async def _download(self, url: str) -> bytes:
        async with self._client.stream("GET", url) as response:
            if not response.is_success:
                raise FetchError(
                    "http_error",
                    f"HTTP {response.status_code} {response.reason_phrase}".strip(),
                    status=response.status_code,
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.limits.max_bytes:
                raise self._too_large(int(declared))
            chunks: list[bytes] = []
            received = 0
            # Content-Length can lie or be absent, and a body can be gzipped: the cap holds on the
            # decoded bytes that actually arrive.
            async for chunk in response.aiter_bytes():
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


def _describe_timeout(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connecting"
    if isinstance(exc, httpx.PoolTimeout):
        return "waiting for a connection"
    return "reading the response"


def _connect_failure(exc: httpx.ConnectError) -> FetchError:
    text = str(exc)
    if isinstance(exc.__cause__, socket.gaierror) or "Name or service not known" in text:
        return FetchError("dns_error", f"host name could not be resolved ({text})")
    return FetchError("connect_error", f"could not connect ({text or type(exc).__name__})")


async def refuse_private_destination(request: httpx.Request) -> None:
    """Refuse hosts that resolve to loopback, private, link-local or otherwise non-public space.

    Runs before the first request and before every redirect. It resolves the name separately
    from the connection, so DNS rebinding can still slip past; the hardened guard is its own issue.
    """
    host = request.url.host
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError("dns_error", f"host {host!r} could not be resolved ({exc})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise FetchError(
                "blocked_address",
                f"{host} resolves to {address}, which is not a public address "
                "(set IMGCRUNCH_ALLOW_PRIVATE_NETWORKS=true for local sources)",
            )


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
