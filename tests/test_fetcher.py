"""Downloads against a real local HTTP server: each failure named by its code."""

from __future__ import annotations

from dataclasses import replace

import pytest

from imgcrunch.fetcher import Fetcher, FetchError, FetchLimits, is_http_url
from tests.conftest import PHOTOS, ImageServer, free_port

pytestmark = pytest.mark.anyio

LOCAL = FetchLimits(allow_private_networks=True, read_timeout=1, total_timeout=3)


async def fetch(url: str, limits: FetchLimits = LOCAL) -> bytes:
    fetcher = Fetcher(limits)
    try:
        return await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


async def failure(url: str, limits: FetchLimits = LOCAL) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetch(url, limits)
    return caught.value


async def test_a_photo_arrives_whole(image_server: ImageServer) -> None:
    data = await fetch(image_server.url(f"/photos/{PHOTOS[0].name}"))
    assert data == PHOTOS[0].read_bytes()


async def test_http_errors_carry_the_status(image_server: ImageServer) -> None:
    missing = await failure(image_server.url("/missing.jpg"))
    assert (missing.code, missing.status, missing.message) == (
        "http_error",
        404,
        "HTTP 404 Not Found",
    )
    broken = await failure(image_server.url("/error.jpg"))
    assert (broken.code, broken.status) == ("http_error", 500)


async def test_a_stalled_body_times_out(image_server: ImageServer) -> None:
    error = await failure(image_server.url("/stall.jpg"))
    assert error.code == "timeout"


async def test_the_size_cap_holds_while_streaming(image_server: ImageServer) -> None:
    limits = FetchLimits(allow_private_networks=True, max_bytes=1000)
    error = await failure(image_server.url(f"/photos/{PHOTOS[0].name}"), limits)
    assert error.code == "too_large"
    assert "1,000 byte limit" in error.message


async def test_a_closed_port_is_a_connect_error() -> None:
    error = await failure(f"http://127.0.0.1:{free_port()}/a.jpg")
    assert error.code == "connect_error"


async def test_an_unknown_host_is_a_dns_error() -> None:
    error = await failure("http://no-such-host.invalid/a.jpg")
    assert error.code == "dns_error"


async def test_private_addresses_are_refused_unless_allowed(image_server: ImageServer) -> None:
    url = image_server.url(f"/photos/{PHOTOS[0].name}")
    error = await failure(url, FetchLimits())
    assert error.code == "blocked_address"
    assert error.message.startswith("127.0.0.1 is not a public address")
    assert "IMGCRUNCH_ALLOW_PRIVATE_NETWORKS" in error.message
    assert await fetch(url)  # the same URL, allowed


async def test_redirects_are_followed_relative_and_absolute(image_server: ImageServer) -> None:
    photo = f"/photos/{PHOTOS[1].name}"
    assert await fetch(image_server.url(f"/redirect?to={photo}")) == PHOTOS[1].read_bytes()
    absolute = image_server.url(f"/redirect?to={image_server.url(photo)}")
    assert await fetch(absolute) == PHOTOS[1].read_bytes()


async def test_a_redirect_loop_ends_as_an_http_error(image_server: ImageServer) -> None:
    error = await failure(image_server.url("/loop"), replace(LOCAL, max_redirects=3))
    assert (error.code, error.message) == ("http_error", "more than 3 redirects")


async def test_a_redirect_off_the_web_is_refused(image_server: ImageServer) -> None:
    error = await failure(image_server.url("/redirect?to=file:///etc/passwd"))
    assert error.code == "http_error"
    assert "file:///etc/passwd" in error.message


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8000/a.jpg",
        "http://localhost:8000/a.jpg",
    ],
)
async def test_non_public_destinations_are_refused_before_connecting(url: str) -> None:
    error = await failure(url, FetchLimits(connect_timeout=1, total_timeout=2))
    assert error.code == "blocked_address"
    assert "is not a public address" in error.message


def test_only_absolute_http_urls_pass() -> None:
    assert is_http_url("https://example.com/a.jpg")
    assert is_http_url("http://127.0.0.1:8000/a.jpg")
    for url in ("ftp://example.com/a.jpg", "example.com/a.jpg", "/a.jpg", "https:///a.jpg"):
        assert not is_http_url(url), url
