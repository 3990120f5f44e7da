"""How the API presents a request: its figures (savings, pace, time left), its summary, its
images and its webhook's state. A request's rows are built in memory; the webhook's history is
read from a real SQLite database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from imgcrunch import repository
from imgcrunch.api import presenting
from imgcrunch.db import SessionFactory
from imgcrunch.imaging.variants import parse as parse_variants
from imgcrunch.imaging.variants import to_json
from imgcrunch.models import DeliveryStatus, Request, RequestStatus
from imgcrunch.public_urls import PublicUrls
from tests.records import add_request, finish_with_event

URLS = PublicUrls("https://crunch.example.com", images="https://cdn.example.com")
T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
REQUEST = uuid.UUID("5c0e5c0e-0000-4000-8000-000000000002")


def request(**changes: Any) -> Request:
    fields: dict[str, Any] = {
        "id": REQUEST,
        "status": RequestStatus.PROCESSING,
        "webhook_url": None,
        "quality": 50,
        "effort": "balanced",
        "total_images": 100,
        "done_images": 30,
        "failed_images": 10,
        "kept_images": 5,
        "reused_images": 12,
        "bytes_in": 4_000_000,
        "bytes_out": 1_000_000,
        "input_key": "csv/input.csv",
        "output_key": None,
        "created_at": T0 - timedelta(seconds=30),
        "started_at": T0 - timedelta(seconds=20),
        "completed_at": None,
    }
    return Request(**(fields | changes))


def test_the_pace_and_the_time_left_come_from_the_images_finished_since_work_began() -> None:
    shown = presenting.figures(request(), now=T0)
    # 40 finished (done or failed) in 20 s: 2 a second, so 60 left take 30 s.
    assert shown == {
        "bytes_in": 4_000_000,
        "bytes_out": 1_000_000,
        "savings_percent": 75.0,
        "images_per_second": 2.0,
        "eta_seconds": 30.0,
    }


def test_a_finished_request_has_a_pace_up_to_its_end_and_no_time_left() -> None:
    finished = request(
        status=RequestStatus.COMPLETED_WITH_ERRORS,
        done_images=90,
        completed_at=T0 - timedelta(seconds=10),
    )
    shown = presenting.figures(finished, now=T0 + timedelta(hours=1))
    assert (shown["images_per_second"], shown["eta_seconds"]) == (10.0, None)


def test_a_pace_too_slow_to_show_still_gives_the_time_left() -> None:
    # 40 finished in 10 days: 0.00005 a second, shown as 0.0, and no division by it.
    slow = request(started_at=T0 - timedelta(days=10))
    shown = presenting.figures(slow, now=T0)
    assert shown["images_per_second"] == 0.0
    assert shown["eta_seconds"] == 15 * 24 * 3600  # 60 left at the same pace


def test_nothing_done_or_not_started_shows_no_figures_it_cannot_know() -> None:
    queued = request(status=RequestStatus.QUEUED, done_images=0, failed_images=0, started_at=None)
    shown = presenting.figures(queued, now=T0)
    assert (shown["images_per_second"], shown["eta_seconds"]) == (None, None)
    nothing_in = presenting.figures(request(bytes_in=0, bytes_out=0), now=T0)
    assert nothing_in["savings_percent"] is None


def test_a_summary_links_status_and_output_only_once_there_is_one() -> None:
    working = presenting.summary(request(), URLS, [])
    assert working.status_url == f"https://crunch.example.com/status/{REQUEST}"
    assert working.output_csv_url is None
    assert working.progress.model_dump() == {
        "total": 100,
        "done": 30,
        "failed": 10,
        "kept_original": 5,
        "reused": 12,
        "percent": 40.0,
        "compliant": None,
        "non_compliant": None,
    }
    done = presenting.summary(request(status="completed", output_key="csv/o.csv"), URLS, [])
    assert done.output_csv_url == f"https://crunch.example.com/download/{REQUEST}"


def image_row(**changes: Any) -> repository.ImageRow:
    fields: dict[str, Any] = {
        "row_number": "7",
        "product_name": "Mug",
        "source_url": "https://shop.example.com/mug.jpg",
        "status": "done",
        "output_key": f"images/{REQUEST}/{'cd' * 32}.jpg",
        "bytes_in": 200_000,
        "bytes_out": 60_000,
        "width": 1600,
        "height": 1200,
        "kept_original": False,
        "error_code": None,
        "error_message": None,
        "variants": None,
        "reuse": None,
        "quality": 50,
        "findings": None,
    }
    return repository.ImageRow(**(fields | changes))


def test_a_request_without_variants_shows_the_default_with_its_own_figures() -> None:
    (default,) = presenting.variant_summaries(request(), [])
    assert (default.name, default.format, default.fit) == ("output", "jpeg", "inside")
    assert (default.width, default.height, default.quality, default.effort) == (
        None,
        None,
        50,
        "balanced",
    )
    assert default.column == "Output Image Urls"
    assert (default.bytes_out, default.kept_original) == (1_000_000, 5)


def test_each_variant_shows_its_column_settings_and_own_totals() -> None:
    made = parse_variants("zoom=2000:jpeg, thumb=200x200:pad:webp:q70:max", max_pixels=10**8)
    totals = [
        repository.VariantTotals(position=0, bytes_out=900_000, kept_images=3),
        repository.VariantTotals(position=1, bytes_out=40_000, kept_images=0),
    ]
    zoom, thumb = presenting.variant_summaries(request(variants=to_json(made)), totals)
    assert (zoom.column, zoom.width, zoom.height, zoom.bytes_out) == (
        "Output Image Urls",
        2000,
        2000,
        900_000,
    )
    assert (thumb.column, thumb.spec) == ("Thumb Image Urls", "thumb=200x200:pad:webp:q70:max")
    assert (thumb.quality, thumb.effort, thumb.bytes_out) == (70, "max", 40_000)


def test_an_image_lists_every_variant_made_of_it_with_its_url() -> None:
    thumb = {"key": f"images/{REQUEST}/{'ab' * 32}.webp", "bytes": 4_000, "width": 200,
             "height": 200, "kept": False}  # fmt: skip
    shown = presenting.image_info(image_row(variants=[thumb]), URLS, ["zoom", "thumb"])
    assert [(v.name, v.width, v.height, v.bytes) for v in shown.variants] == [
        ("zoom", 1600, 1200, 60_000),
        ("thumb", 200, 200, 4_000),
    ]
    assert shown.variants[1].url == f"https://cdn.example.com/{thumb['key']}"
    failed = image_row(status="failed", output_key=None, error_code="http_error")
    assert presenting.image_info(failed, URLS, ["zoom", "thumb"]).variants == []


def test_an_image_done_links_its_output_where_images_are_served() -> None:
    shown = presenting.image_info(image_row(), URLS)
    assert shown.output_url == f"https://cdn.example.com/images/{REQUEST}/{'cd' * 32}.jpg"
    assert (shown.row, shown.product_name, shown.status) == ("7", "Mug", "done")
    assert (shown.width, shown.height, shown.bytes_out) == (1600, 1200, 60_000)


def test_a_failed_image_has_no_output_and_says_why() -> None:
    failed = image_row(
        status="failed", output_key=None, error_code="http_error", error_message="HTTP 404"
    )
    assert presenting.image_info(failed, URLS).output_url is None
    error = presenting.image_error(failed)
    assert (error.row, error.url, error.code, error.message) == (
        "7",
        "https://shop.example.com/mug.jpg",
        "http_error",
        "HTTP 404",
    )
    kept = presenting.kept_original(image_row(kept_original=True))
    assert (kept.row, kept.product_name, kept.url) == ("7", "Mug", failed.source_url)


async def with_webhook(sessions: SessionFactory) -> Request:
    request_id = await add_request(sessions, webhook_url="https://hooks.example.com/imgcrunch")
    async with sessions() as session:
        found = await repository.get_request(session, request_id)
    assert found is not None
    return found


async def attempt(
    sessions: SessionFactory,
    status: DeliveryStatus,
    code: int | None,
    error: str | None,
    at: datetime,
) -> None:
    async with sessions.begin() as session:
        [delivery] = await repository.lease_due_deliveries(
            session, now=at + timedelta(days=1), lease_until=at + timedelta(days=1, seconds=70)
        )
        await repository.record_delivery_attempt(
            session,
            delivery.id,
            status=status,
            response_status=code,
            error=error,
            now=at,
            next_attempt_at=at + timedelta(seconds=300),
        )


@pytest.mark.anyio
async def test_a_webhook_waits_then_fails_with_its_history_then_is_delivered(
    sqlite_sessions: SessionFactory,
) -> None:
    sessions = sqlite_sessions
    found = await with_webhook(sessions)
    async with sessions() as session:
        waiting = await presenting.webhook_state(session, found)
    assert (waiting.state, waiting.event_id, waiting.attempts, waiting.history) == (
        "waiting",
        None,
        0,
        [],
    )

    assert await finish_with_event(sessions, found.id, event_id="msg_presenting", now=T0)
    async with sessions() as session:
        due = await presenting.webhook_state(session, found)
    assert (due.state, due.event_id, due.attempts) == ("pending", "msg_presenting", 0)

    await attempt(sessions, DeliveryStatus.PENDING, 503, "HTTP 503 Service Unavailable", T0)
    async with sessions() as session:
        failing = await presenting.webhook_state(session, found)
    assert (failing.state, failing.attempts, failing.last_error) == (
        "failing",
        1,
        "HTTP 503 Service Unavailable",
    )
    assert failing.next_attempt_at == T0 + timedelta(seconds=300)
    assert [(h.attempt, h.response_status) for h in failing.history] == [(1, 503)]

    later = T0 + timedelta(minutes=5)
    await attempt(sessions, DeliveryStatus.DELIVERED, 204, None, later)
    async with sessions() as session:
        delivered = await presenting.webhook_state(session, found)
    assert (delivered.state, delivered.attempts, delivered.response_status) == ("delivered", 2, 204)
    assert delivered.next_attempt_at is None  # nothing more is to come
    assert [(h.attempt, h.response_status, h.error) for h in delivered.history] == [
        (1, 503, "HTTP 503 Service Unavailable"),
        (2, 204, None),
    ]


def test_with_a_profile_the_progress_counts_the_images_that_comply_and_those_that_do_not() -> None:
    shown = presenting.summary(request(profile="amazon", noncompliant_images=4), URLS, [])
    assert shown.profile == "amazon"
    assert (shown.progress.compliant, shown.progress.non_compliant) == (26, 4)
    plain = presenting.summary(request(), URLS, [])
    assert (plain.profile, plain.progress.compliant, plain.progress.non_compliant) == (
        None,
        None,
        None,
    )


def test_an_image_lists_what_its_profile_found_and_the_quality_it_was_made_at() -> None:
    finding = {"code": "too_small_for_zoom", "message": "611x700: Amazon asks 1000 px"}
    shown = presenting.image_info(image_row(findings=[finding], quality=41), URLS)
    assert [f.model_dump() for f in shown.findings] == [finding]
    assert shown.variants[0].quality == 41
    assert presenting.image_info(image_row(), URLS).findings == []
