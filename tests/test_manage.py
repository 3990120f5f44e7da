"""Managing requests through the HTTP API: listing them, a page at a time, and deleting them."""

from __future__ import annotations

import csv
import io
import sqlite3
import uuid

import httpx

from tests.outputs import image_key_of
from tests.plugins.origin import ImageServer, OriginDelay
from tests.plugins.receivers import Receiver
from tests.plugins.services import Service, ServiceFactory


def finished(service: Service, image_server: ImageServer, tag: str, images: int = 2) -> str:
    urls = ",".join(image_server.photo_urls(images, tag=tag))
    response = service.upload(f'S. No,Product Name,Input Image Urls\n1,A,"{urls}"\n')
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    assert service.wait_until_finished(request_id)["status"] == "completed"
    return request_id


def test_requests_are_listed_newest_first_a_page_at_a_time(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    service = make_service()
    made = [finished(service, image_server, f"list-{n}-") for n in range(3)]
    with service.client() as client:
        first = client.get("/requests", params={"limit": 2}).json()
        assert [r["request_id"] for r in first["requests"]] == made[:0:-1]  # newest first
        assert first["next_url"] == f"{service.base_url}/requests?limit=2&offset=2"
        second = client.get(first["next_url"]).json()
        assert [r["request_id"] for r in second["requests"]] == made[:1]
        assert second["next_url"] is None
        assert client.get("/requests", params={"status": "failed"}).json()["requests"] == []
        bad = client.get("/requests", params={"status": "lost", "limit": 0})
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["error"]["details"]} == {"status", "limit"}

    summary = first["requests"][0]
    assert summary["status"] == "completed"
    assert summary["progress"] == {
        "total": 2,
        "done": 2,
        "failed": 0,
        "kept_original": 0,
        "reused": 0,
        "percent": 100.0,
        "compliant": None,
        "non_compliant": None,
    }
    assert summary["status_url"] == f"{service.base_url}/status/{made[2]}"
    assert summary["output_csv_url"] == f"{service.base_url}/download/{made[2]}"
    assert 0 < summary["bytes_out"] < summary["bytes_in"]
    assert 0 < summary["savings_percent"] < 100
    assert summary["images_per_second"] > 0
    assert summary["eta_seconds"] is None  # finished


def test_status_shows_pace_and_savings_while_processing(
    make_service: ServiceFactory, image_server: ImageServer, origin_delay: OriginDelay
) -> None:
    service = make_service(FETCH_CONCURRENCY="1", BATCH_SIZE="1")
    origin_delay(0.2)
    urls = ",".join(image_server.photo_urls(8, tag="pace-"))
    response = service.upload(f'S. No,Product Name,Input Image Urls\n1,A,"{urls}"\n')
    request_id = response.json()["request_id"]
    status = service.wait_until_done(request_id, 2)
    assert status["status"] == "processing"
    assert status["images_per_second"] > 0
    assert status["eta_seconds"] > 0
    assert 0 < status["savings_percent"] < 100


def test_a_finished_request_is_deleted_with_its_files(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    service = make_service()
    request_id = finished(service, image_server, "delete-")
    with service.client() as client:
        csv_text = client.get(f"/download/{request_id}").text
        image_url = csv_text.splitlines()[1].split('"')[3].split(",")[0]
        assert httpx.get(image_url).status_code == 200
        assert client.delete(f"/requests/{request_id}").status_code == 204
        for path in (f"/status/{request_id}", f"/download/{request_id}"):
            assert client.get(path).status_code == 404
        again = client.delete(f"/requests/{request_id}")
        assert (again.status_code, again.json()["error"]["code"]) == (404, "not_found")
        listed = client.get("/requests").json()["requests"]
        assert all(r["request_id"] != request_id for r in listed)
    assert httpx.get(image_url).status_code == 404  # no other request shared it
    assert not (service.data_dir / image_key_of(image_url, service.base_url)).exists()
    assert not (service.data_dir / "csv" / request_id).exists()


def test_an_active_request_cannot_be_deleted(
    make_service: ServiceFactory, image_server: ImageServer, origin_delay: OriginDelay
) -> None:
    service = make_service(FETCH_CONCURRENCY="1", BATCH_SIZE="1")
    origin_delay(0.3)
    urls = ",".join(image_server.photo_urls(5, tag="busy-"))
    response = service.upload(f'S. No,Product Name,Input Image Urls\n1,A,"{urls}"\n')
    request_id = response.json()["request_id"]
    with service.client() as client:
        refused = client.delete(f"/requests/{request_id}")
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "still_active")
    assert service.wait_until_finished(request_id)["status"] == "completed"  # untouched


