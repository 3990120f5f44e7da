"""Where outgoing connections may go (image downloads and webhook deliveries alike): public
addresses, plus the hosts the operator allowed; and an aiohttp session that holds to it.

A name is checked by the session's resolver, on the very addresses that are connected to;
literal addresses, which aiohttp does not resolve, by `check_destination` before each request.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from imgcrunch.http_errors import FetchError


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


def guarded_session(
    *,
    guard: AddressGuard,
    timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str],
    resolver: AbstractResolver | None = None,
) -> aiohttp.ClientSession:
    """A client session whose connections go only where the guard admits.

    Names are checked by the resolver; literal addresses, which aiohttp does not resolve, are
    checked by `check_destination` before each request. No cookies are kept between requests.
    `resolver` looks names up (the system's resolver by default; a test's own, to script its
    answers); the guard checks what it answers.
    """
    if not guard.allow_private_networks:
        resolver = _GuardedResolver(guard, resolver or aiohttp.ThreadedResolver())
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, resolver=resolver, ttl_dns_cache=10),
        timeout=timeout,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def check_url(url: str, guard: AddressGuard) -> None:
    """`check_destination` for a URL as text; FetchError says what is wrong with it."""
    check_destination(parse_url(url), guard)


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
    """A resolver's answers, refusing a name with an address the guard does not admit.

    aiohttp connects to the addresses returned here and never resolves the name again, so the
    answer that was checked is the one used: DNS rebinding cannot slip in between.
    """

    def __init__(self, guard: AddressGuard, resolver: AbstractResolver) -> None:
        self._guard = guard
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        if not self._guard.admits(host, port):
            for result in results:
                _refuse_non_public(host, ipaddress.ip_address(result["host"]))
        return results

    async def close(self) -> None:
        await self._resolver.close()


def _refuse_non_public(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if not is_public(address):
        where = f"{address}" if host == str(address) else f"{host} resolves to {address}, which"
        raise FetchError(
            "blocked_address",
            f"{where} is not a public address (set IMGCRUNCH_ALLOWED_HOSTS, or "
            "IMGCRUNCH_ALLOW_PRIVATE_NETWORKS=true, for local sources)",
        )


def parse_url(url: str) -> URL:
    try:
        return URL(url)
    except ValueError as exc:
        raise FetchError("http_error", f"not a valid URL ({exc})") from None
