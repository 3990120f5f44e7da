"""Downloads against a real local HTTP server: each failure named by its code."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from imgcrunch.address_guard import AddressGuard
from imgcrunch.config import Settings
from imgcrunch.fetcher import Fetched, Fetcher, FetchLimits, Validators, is_http_url
from imgcrunch.http_errors import FetchError, retry_after_seconds
from tests.imaging import PHOTOS
from tests.plugins.catalog_origin import CatalogOriginFactory
from tests.plugins.origin import HOSTILE_FOR, ImageServer
from tests.service_process import free_port

pytestmark = pytest.mark.anyio

OPEN = AddressGuard(allow_private_networks=True)
GUARDED = FetchLimits.from_settings(Settings(), guard=AddressGuard())
LOCAL = replace(GUARDED, guard=OPEN, read_timeout=1, total_timeout=3)


async def fetch(url: str, limits: FetchLimits = LOCAL) -> bytes:
    fetcher = Fetcher(limits)
    try:
        return await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


async def fetch_if_changed(url: str, validators: Validators) -> Fetched:
    fetcher = Fetcher(LOCAL)
    try:
        return await fetcher.fetch_if_changed(url, validators)
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


@pytest.mark.slow
async def test_a_stalled_body_times_out(image_server: ImageServer) -> None:
    error = await failure(image_server.url("/stall.jpg"))
    assert error.code == "timeout"


async def test_the_size_cap_holds_while_streaming(image_server: ImageServer) -> None:
    limits = replace(LOCAL, max_bytes=1000)
    error = await failure(image_server.url(f"/photos/{PHOTOS[0].name}"), limits)
    assert error.code == "too_large"
    assert "1,000 byte limit" in error.message


async def test_a_closed_port_is_a_connect_error() -> None:
    error = await failure(f"http://127.0.0.1:{free_port()}/a.jpg")
    assert error.code == "connect_error"


async def test_an_unknown_host_is_a_dns_error() -> None:
    error = await failure("http://no-such-host.invalid/a.jpg")
    assert error.code == "dns_error"


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


def test_only_absolute_http_urls_pass() -> None:
    assert is_http_url("https://example.com/a.jpg")
    assert is_http_url("http://127.0.0.1:8000/a.jpg")
    for url in ("ftp://example.com/a.jpg", "example.com/a.jpg", "/a.jpg", "https:///a.jpg"):
        assert not is_http_url(url), url


# --- transient failures ------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_5xx_then_200_origin_is_retried_until_it_answers(image_server: ImageServer) -> None:
    path = "/flaky?fail=2&status=503&key=five-hundred"
    assert await fetch(image_server.url(path)) == PHOTOS[0].read_bytes()
    assert image_server.hits[path] == 3


async def test_retries_are_bounded(image_server: ImageServer) -> None:
    path = "/flaky?fail=9&status=502&key=bounded"
    error = await failure(image_server.url(path), replace(LOCAL, retries=2, retry_backoff=0.01))
    assert (error.code, error.status) == ("http_error", 502)
    assert image_server.hits[path] == 3


async def test_a_permanent_error_is_not_retried(image_server: ImageServer) -> None:
    path = "/flaky?fail=1&status=404&key=permanent"
    error = await failure(image_server.url(path))
    assert (error.code, error.status) == ("http_error", 404)
    assert image_server.hits[path] == 1


@pytest.mark.slow
async def test_retry_after_is_honoured(image_server: ImageServer) -> None:
    path = "/flaky?fail=1&status=429&retry_after=1&key=polite"
    started = time.monotonic()
    assert await fetch(image_server.url(path), replace(LOCAL, retry_backoff=0))
    assert time.monotonic() - started >= 1.0
    assert image_server.hits[path] == 2


async def test_a_retry_after_beyond_the_total_time_gives_up_at_once(
    image_server: ImageServer,
) -> None:
    path = "/flaky?fail=1&status=503&retry_after=3600&key=too-long"
    # Waiting as asked would take an hour: the test would end in TimeoutError, not FetchError.
    async with asyncio.timeout(60):
        error = await failure(image_server.url(path))
    assert (error.status, error.retry_after) == (503, 3600.0)
    assert image_server.hits[path] == 1


def test_retry_after_may_be_a_date() -> None:
    assert retry_after_seconds("120") == 120.0
    soon = retry_after_seconds(format_datetime(datetime.now(UTC) + timedelta(seconds=30), True))
    assert soon is not None
    assert 25 <= soon <= 31
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after_seconds("soon") is None


# --- per-origin slots --------------------------------------------------------------------------


async def test_one_origin_gets_at_most_its_share_of_slots() -> None:
    fetcher = Fetcher(replace(LOCAL, per_host=2))
    holding: dict[str, int] = {"slow": 0, "other": 0}
    most: dict[str, int] = {"slow": 0, "other": 0}
    release = asyncio.Event()

    async def hold(name: str, url: str) -> None:
        async with fetcher.host_slot(url):
            holding[name] += 1
            most[name] = max(most[name], holding[name])
            await release.wait()
            holding[name] -= 1

    async def settle() -> None:
        """Let every task run until it holds a slot or waits for one: no timers are involved."""
        for _ in range(20):
            await asyncio.sleep(0)

    slow = [
        asyncio.create_task(hold("slow", f"http://slow.example:8080/{n}.jpg")) for n in range(5)
    ]
    await settle()
    # Five wait on one origin; another origin (another port counts) is not held up by them.
    other = asyncio.create_task(hold("other", "http://slow.example:8081/a.jpg"))
    await settle()
    assert (holding["slow"], holding["other"]) == (2, 1)
    release.set()
    await asyncio.gather(*slow, other)
    assert most == {"slow": 2, "other": 1}
    async with fetcher.host_slot("http://slow.example:8080/again.jpg"):
        pass  # slots come back once released
    await fetcher.aclose()


# --- hostile origins ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_slowloris_drip_ends_at_the_total_timeout(image_server: ImageServer) -> None:
    # Never silent for a read timeout (1 s): only the total time (3 s) can end it, long before
    # the drip would end by itself (HOSTILE_FOR, 30 s) as a body shorter than it said.
    async with asyncio.timeout(HOSTILE_FOR / 2):
        error = await failure(image_server.url("/drip.jpg"))
    assert (error.code, error.message) == ("timeout", "download took longer than 3 s")


async def test_an_endless_body_stops_at_the_size_cap(image_server: ImageServer) -> None:
    error = await failure(image_server.url("/endless.jpg"), replace(LOCAL, max_bytes=1_000_000))
    assert error.code == "too_large"


async def test_a_body_longer_than_declared_is_never_read_past_its_length(
    image_server: ImageServer,
) -> None:
    photo = f"/photos/{PHOTOS[1].name}"
    fetcher = Fetcher(replace(LOCAL, per_host=1, retries=0))
    try:
        # aiohttp stops at the declared 2,000 bytes; when the junk after them arrives in the
        # same read, it is parsed as the next answer and the whole answer is refused as not HTTP.
        liar = image_server.url("/short-length.jpg")
        outcomes = [await _outcome(fetcher, liar) for _ in range(5)]
        assert set(outcomes) <= {"2000 bytes", "the answer is not valid HTTP (Bad status line)"}
        # Nothing of it reaches the next image from that origin.
        assert await fetcher.fetch(image_server.url(photo)) == PHOTOS[1].read_bytes()
    finally:
        await fetcher.aclose()


async def _outcome(fetcher: Fetcher, url: str) -> str:
    try:
        return f"{len(await fetcher.fetch(url))} bytes"
    except FetchError as error:
        return error.message


async def test_an_answer_that_is_not_http_is_named(image_server: ImageServer) -> None:
    path = "/not-http.jpg?key=named"
    error = await failure(image_server.url(path), replace(LOCAL, retry_backoff=0))
    assert error.code == "connect_error"
    assert error.message.startswith("the answer is not valid HTTP (")
    assert image_server.hits[path] == 3  # retried: a new connection may do better


@pytest.mark.slow
async def test_a_body_shorter_than_declared_is_an_error(image_server: ImageServer) -> None:
    error = await failure(image_server.url("/long-length.jpg"))
    assert error.code == "connect_error"
    assert error.message.startswith("the response broke off")


async def test_validators_ask_whether_it_changed_and_a_304_brings_no_body(
    catalog_origin: CatalogOriginFactory, image_server: ImageServer
) -> None:
    origin = catalog_origin("both")
    url = origin.put("a.jpg", PHOTOS[0].read_bytes())
    first = await fetch_if_changed(url, Validators())
    assert first.data == PHOTOS[0].read_bytes()
    assert first.validators.etag
    assert first.validators.last_modified
    assert origin.conditional == 0

    same = await fetch_if_changed(url, first.validators)
    assert (same.data, same.validators) == (None, first.validators)
    # Through a redirect too: every hop is asked the same.
    redirected = await fetch_if_changed(image_server.url(f"/redirect?to={url}"), first.validators)
    assert redirected.data is None
    assert origin.answers[304] == 2

    origin.put("a.jpg", PHOTOS[1].read_bytes())
    changed = await fetch_if_changed(url, first.validators)
    assert changed.data == PHOTOS[1].read_bytes()
    assert changed.validators.etag != first.validators.etag


async def test_an_origin_with_last_modified_only_is_asked_by_date(
    catalog_origin: CatalogOriginFactory,
) -> None:
    origin = catalog_origin("last_modified")  # Python's http.server
    url = origin.put("a.jpg", PHOTOS[0].read_bytes())
    first = await fetch_if_changed(url, Validators())
    assert first.validators.etag is None
    assert first.validators.last_modified
    assert (await fetch_if_changed(url, first.validators)).data is None
    origin.put("a.jpg", PHOTOS[1].read_bytes())
    assert (await fetch_if_changed(url, first.validators)).data == PHOTOS[1].read_bytes()


async def test_a_304_to_a_plain_request_is_an_http_error(image_server: ImageServer) -> None:
    error = await failure(image_server.url("/flaky?fail=9&status=304&key=plain-304"))
    assert (error.code, error.status) == ("http_error", 304)
