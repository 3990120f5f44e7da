"""Re-runs (issue 24): a catalog uploaded again costs only what changed at its origin, and an
unchanged image keeps its URL. Through the real service, against origins of each kind."""

from __future__ import annotations

import csv
import io
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import pyvips

from tests import servers
from tests.imaging import PHOTOS
from tests.outputs import image_key_of, scope_of
from tests.plugins.catalog_origin import CatalogOrigin, CatalogOriginFactory, Kind
from tests.plugins.services import Service, ServiceFactory, scrape
from tests.plugins.stores import Bucket
from tests.products import products_csv
from tests.scale_out import on_bucket

IMAGES = 6
ALICE, BOB = "alice-key-" + "a" * 30, "bob-key-" + "b" * 30


def photo(n: int, *, flipped: bool = False) -> bytes:
    """The n-th of `IMAGES` distinct photos; `flipped`: another picture for the same name."""
    image = pyvips.Image.new_from_file(str(PHOTOS[n % len(PHOTOS)]))
    if (n >= len(PHOTOS)) != flipped:
        image = image.fliphor()
    return bytes(image.jpegsave_buffer(Q=90))


def feed(origin: CatalogOrigin) -> list[str]:
    return [origin.put(f"p{n}.jpg", photo(n)) for n in range(IMAGES)]


def run(service: Service, urls: list[str], **form: str) -> tuple[str, dict[str, Any]]:
    response = service.upload(products_csv(urls), **form)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    status = service.wait_until_finished(request_id, timeout=90)
    assert status["status"] == "completed", status
    return request_id, status