def fetched(image_server: ImageServer, urls: list[str]) -> int:
    """How many times the image server was asked for these URLs."""
    return sum(image_server.hits[httpx.URL(url).raw_path.decode()] for url in urls)


def test_cancel_mid_request_processes_no_image_after_it(
    make_service: ServiceFactory, image_server: ImageServer, origin_delay: OriginDelay
) -> None:
    service = make_service(FETCH_CONCURRENCY="1", BATCH_SIZE="1")
    urls = image_server.photo_urls(12, tag="cancel-")
    origin_delay(0.2)
    rows = "".join(f"{n},P{n},{url}\n" for n, url in enumerate(urls, 1))
    request_id = service.upload("S. No,Product Name,Input Image Urls\n" + rows).json()["request_id"]
    service.wait_until_done(request_id, 2)
    with service.client() as client:
        cancelled = client.post(f"/requests/{request_id}/cancel")
        asked_at_cancel = fetched(image_server, urls)
        # A later request, done from start to finish: the cancelled one has waited longer,
        # so any image of it still to be started would have been claimed before these.
        later = image_server.photo_urls(2, tag="after-cancel-")
        after = service.upload(
            "S. No,Product Name,Input Image Urls\n" + f'1,Q,"{later[0]},{later[1]}"\n'
        ).json()["request_id"]
        assert service.wait_until_finished(after)["status"] == "completed"
        asked_later = fetched(image_server, urls)
        status = client.get(f"/status/{request_id}").json()
        listed = client.get(f"/requests/{request_id}/images").json()["images"]
        again = client.post(f"/requests/{request_id}/cancel")
        output = client.get(f"/download/{request_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    done = cancelled.json()["progress"]["done"]
    assert 2 <= done < 12
    # At most the one download in flight at the cancel (FETCH_CONCURRENCY=1) went on; it was
    # neither compressed nor counted, and nothing was started after it.
    assert asked_later <= asked_at_cancel + 1
    assert fetched(image_server, urls) == asked_later
    assert status["status"] == "cancelled"
    assert status["progress"]["done"] == done
    states = [image["status"] for image in listed]
    assert (states.count("done"), states.count("cancelled")) == (done, 12 - done)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "not_active")
    assert (output.status_code, output.json()["error"]["code"]) == (409, "no_output")


def test_retry_after_a_failing_origin_recovers_with_a_new_csv_and_a_new_event(
    make_service: ServiceFactory, image_server: ImageServer, receiver: Receiver
) -> None:
    # Fails its first three answers: the service's own three tries (FETCH_RETRIES=2) all fail.
    service = make_service(FETCH_RETRY_BACKOFF="0")
    receiver.secret = (service.data_dir / "webhook-secret").read_text().strip()
    flaky = image_server.url("/flaky?fail=3&status=503&key=retry-me")
    good = image_server.photo_urls(1, tag="retry-")[0]
    response = service.upload(
        f'S. No,Product Name,Input Image Urls\n1,A,"{good},{flaky}"\n', webhook_url=receiver.url
    )
    request_id = response.json()["request_id"]
    first = service.wait_until_finished(request_id)
    assert first["status"] == "completed_with_errors"
    assert [e["url"] for e in first["errors"]] == [flaky]
    [first_event] = receiver.wait_for_deliveries(1)
    with service.client() as client:
        first_csv = client.get(f"/download/{request_id}").text
        retried = client.post(f"/requests/{request_id}/retry")
        assert retried.status_code == 202
        assert retried.json()["status"] == "processing"
        assert retried.json()["progress"] == {
            "total": 2,
            "done": 1,
            "failed": 0,
            "kept_original": 0,
            "reused": 0,
            "percent": 50.0,
            "compliant": None,
            "non_compliant": None,
        }
        second = service.wait_until_finished(request_id)
        assert second["status"] == "completed"
        assert second["progress"] == {
            "total": 2,
            "done": 2,
            "failed": 0,
            "kept_original": 0,
            "reused": 0,
            "percent": 100.0,
            "compliant": None,
            "non_compliant": None,
        }
        second_csv = client.get(f"/download/{request_id}").text
        nothing = client.post(f"/requests/{request_id}/retry")
    assert image_server.hits["/flaky?fail=3&status=503&key=retry-me"] == 4
    assert (nothing.status_code, nothing.json()["error"]["code"]) == (409, "nothing_to_retry")

    # A new output CSV: the image that failed has its URL now, and no error.
    [before], [after] = (
        list(csv.DictReader(io.StringIO(text))) for text in (first_csv, second_csv)
    )
    assert before["Output Image Urls"].split(",")[1] == ""
    assert "503" in before["Errors"]
    outputs = after["Output Image Urls"].split(",")
    assert outputs[0] == before["Output Image Urls"].split(",")[0]  # done once, kept
    assert all(image_key_of(url, service.base_url) for url in outputs)
    assert after["Errors"] == ""

    # A new event, with an id of its own, for the request's new final status.
    _, second_event = receiver.wait_for_deliveries(2)
    assert first_event.verified
    assert second_event.verified
    assert first_event.id != second_event.id
    assert [d.event["data"]["status"] for d in (first_event, second_event)] == [
        "completed_with_errors",
        "completed",
    ]
    assert second_event.event["data"]["progress"]["done"] == 2
    assert service.status(request_id)["webhook"]["event_id"] == second_event.id


