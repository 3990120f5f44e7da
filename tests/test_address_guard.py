"""The address guard: where downloads and webhook deliveries may connect, checked on the
addresses that are connected to. Driven through real clients (a Fetcher, a Deliverer) against
real local servers; a scripted resolver plays the DNS that rebinds."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from imgcrunch import repository
from imgcrunch.address_guard import AddressGuard, check_url, is_public, literal_address
from imgcrunch.config import Settings
from imgcrunch.db import SessionFactory
from imgcrunch.fetcher import Fetcher, FetchLimits
from imgcrunch.http_errors import FetchError
from imgcrunch.signing import new_secret
from imgcrunch.webhooks import Deliverer, DeliveryPolicy
from tests.imaging import PHOTOS
from tests.plugins.origin import ImageServer
from tests.plugins.receivers import Receiver
from tests.records import add_request, finish_with_event
from tests.service_process import free_port

pytestmark = pytest.mark.anyio

OPEN = AddressGuard(allow_private_networks=True)
GUARDED = FetchLimits.from_settings(Settings(), guard=AddressGuard())
LOCAL = replace(GUARDED, guard=OPEN, read_timeout=1, total_timeout=3)


async def fetch(
    url: str, limits: FetchLimits = LOCAL, *, resolver: AbstractResolver | None = None
) -> bytes:
    fetcher = Fetcher(limits, resolver=resolver)
    try:
        return await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


async def failure(
    url: str, limits: FetchLimits = LOCAL, *, resolver: AbstractResolver | None = None
) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetch(url, limits, resolver=resolver)
    return caught.value


# --- the rules ---------------------------------------------------------------------------------


def test_an_allowed_entry_is_a_host_with_any_port_or_that_host_and_port_only() -> None:
    guard = AddressGuard(allowed_hosts=frozenset({"images.intranet", "127.0.0.1:8080", "[::1]:81"}))
    assert guard.admits("images.intranet", 443)
    assert guard.admits("Images.Intranet.", 80)  # names are case-blind, a final dot aside
    assert guard.admits("127.0.0.1", 8080)
    assert not guard.admits("127.0.0.1", 8081)
    assert guard.admits("::1", 81)
    assert not guard.admits("::1", 80)
    assert not guard.admits("other.intranet", 443)
    assert AddressGuard(allow_private_networks=True).admits("10.0.0.1", 80)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/a.jpg", "not an http(s) URL"),
        ("http:///a.jpg", "not an http(s) URL"),
        ("https://user:pw@example.com/a.jpg", "URLs with credentials"),
        ("http://127.0.0.1/a.jpg", "127.0.0.1 is not a public address"),
        ("http://[fe80::1]/a.jpg", "fe80::1 is not a public address"),
    ],
)
def test_a_url_is_refused_saying_why(url: str, reason: str) -> None:
    with pytest.raises(FetchError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_url(url, AddressGuard())


def test_a_public_literal_or_any_name_passes_the_check_before_connecting() -> None:
    check_url("http://93.184.215.14/a.jpg", AddressGuard())
    check_url("https://cdn.example.com/a.jpg", AddressGuard())  # its resolver answer is checked


async def test_private_addresses_are_refused_unless_allowed(image_server: ImageServer) -> None:
    url = image_server.url(f"/photos/{PHOTOS[0].name}")
    error = await failure(url, GUARDED)
    assert error.code == "blocked_address"
    assert error.message.startswith("127.0.0.1 is not a public address")
    assert "IMGCRUNCH_ALLOW_PRIVATE_NETWORKS" in error.message
    assert await fetch(url)  # the same URL, allowed


# --- which addresses are public -----------------------------------------------------------

NON_PUBLIC = [
    "127.0.0.1",
    "127.255.255.254",  # all of 127/8
    "::1",
    "0.0.0.0",
    "::",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "fe80::1",
    "100.64.0.1",  # carrier-grade NAT
    "fc00::1",
    "fd12:3456::1",
    "224.0.0.1",  # multicast, which Python counts as global
    "ff02::1",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_every_non_public_range_is_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "host", ["127.1", "2130706433", "0x7f000001", "0x7f.0.0.1", "0177.0.0.1", "017700000001"]
)
def test_other_spellings_of_an_address_are_read_as_that_address(host: str) -> None:
    assert literal_address(host) == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8000/a.jpg",
        "http://localhost:8000/a.jpg",
        "http://2130706433/a.jpg",
        "http://0x7f000001/a.jpg",
        "http://0177.0.0.1/a.jpg",
        "http://127.1/a.jpg",
        "http://[::ffff:127.0.0.1]/a.jpg",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "http://0.0.0.0:8000/a.jpg",
        "http://[::]:8000/a.jpg",
        "http://100.64.0.1/a.jpg",
        "http://[fd00::1]/a.jpg",
    ],
)
async def test_non_public_destinations_however_spelled_are_refused_before_connecting(
    url: str,
) -> None:
    error = await failure(url, replace(GUARDED, connect_timeout=1, total_timeout=2))
    assert error.code == "blocked_address", error.message
    assert "is not a public address" in error.message


async def test_credentials_in_a_url_are_refused(image_server: ImageServer) -> None:
    netloc = urlsplit(image_server.base_url).netloc
    error = await failure(f"http://user:secret@{netloc}/photos/{PHOTOS[0].name}")
    assert error.code == "http_error"
    assert "credentials" in error.message
    assert "secret" not in error.message


def allowing(image_server: ImageServer) -> FetchLimits:
    """The guard on, with the test server admitted by its exact host and port."""
    netloc = urlsplit(image_server.base_url).netloc
    guard = AddressGuard(allowed_hosts=frozenset({netloc}))
    return replace(GUARDED, guard=guard, connect_timeout=1, total_timeout=3)


async def test_an_allowed_host_and_port_is_admitted_and_no_other(image_server: ImageServer) -> None:
    limits = allowing(image_server)
    port = urlsplit(image_server.base_url).port
    photo = f"/photos/{PHOTOS[0].name}"
    assert await fetch(image_server.url(photo), limits) == PHOTOS[0].read_bytes()
    for other in (
        f"http://127.0.0.1:{free_port()}{photo}",  # same host, another port
        f"http://127.0.0.2:{port}{photo}",  # another loopback address, same port
        f"http://localhost:{port}{photo}",  # the same server by another name
        f"http://[::1]:{port}{photo}",
    ):
        error = await failure(other, limits)
        assert error.code == "blocked_address", (other, error.message)


async def test_a_redirect_from_an_allowed_host_to_another_loopback_one_is_refused(
    image_server: ImageServer,
) -> None:
    limits = allowing(image_server)
    port = urlsplit(image_server.base_url).port
    for target in (
        f"http://localhost:{port}/photos/{PHOTOS[0].name}",
        f"http://127.0.0.1:{free_port()}/photos/{PHOTOS[0].name}",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",
    ):
        error = await failure(image_server.url(f"/redirect?to={target}"), limits)
        assert error.code == "blocked_address", (target, error.message)
    # A redirect that stays on the allowed host and port is followed.
    relative = image_server.url(f"/redirect?to=/photos/{PHOTOS[1].name}")
    assert await fetch(relative, limits) == PHOTOS[1].read_bytes()


# --- names, and DNS rebinding ------------------------------------------------------------------

PUBLIC = "93.184.215.14"


class ScriptedResolver(AbstractResolver):
    """A resolver whose answers a test writes: each lookup of any name answers the next list of
    addresses (the last one for good)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


