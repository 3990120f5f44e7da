"""The service on S3 storage for real (SeaweedFS on loopback): images and CSVs in the bucket,
served through the API, by presigned URL or from a public address; scale-out with no shared
folder; the store stopped and started again mid-request; deleting a request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import servers
from tests.outputs import image_key_of
from tests.plugins.origin import ImageServer, OriginDelay
from tests.plugins.services import Service, ServiceFactory
from tests.plugins.stores import Bucket
from tests.products import products_csv
from tests.scale_out import on_bucket
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def upload_and_finish(service: Service, urls: list[str]) -> tuple[str, dict[str, Any]]:
    response = service.upload(products_csv(urls))
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id, service.wait_until_finished(request_id, timeout=120)


def output_urls(service: Service, request_id: str) -> list[str]:
    with service.client() as client:
        images = client.get(f"/requests/{request_id}/images?limit=500").json()["images"]
    return [image["output_url"] for image in images]


def test_embedded_mode_keeps_everything_in_the_bucket_and_serves_it(
    make_service: ServiceFactory, bucket: Bucket, image_server: ImageServer
) -> None:
    service = make_service(**bucket.settings())
    urls = image_server.photo_urls(6, tag="s3-embedded-")
    request_id, status = upload_and_finish(service, urls)
    assert status["status"] == "completed", status
    keys = bucket.stored()
    assert f"csv/{request_id}/input.csv" in keys
    assert f"csv/{request_id}/output.csv" in keys
    outputs = output_urls(service, request_id)
    images = [key for key in keys if key.startswith("images/")]
    assert sorted(images) == sorted({url.split("/", 3)[3] for url in outputs})  # by content
    assert not (service.data_dir / "images").exists()  # nothing in the local folder
    for url in outputs:
        image_key_of(url, service.base_url)
        served = httpx.get(url)
        assert (served.status_code, served.headers["content-type"]) == (200, "image/jpeg")
        assert served.content[:2] == b"\xff\xd8"
    assert httpx.get(f"{service.base_url}/download/{request_id}").status_code == 200
    ready = httpx.get(f"{service.base_url}/readyz").json()
    assert ready["checks"]["storage"] == "ok"


def test_deleting_a_request_removes_its_objects_and_keeps_those_another_shares(
    make_service: ServiceFactory, bucket: Bucket, image_server: ImageServer
) -> None:
    service = make_service(**bucket.settings())
    # Other URLs of the same photos: the same outputs, stored once for the owner.
    shared = image_server.photo_urls(3, tag="s3-shared-")
    doomed, _ = upload_and_finish(service, [*shared[:2], image_server.url("/logo.png")])
    kept, _ = upload_and_finish(service, image_server.photo_urls(3, tag="s3-kept-"))
    before = bucket.stored()
    images = {key for key in before if key.startswith("images/")}
    kept_images = {url.split("/", 3)[3] for url in output_urls(service, kept)}
    doomed_images = {url.split("/", 3)[3] for url in output_urls(service, doomed)}
    assert len(kept_images) == 3
    assert len(kept_images & doomed_images) == 2
    assert len(doomed_images - kept_images) == 1  # the logo
    assert images == kept_images | doomed_images

    assert httpx.delete(f"{service.base_url}/requests/{doomed}").status_code == 204
    after = bucket.stored()
    assert not [key for key in after if doomed in key]  # its CSVs
    assert {key for key in after if key.startswith("images/")} == kept_images
    for url in output_urls(service, kept):
        assert httpx.get(url).status_code == 200

    assert httpx.delete(f"{service.base_url}/requests/{kept}").status_code == 204
    assert bucket.stored() == []


def test_presigned_urls_and_a_public_address_for_the_images(
    make_service: ServiceFactory, bucket: Bucket, image_server: ImageServer
) -> None:
    signed = make_service(**bucket.settings(), s3_presign="true", s3_presign_seconds="120")
    request_id, _ = upload_and_finish(signed, image_server.photo_urls(3, tag="s3-signed-"))
    url = output_urls(signed, request_id)[0]
    redirect = httpx.get(url)
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert "X-Amz-Signature=" in location
    assert "X-Amz-Expires=120" in location
    assert httpx.get(location).content[:2] == b"\xff\xd8"  # no credentials needed

    cdn = "https://cdn.example.com/catalog"
    public = make_service(**bucket.settings(), public_images_url=cdn + "/")
    request_id, _ = upload_and_finish(public, image_server.photo_urls(3, tag="s3-cdn-"))
    url = output_urls(public, request_id)[0]
    image_key_of(url, cdn)  # the bucket's keys, under the CDN
    assert url.removeprefix(f"{cdn}/") in bucket.stored()
    output = httpx.get(f"{public.base_url}/download/{request_id}").text
    assert url in output


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[servers.SeaweedS3]:
    """An S3 server of this test's own, to stop and start again."""
    server = servers.SeaweedS3.start_in(tmp_path)
    server.create_bucket("outage")
    yield server
    server.remove()