def test_a_requests_images_are_listed_in_input_order(
    service: Service, image_server: ImageServer
) -> None:
    a, b = image_server.photo_urls(2, tag="images-")
    missing = image_server.url("/missing.jpg")
    response = service.upload(
        f'S. No,Product Name,Input Image Urls\n7,Mug,"{a},{missing}"\n8,Bowl,{b}\n'
    )
    request_id = response.json()["request_id"]
    service.wait_until_finished(request_id)
    with service.client() as client:
        first = client.get(f"/requests/{request_id}/images", params={"limit": 2}).json()
        rest = client.get(first["next_url"]).json()
    images = first["images"] + rest["images"]
    assert [(i["row"], i["product_name"], i["source_url"]) for i in images] == [
        ("7", "Mug", a),
        ("7", "Mug", missing),
        ("8", "Bowl", b),
    ]
    assert rest["next_url"] is None
    assert [i["status"] for i in images] == ["done", "failed", "done"]
    assert images[1]["error_code"] == "http_error"
    assert images[1]["output_url"] is None
    done = images[0]
    image_key_of(done["output_url"], service.base_url)
    assert httpx.get(done["output_url"]).status_code == 200
    assert 0 < done["bytes_out"] < done["bytes_in"]
    assert (done["width"], done["height"]) > (0, 0)


def test_a_request_from_before_reruns_keeps_its_urls_and_deleting_it_removes_its_files(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    service = make_service()
    request_id = finished(service, image_server, "legacy-")
    service.stop()
    # As migration 0008 left a request made before it: no scope, its images stored under its
    # own id (images/<request id>/<sha256>.jpg).
    hex_id = uuid.UUID(request_id).hex
    with sqlite3.connect(service.data_dir / "imgcrunch.db") as db:
        keys = [key for (key,) in db.execute("SELECT output_key FROM images")]
        for key in keys:
            old = service.data_dir / "images" / request_id / key.rsplit("/", 1)[1]
            old.parent.mkdir(parents=True, exist_ok=True)
            (service.data_dir / key).rename(old)
        db.execute("UPDATE requests SET scope = NULL WHERE id = ?", (hex_id,))
        db.execute(
            "UPDATE images SET output_key = 'images/' || ? || '/' || "
            "substr(output_key, length(output_key) - 67) WHERE request_id = ?",
            (request_id, hex_id),
        )
    service.start()
    with service.client() as client:
        images = client.get(f"/requests/{request_id}/images").json()["images"]
        urls = [image["output_url"] for image in images]
        assert len(urls) == 2
        for url in urls:
            assert url.startswith(f"{service.base_url}/images/{request_id}/")
            assert httpx.get(url).status_code == 200
        assert client.delete(f"/requests/{request_id}").status_code == 204
    for url in urls:
        assert httpx.get(url).status_code == 404
    assert not (service.data_dir / "images" / request_id).exists()
