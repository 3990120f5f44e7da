"""The in-process dispatcher, through a real service: how requests share the workers."""

from __future__ import annotations

from tests.plugins.origin import ImageServer, OriginDelay
from tests.plugins.services import ServiceFactory


def test_a_small_request_is_not_starved_by_a_huge_one_before_it(
    make_service: ServiceFactory, image_server: ImageServer, origin_delay: OriginDelay
) -> None:
    service = make_service(FETCH_CONCURRENCY="2", BATCH_SIZE="2")
    origin_delay(0.05)
    big = image_server.photo_urls(80, tag="huge-")
    rows = "".join(f"{n},P{n},{url}\n" for n, url in enumerate(big, 1))
    huge = service.upload("S. No,Product Name,Input Image Urls\n" + rows).json()["request_id"]
    service.wait_until_done(huge, 4)
    with service.client() as client:
        small_urls = ",".join(image_server.photo_urls(2, tag="small-"))
        small = service.upload(
            f'S. No,Product Name,Input Image Urls\n1,Small,"{small_urls}"\n'
        ).json()["request_id"]
        assert service.wait_until_finished(small)["status"] == "completed"
        huge_then = client.get(f"/status/{huge}").json()
    # Its batches went in between the huge one's, not after all 40 of them.
    assert huge_then["status"] == "processing"
    assert huge_then["progress"]["done"] < 40
    assert service.wait_until_finished(huge, timeout=120)["status"] == "completed"