def rebinding() -> ScriptedResolver:
    """DNS rebinding: a public address for the first lookup, loopback for every later one, as
    an attacker's name server answers when a check and a connection each look the name up."""
    return ScriptedResolver([PUBLIC], ["127.0.0.1"])


async def test_a_name_that_resolves_to_a_private_address_is_refused(
    image_server: ImageServer,
) -> None:
    port = urlsplit(image_server.base_url).port
    path = f"/photos/{PHOTOS[0].name}?n=private-name"
    for answer in (["127.0.0.1"], [PUBLIC, "127.0.0.1"], ["::ffff:127.0.0.1"]):
        error = await failure(
            f"http://images.test:{port}{path}", GUARDED, resolver=ScriptedResolver(answer)
        )
        assert error.code == "blocked_address", answer  # any one such address refuses the name
        assert error.message.startswith("images.test resolves to ")
    assert image_server.hits[path] == 0


async def test_a_name_that_rebinds_to_loopback_never_reaches_it(image_server: ImageServer) -> None:
    port = urlsplit(image_server.base_url).port
    path = f"/photos/{PHOTOS[0].name}?n=rebinding"
    url = f"http://rebind.test:{port}{path}"
    resolver = rebinding()
    limits = replace(GUARDED, connect_timeout=1, total_timeout=5, retry_backoff=0)
    # The first lookup's public answer is the one connected to (nothing listens there),
    # however often the download is tried; a later client's lookup answers loopback, refused.
    first = await failure(url, limits, resolver=resolver)
    later = await failure(url, limits, resolver=resolver)
    assert image_server.hits[path] == 0
    assert first.code in ("connect_error", "timeout", "blocked_address"), first.message
    assert (later.code, later.message.split(",")[0]) == (
        "blocked_address",
        "rebind.test resolves to 127.0.0.1",
    )


