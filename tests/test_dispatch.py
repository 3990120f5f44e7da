"""The in-process dispatcher, through a real service: how requests share the workers."""

from __future__ import annotations

import time

from tests.conftest import ImageServer, ServiceFactory


def test_a_small_request_is_not_starved_by_a_huge_one_before_it(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    service = make_service(FETCH_CONCURRENCY="2", BATCH_SIZE="2")
    image_server.delay = 0.05
    try:
        big = image_server.photo_urls(80, tag="huge-")
        rows = "".join(f"{n},P{n},{url}\n" for n, url in enumerate(big, 1))
        huge = service.upload("S. No,Product Name,Input Image Urls\n" + rows).json()["request_id"]
        with service.client() as client:
            deadline = time.monotonic() + 30
            while client.get(f"/status/{huge}").json()["progress"]["done"] < 4:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            small_urls = ",".join(image_server.photo_urls(2, tag="small-"))
            small = service.upload(
                f'S. No,Product Name,Input Image Urls\n1,Small,"{small_urls}"\n'
            ).json()["request_id"]
            assert service.wait_until_finished(small)["status"] == "completed"
            huge_then = client.get(f"/status/{huge}").json()
    finally:
        image_server.delay = 0.0
    # Its batches went in between the huge one's, not after all 40 of them.
    assert huge_then["status"] == "processing"
    assert huge_then["progress"]["done"] < 40
    assert service.wait_until_finished(huge, timeout=120)["status"] == "completed"