def test_the_store_stopped_mid_request_fails_no_image_and_the_request_completes(
    make_service: ServiceFactory,
    own_s3: servers.SeaweedS3,
    image_server: ImageServer,
    monkeypatch: pytest.MonkeyPatch,
    origin_delay: OriginDelay,
) -> None:
    for key, value in own_s3.credentials.items():
        monkeypatch.setenv(key, value)
    service = make_service(
        storage_url="s3://outage/p", s3_endpoint_url=own_s3.endpoint, fetch_concurrency="2"
    )
    urls = image_server.photo_urls(60, tag="s3-outage-")
    origin_delay(0.2)  # some 6 s of downloads: the store stops in the middle of them
    request_id = service.upload(products_csv(urls)).json()["request_id"]
    wait_until("some images done", lambda: progress(service, request_id)["done"] >= 6)
    own_s3.kill()
    wait_until("the status to say why it waits", lambda: waiting(service, request_id))
    ready = httpx.get(f"{service.base_url}/readyz", timeout=60)
    assert ready.status_code == 503
    assert ready.json()["checks"]["storage"].startswith("unwritable: ")
    time.sleep(1)  # the outage
    own_s3.start()
    status = service.wait_until_finished(request_id, timeout=180)
    assert status["status"] == "completed", status
    assert (status["progress"]["done"], status["progress"]["failed"]) == (60, 0)
    outputs = output_urls(service, request_id)
    assert len(outputs) == 60
    for url in set(outputs):  # written once the store was back, each of them
        assert httpx.get(url).status_code == 200, url


def progress(service: Service, request_id: str) -> dict[str, Any]:
    status = service.status(request_id)
    assert status["progress"]["failed"] == 0, status
    answer: dict[str, Any] = status["progress"]
    return answer


def waiting(service: Service, request_id: str) -> bool:
    return str(service.status(request_id).get("waiting") or "").startswith("storage unavailable")


def test_scale_out_needs_no_shared_folder_and_a_killed_worker_loses_nothing(
    make_service: ServiceFactory,
    bucket: Bucket,
    postgres: servers.Postgres,
    redis_server: servers.Redis,
    image_server: ImageServer,
    tmp_path: Path,
    origin_delay: OriginDelay,
) -> None:
    urls = image_server.photo_urls(120, tag="s3-scale-")
    with on_bucket(make_service, tmp_path, bucket, postgres, redis_server) as deployment:
        api = deployment.api
        origin_delay(0.02)
        request_id = api.upload(products_csv(urls)).json()["request_id"]
        wait_until("a quarter done", lambda: progress(api, request_id)["done"] >= 30)
        deployment.workers[0].kill_whole()
        status = api.wait_until_finished(request_id, timeout=180)
    assert status["status"] == "completed", status
    assert (status["progress"]["done"], status["progress"]["failed"]) == (120, 0)
    outputs = output_urls(api, request_id)
    assert len(outputs) == 120
    for url in outputs:
        assert httpx.get(url).status_code == 200, url
    images = [key for key in bucket.stored() if key.startswith("images/")]
    assert sorted(images) == sorted({url.split("/", 3)[3] for url in outputs})  # by content
    for folder in (tmp_path / "worker-0-data", tmp_path / "worker-1-data"):
        assert not (folder / "images").exists()
        assert not (folder / "csv").exists()


def test_scale_out_on_a_bucket_makes_every_variant_with_its_content_type(
    make_service: ServiceFactory,
    bucket: Bucket,
    postgres: servers.Postgres,
    redis_server: servers.Redis,
    image_server: ImageServer,
    tmp_path: Path,
) -> None:
    urls = image_server.photo_urls(3, tag="s3-variants-")
    with on_bucket(make_service, tmp_path, bucket, postgres, redis_server) as deployment:
        api = deployment.api
        variants = "zoom=2000:jpeg, listing=800:avif, thumb=200x200:pad:webp"
        response = api.upload(products_csv(urls), variants=variants)
        assert response.status_code == 202, response.text
        request_id = response.json()["request_id"]
        status = api.wait_until_finished(request_id, timeout=180)
        assert status["status"] == "completed", status
        with api.client() as client:
            images = client.get(f"/requests/{request_id}/images").json()["images"]
            output = client.get(f"/download/{request_id}").text
    assert "Output Image Urls,Listing Image Urls,Thumb Image Urls" in output.splitlines()[0]
    expected = {"zoom": "image/jpeg", "listing": "image/avif", "thumb": "image/webp"}
    sizes = {"zoom": (1600, 1200), "listing": (800, 600), "thumb": (200, 200)}
    stored = bucket.stored()
    for image in images:
        assert [variant["name"] for variant in image["variants"]] == list(expected)
        for variant in image["variants"]:
            key = variant["url"].split("/", 3)[3]
            assert key in stored
            head = bucket.server.head(bucket.name, f"{bucket.prefix}/{key}")
            assert head["ContentType"] == expected[variant["name"]]
            assert (variant["width"], variant["height"]) == sizes[variant["name"]]
            assert variant["url"] in output
    totals = {variant["name"]: variant["bytes_out"] for variant in status["variants"]}
    assert totals["thumb"] < totals["listing"] < totals["zoom"]