async def deliver_once(
    sessions: SessionFactory, url: str, *, guard: AddressGuard, resolver: AbstractResolver
) -> str | None:
    """Put one event for `url` in the outbox, attempt it, and return the attempt's error."""
    request_id = await add_request(sessions, webhook_url=url)
    assert await finish_with_event(sessions, request_id, event_id=f"msg_{request_id.hex}", url=url)
    deliverer = Deliverer(
        sessions,
        signing_secrets=(new_secret(),),
        policy=DeliveryPolicy(timeout=5, retry_schedule=(60,)),
        guard=guard,
        resolver=resolver,
    )
    try:
        assert await deliverer.deliver_due() == 1
    finally:
        await deliverer.aclose()
    async with sessions() as session:
        delivery = await repository.latest_delivery(session, request_id)
    assert delivery is not None
    return delivery.last_error


async def test_a_delivery_to_a_name_that_rebinds_never_reaches_loopback(
    sqlite_sessions: SessionFactory, receiver: Receiver
) -> None:
    port = urlsplit(receiver.url).port
    resolver = rebinding()
    guard = AddressGuard()
    first = await deliver_once(
        sqlite_sessions, f"http://hooks.test:{port}/", guard=guard, resolver=resolver
    )
    # A later attempt, a new session: its lookup is checked anew.
    later = await deliver_once(
        sqlite_sessions, f"http://hooks.test:{port}/", guard=guard, resolver=resolver
    )
    assert receiver.deliveries == []
    assert first is not None
    assert first.startswith(("connect_error", "timeout")), first
    assert later is not None
    assert later.startswith("blocked_address: hooks.test resolves to 127.0.0.1"), later


async def test_a_receiver_name_that_resolves_to_an_allowed_host_is_delivered_to(
    sqlite_sessions: SessionFactory, receiver: Receiver
) -> None:
    # The guard does refuse for a reason: the same delivery, its host let in, arrives.
    port = urlsplit(receiver.url).port
    guard = AddressGuard(allowed_hosts=frozenset({"hooks.test"}))
    resolver = ScriptedResolver(["127.0.0.1"])
    error = await deliver_once(
        sqlite_sessions, f"http://hooks.test:{port}/", guard=guard, resolver=resolver
    )
    assert error is None
    assert len(receiver.deliveries) == 1