def run_together(service: Service, urls: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Two requests of the same catalog at the same time."""
    results: list[tuple[str, dict[str, Any]]] = []
    threads = [threading.Thread(target=lambda: results.append(run(service, urls))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    return results


def listing(service: Service, request_id: str, key: str | None = None) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with service.client() as client:
        response = client.get(f"/requests/{request_id}/images?limit=100", headers=headers)
    assert response.status_code == 200, response.text
    images: list[dict[str, Any]] = response.json()["images"]
    return images


def output_csv(service: Service, request_id: str) -> list[dict[str, str]]:
    text = httpx.get(f"{service.base_url}/download/{request_id}").text
    return list(csv.DictReader(io.StringIO(text)))


def encodes(service: Service) -> float:
    """Images this service's codec has compressed so far."""
    return scrape(f"{service.base_url}/metrics")[("imgcrunch_codec_seconds_count", ())]


@pytest.mark.parametrize("kind", ["both", "last_modified", "none"])
def test_a_rerun_reuses_what_did_not_change_and_remakes_what_did(
    make_service: ServiceFactory, catalog_origin: CatalogOriginFactory, kind: Kind
) -> None:
    service = make_service()
    origin = catalog_origin(kind)
    urls = feed(origin)

    first, status = run(service, urls)
    assert status["progress"]["reused"] == 0
    assert [image["reuse"] for image in listing(service, first)] == ["not_cached"] * IMAGES
    first_urls = [image["output_url"] for image in listing(service, first)]
    first_bytes = origin.body_bytes
    made = encodes(service)
    assert made == IMAGES

    # Unchanged: every output reused, at the same URL, with nothing decoded or encoded.
    origin.reset_counts()
    second, status = run(service, urls)
    assert status["progress"]["reused"] == IMAGES
    assert status["progress"]["done"] == IMAGES
    images = listing(service, second)
    assert [image["reuse"] for image in images] == ["reused"] * IMAGES
    assert [image["output_url"] for image in images] == first_urls
    assert encodes(service) == made
    if kind == "none":  # no validators: the bytes come again, and match
        assert (origin.answers[200], origin.conditional) == (IMAGES, 0)
        assert origin.body_bytes == first_bytes
    else:  # asked conditionally, answered 304: not a byte of the photos again
        assert (origin.answers[304], origin.conditional) == (IMAGES, IMAGES)
        assert origin.body_bytes == 0
    for url in first_urls:
        assert httpx.get(url).status_code == 200
    assert all(row["Changed Images"] == "" for row in output_csv(service, second))

    # One changed at the origin: it alone is made again, at a new URL.
    origin.put("p2.jpg", photo(2, flipped=True))
    third, status = run(service, urls)
    assert status["progress"]["reused"] == IMAGES - 1
    images = listing(service, third)
    assert [image["reuse"] for image in images] == [
        "changed" if n == 2 else "reused" for n in range(IMAGES)
    ]
    third_urls = [image["output_url"] for image in images]
    assert [a == b for a, b in zip(first_urls, third_urls, strict=True)] == [
        n != 2 for n in range(IMAGES)
    ]
    assert encodes(service) == made + 1
    changed = httpx.get(third_urls[2])
    assert changed.status_code == 200
    assert pyvips.Image.new_from_buffer(changed.content, "").width > 0
    rows = output_csv(service, third)
    assert [row["Changed Images"] for row in rows] == [urls[2], ""]


def test_refresh_makes_every_image_again(
    make_service: ServiceFactory, catalog_origin: CatalogOriginFactory
) -> None:
    service = make_service()
    origin = catalog_origin("both")
    urls = feed(origin)
    first, _ = run(service, urls)
    origin.reset_counts()
    second, status = run(service, urls, refresh="true")
    assert status["progress"]["reused"] == 0
    images = listing(service, second)
    assert [image["reuse"] for image in images] == ["refreshed"] * IMAGES
    assert (origin.conditional, origin.answers[200]) == (0, IMAGES)  # plain fetches
    assert encodes(service) == 2 * IMAGES
    # The same bytes made again are the same files: the URLs stay.
    assert [i["output_url"] for i in images] == [i["output_url"] for i in listing(service, first)]
    # And the cache is up to date again: the next run reuses.
    _, status = run(service, urls)
    assert status["progress"]["reused"] == IMAGES


def test_other_options_are_another_cache_entry(
    make_service: ServiceFactory, catalog_origin: CatalogOriginFactory
) -> None:
    service = make_service()
    urls = feed(catalog_origin("both"))
    run(service, urls)
    other, status = run(service, urls, quality="70")
    assert status["progress"]["reused"] == 0
    assert {image["reuse"] for image in listing(service, other)} == {"not_cached"}
    _, status = run(service, urls, quality="70")
    assert status["progress"]["reused"] == IMAGES


def test_a_profiles_rerun_reuses_its_images_with_their_findings(
    make_service: ServiceFactory, catalog_origin: CatalogOriginFactory
) -> None:
    service = make_service()
    urls = feed(catalog_origin("both"))  # photos of scenes: their backgrounds are not white
    plain, _ = run(service, urls)
    first, status = run(service, urls, profile="amazon")
    assert status["progress"]["reused"] == 0  # a profile is another cache entry
    assert status["progress"]["non_compliant"] == IMAGES
    findings = [image["findings"] for image in listing(service, first)]
    assert all(any(f["code"] == "background_not_white" for f in found) for found in findings)
    second, status = run(service, urls, profile="amazon")
    assert status["progress"]["reused"] == IMAGES
    assert status["progress"]["non_compliant"] == IMAGES
    assert [image["findings"] for image in listing(service, second)] == findings
    rows = output_csv(service, second)
    assert all(row["Compliance"].startswith("not compliant: ") for row in rows)
    assert "Compliance" not in output_csv(service, plain)[0]


def test_one_owners_cache_never_serves_another(
    make_service: ServiceFactory, catalog_origin: CatalogOriginFactory
) -> None:
    service = make_service(api_keys=f"alice:{ALICE},bob:{BOB}")
    origin = catalog_origin("both")
    urls = feed(origin)
    csv_text = products_csv(urls)

    def upload(key: str) -> str:
        with service.client() as client:
            response = client.post(
                "/upload",
                files={"file": ("products.csv", csv_text.encode(), "text/csv")},
                headers={"Authorization": f"Bearer {key}"},
            )
        assert response.status_code == 202, response.text
        request_id: str = response.json()["request_id"]
        service.wait_until_finished(request_id, key=key, timeout=90)
        return request_id

    alice = listing(service, upload(ALICE), ALICE)
    origin.reset_counts()
    bob = listing(service, upload(BOB), BOB)
    assert {image["reuse"] for image in bob} == {"not_cached"}
    assert origin.conditional == 0  # nothing of Alice's validators was sent for Bob
    alice_scope = {scope_of(image["output_url"]) for image in alice}
    bob_scope = {scope_of(image["output_url"]) for image in bob}
    assert len(alice_scope) == len(bob_scope) == 1
    assert alice_scope != bob_scope  # the same pictures, under each owner's own prefix
    again = listing(service, upload(ALICE), ALICE)
    assert {image["reuse"] for image in again} == {"reused"}


def test_deleting_a_request_keeps_the_files_a_later_one_shares(
    make_service: ServiceFactory, catalog_origin: CatalogOriginFactory
) -> None:
    service = make_service()
    origin = catalog_origin("both")
    urls = feed(origin)
    first, _ = run(service, urls)
    origin.put("p0.jpg", photo(0, flipped=True))
    second, _ = run(service, urls)
    first_urls = [image["output_url"] for image in listing(service, first)]
    second_urls = [image["output_url"] for image in listing(service, second)]
    gone = first_urls[0]  # only the first request has it: p0 changed since
    assert gone not in second_urls

    assert httpx.delete(f"{service.base_url}/requests/{first}").status_code == 204
    assert httpx.get(gone).status_code == 404
    assert not (service.data_dir / image_key_of(gone, service.base_url)).exists()
    for url in second_urls:
        assert httpx.get(url).status_code == 200

    # The cache still serves the second request's outputs to a third.
    third, status = run(service, urls)
    assert status["progress"]["reused"] == IMAGES
    assert [i["output_url"] for i in listing(service, third)] == second_urls

    for request_id in (second, third):
        assert httpx.delete(f"{service.base_url}/requests/{request_id}").status_code == 204
    assert not list((service.data_dir / "images").rglob("*.jpg"))
    # With its outputs gone, the entries went too: the next run makes every image again.
    _, status = run(service, urls)
    assert status["progress"]["reused"] == 0


def test_concurrent_requests_sharing_images_each_do_every_image_once(
    make_service: ServiceFactory, catalog_origin: CatalogOriginFactory
) -> None:
    service = make_service()
    urls = feed(catalog_origin("both"))
    results = run_together(service, urls)
    for request_id, status in results:
        assert status["progress"]["done"] == IMAGES
        images = listing(service, request_id)
        assert all(image["status"] == "done" for image in images)
        for image in images:
            assert httpx.get(image["output_url"]).status_code == 200
    one, two = ([i["output_url"] for i in listing(service, r)] for r, _ in results)
    assert one == two  # the same pictures: the same files, stored once


@pytest.mark.slow
def test_scale_out_on_a_bucket_reuses_shares_and_deletes_as_embedded_does(
    make_service: ServiceFactory,
    catalog_origin: CatalogOriginFactory,
    bucket: Bucket,
    postgres: servers.Postgres,
    redis_server: servers.Redis,
    tmp_path: Path,
) -> None:
    """PostgreSQL's row locks and upserts, Celery workers with no shared folder, S3."""
    origin = catalog_origin("both")
    urls = feed(origin)
    with on_bucket(make_service, tmp_path, bucket, postgres, redis_server) as deployment:
        api = deployment.api
        # Two at once, sharing every image: each does each image once, one file each.
        results = run_together(api, urls)
        assert sorted(status["progress"]["done"] for _, status in results) == [IMAGES, IMAGES]
        first, _ = results[0]
        first_urls = [image["output_url"] for image in listing(api, first)]
        images = {key for key in bucket.stored() if key.startswith("images/")}
        assert images == {image_key_of(url, api.base_url) for url in first_urls}

        origin.reset_counts()
        origin.put("p4.jpg", photo(4, flipped=True))
        again, status = run(api, urls)
        assert status["progress"]["reused"] == IMAGES - 1
        assert origin.answers[304] == IMAGES - 1
        again_urls = [image["output_url"] for image in listing(api, again)]
        assert [a == b for a, b in zip(first_urls, again_urls, strict=True)] == [
            n != 4 for n in range(IMAGES)
        ]
        rows = deployment.query(
            "SELECT count(*) FROM images WHERE request_id = $1 AND reuse = 'reused'",
            uuid.UUID(again),
        )
        assert rows == [(IMAGES - 1,)]

        for request_id, _ in results:
            assert httpx.delete(f"{api.base_url}/requests/{request_id}").status_code == 204
        left = {key for key in bucket.stored() if key.startswith("images/")}
        assert left == {image_key_of(url, api.base_url) for url in again_urls}
        for url in again_urls:
            assert httpx.get(url).status_code == 200
