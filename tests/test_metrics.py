"""GET /metrics: the counters move by what a request did."""

from __future__ import annotations

from tests.plugins.origin import ImageServer
from tests.plugins.receivers import Receiver
from tests.plugins.services import ServiceFactory, scrape
from tests.waiting import wait_until


def test_metrics_count_what_a_request_did(
    make_service: ServiceFactory, image_server: ImageServer, receiver: Receiver
) -> None:
    service = make_service()
    before = scrape(f"{service.base_url}/metrics")
    a, b = image_server.photo_urls(2, tag="metrics-")
    missing = image_server.url("/missing.jpg")
    response = service.upload(
        f'S. No,Product Name,Input Image Urls\n1,A,"{a},{b},{missing}"\n',
        webhook_url=receiver.url,
    )
    request_id = response.json()["request_id"]
    status = service.wait_until_finished(request_id)
    # Recorded as delivered: the attempt is counted before it is recorded.
    wait_until(
        "the webhook recorded as delivered",
        lambda: service.status(request_id)["webhook"]["state"] == "delivered",
    )
    after = scrape(f"{service.base_url}/metrics")

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("imgcrunch_images_total", outcome="done", code="") == 2
    assert moved("imgcrunch_images_total", outcome="failed", code="http_error") == 1
    assert moved("imgcrunch_image_bytes_total", direction="in") == status["bytes_in"]
    assert moved("imgcrunch_image_bytes_total", direction="out") == status["bytes_out"]
    assert moved("imgcrunch_fetch_seconds_count") == 3
    assert moved("imgcrunch_codec_seconds_count") == 2
    assert moved("imgcrunch_webhook_attempts_total", outcome="delivered") == 1
    assert after[("imgcrunch_requests", (("status", "completed_with_errors"),))] == 1
    assert after[("imgcrunch_queued_images", ())] == 0
