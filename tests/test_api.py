"""End to end through the real HTTP API of a real `imgcrunch serve` process."""

from __future__ import annotations

import csv
import io
import json
import socket
import sqlite3
import uuid
from typing import Any

import httpx
import pytest
import pyvips

from imgcrunch.api.auth import fingerprint
from imgcrunch.signing import verify
from tests import marketplace_run
from tests.imaging import PHOTOS
from tests.outputs import image_key_of
from tests.plugins.origin import ImageServer, OriginDelay
from tests.plugins.receivers import Receiver
from tests.plugins.services import Service, ServiceFactory
from tests.service_process import free_port
from tests.waiting import wait_until


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def upload_ok(service: Service, csv_text: str | bytes, **form: str) -> str:
    response = service.upload(csv_text, **form)
    assert response.status_code == 202, response.text
    body = response.json()
    assert uuid.UUID(body["request_id"]).version == 4
    assert body["status"] == "queued"
    assert body["status_url"] == f"{service.base_url}/status/{body['request_id']}"
    request_id: str = body["request_id"]
    return request_id


def download(service: Service, request_id: str) -> list[dict[str, str]]:
    with service.client() as client:
        response = client.get(f"/download/{request_id}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    return read_csv(response.text)


def test_a_classic_csv_is_compressed_end_to_end(
    service: Service, image_server: ImageServer
) -> None:
    a, b, c = image_server.photo_urls(3, tag="classic")
    request_id = upload_ok(
        service,
        f'S. No,Product Name,Input Image Urls\n1,SKU1,"{a},{b}"\n2,SKU2,"{c}"\n',
    )

    status = service.wait_until_finished(request_id)
    assert status["status"] == "completed"
    assert status["progress"] == {
        "total": 3,
        "done": 3,
        "failed": 0,
        "kept_original": 0,
        "reused": 0,
        "percent": 100.0,
        "compliant": None,
        "non_compliant": None,
    }
    assert (status["quality"], status["effort"]) == (50, "balanced")
    assert status["errors"] == []
    assert status["kept_originals"] == []
    assert status["output_csv_url"] == f"{service.base_url}/download/{request_id}"
    assert 0 < status["bytes_out"] < status["bytes_in"]

    rows = download(service, request_id)
    assert list(rows[0])[:4] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    assert [(row["S. No."], row["Product Name"]) for row in rows] == [("1", "SKU1"), ("2", "SKU2")]
    assert rows[0]["Input Image Urls"] == f"{a},{b}"
    outputs = rows[0]["Output Image Urls"].split(",") + rows[1]["Output Image Urls"].split(",")
    assert len(outputs) == 3
    originals = [image_server.url(urlpath(url)) for url in (a, b, c)]
    for output_url, source in zip(outputs, originals, strict=True):
        image_key_of(output_url, service.base_url)
        served = httpx.get(output_url)
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/jpeg"
        image = pyvips.Image.new_from_buffer(served.content, "")
        original = pyvips.Image.new_from_buffer(httpx.get(source).content, "")
        assert (image.width, image.height) == (original.width, original.height)
        assert image.get("vips-loader") == "jpegload_buffer"
    assert int(rows[0]["Bytes Out"]) < int(rows[0]["Bytes In"])


def urlpath(url: str) -> str:
    return httpx.URL(url).path


def test_status_shows_queued_then_processing_then_done(
    make_service: ServiceFactory, origin_delay: OriginDelay
) -> None:
    service = make_service(FETCH_CONCURRENCY="1", BATCH_SIZE="1")
    image_server = origin_delay(0.3)
    urls = image_server.photo_urls(6, tag="slow")
    request_id = upload_ok(
        service,
        "S. No,Product Name,Input Image Urls\n"
        + "".join(f"{n},P{n},{url}\n" for n, url in enumerate(urls, 1)),
    )
    seen: list[str] = []
    with service.client() as client:

        def finished() -> bool:
            status = client.get(f"/status/{request_id}").json()
            if not seen or seen[-1] != status["status"]:
                seen.append(status["status"])
            if status["status"] == "processing":
                assert 0 <= status["progress"]["percent"] <= 100
                download = client.get(f"/download/{request_id}")
                if download.status_code == 200:  # it finished in between: say so next
                    assert client.get(f"/status/{request_id}").json()["status"] == "completed"
                    return False
                assert download.status_code == 409
                assert download.json()["error"]["code"] == "not_ready"
            return seen[-1] in ("completed", "completed_with_errors")

        wait_until("the request to finish", finished)
    assert seen[-2:] == ["processing", "completed"]
    assert set(seen) <= {"queued", "processing", "completed"}


def test_broken_images_fail_alone_with_their_reasons(
    service: Service, image_server: ImageServer
) -> None:
    good = image_server.photo_urls(1, tag="broken")[0]
    missing, server_error = image_server.url("/missing.jpg"), image_server.url("/error.jpg")
    html, stall = image_server.url("/page.jpg"), image_server.url("/stall.jpg")
    request_id = upload_ok(
        service,
        "S. No,Product Name,Input Image Urls\n"
        f'1,Mixed,"{missing},{good},{html}"\n'
        f'2,Slow,"{stall}"\n'
        f'3,Down,"{server_error}"\n',
    )
    status = service.wait_until_finished(request_id)
    assert status["status"] == "completed_with_errors"
    assert status["progress"] == {
        "total": 5,
        "done": 1,
        "failed": 4,
        "kept_original": 0,
        "reused": 0,
        "percent": 100.0,
        "compliant": None,
        "non_compliant": None,
    }
    reasons = {error["url"]: (error["code"], error["message"]) for error in status["errors"]}
    assert reasons[missing] == ("http_error", "HTTP 404 Not Found")
    assert reasons[server_error][0] == "http_error"
    assert "500" in reasons[server_error][1]
    assert reasons[html][0] == "not_an_image"
    assert reasons[stall][0] == "timeout"
    assert {error["row"] for error in status["errors"]} == {"1", "2", "3"}

    rows = download(service, request_id)
    outputs = rows[0]["Output Image Urls"].split(",")
    assert outputs[0] == ""
    assert outputs[2] == ""
    assert outputs[1].startswith(f"{service.base_url}/images/")
    assert f"{missing}: http_error: HTTP 404" in rows[0]["Errors"]
    assert rows[1]["Output Image Urls"] == ""
    assert "timeout" in rows[1]["Errors"]


def test_a_slow_origin_does_not_hold_up_the_others(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    service = make_service(FETCH_CONCURRENCY="4", FETCH_CONCURRENCY_PER_HOST="2")
    port = httpx.URL(image_server.base_url).port
    slow = [image_server.url(f"/slow.jpg?seconds=1.5&n=held-{n}") for n in range(6)]
    fast = [f"http://localhost:{port}/photos/{PHOTOS[n].name}?n=held" for n in range(2)]
    rows = [f"{n},P{n},{url}" for n, url in enumerate(slow + fast, 1)]
    request_id = upload_ok(service, "S. No,Product Name,Input Image Urls\n" + "\n".join(rows))
    assert service.wait_until_finished(request_id)["status"] == "completed"

    def asked(url: str) -> float:
        parts = httpx.URL(url)
        return image_server.first_asked[f"{parts.path}?{parts.query.decode()}"]

    # The slow origin had two downloads at a time; the other origin's images, listed after all
    # six slow ones, were fetched while the first two were still running, not after.
    waves = sorted(asked(url) for url in slow)
    assert waves[2] - waves[0] >= 1.4
    assert max(asked(url) for url in fast) < waves[2]


def test_hostile_origins_each_fail_alone_with_their_reason(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    # The address guard on, as in production; the test server admitted by its host and port.
    netloc = httpx.URL(image_server.base_url).netloc.decode()
    service = make_service(
        ALLOW_PRIVATE_NETWORKS="false", ALLOWED_HOSTS=netloc, MAX_DOWNLOAD_BYTES="5000000"
    )
    expected = {
        "/drip.jpg": "timeout",
        "/endless.jpg": "too_large",
        "/long-length.jpg": "connect_error",
        "/truncated.jpg": "corrupt_image",
        "/bomb.png": "too_many_pixels",
        "/page.jpg": "not_an_image",
        "/not-http.jpg": "connect_error",
        "/loop": "http_error",
        f"/redirect?to=http://127.0.0.1:{free_port()}/a.jpg": "blocked_address",
        "/redirect?to=http://169.254.169.254/latest/meta-data/": "blocked_address",
        "/redirect?to=http://localhost/a.jpg": "blocked_address",
    }
    urls = {image_server.url(path): code for path, code in expected.items()}
    flaky = image_server.url("/flaky?fail=1&status=503&key=hostile")
    good = image_server.photo_urls(1, tag="after-hostile")[0]
    rows = [f"{n},P{n},{url}" for n, url in enumerate([*urls, flaky, good], 1)]
    request_id = upload_ok(service, "S. No,Product Name,Input Image Urls\n" + "\n".join(rows))
    status = service.wait_until_finished(request_id, timeout=120)
    assert status["status"] == "completed_with_errors"
    assert status["progress"]["done"] == 2  # the 503-then-200 origin, and the photo after them all
    assert {error["url"]: error["code"] for error in status["errors"]} == urls
    # The service's own limits ended the endless answers (which go on for HOSTILE_FOR, 30 s,
    # and would otherwise end as broken connections): the total time (IMGCRUNCH_FETCH_TIMEOUT,
    # 5 s here) the drip, the byte cap the endless body.
    messages = {error["url"]: error["message"] for error in status["errors"]}
    assert messages[image_server.url("/drip.jpg")] == "download took longer than 5 s"
    assert messages[image_server.url("/endless.jpg")].startswith(
        "image is over the 5,000,000 byte limit"
    )


def test_the_same_url_twice_is_downloaded_once(service: Service, image_server: ImageServer) -> None:
    url = image_server.photo_urls(1, tag=f"dup{uuid.uuid4().hex}")[0]
    request_id = upload_ok(
        service, f'S. No,Product Name,Input Image Urls\n1,A,"{url},{url}"\n2,B,{url}\n'
    )
    status = service.wait_until_finished(request_id)
    assert status["progress"]["done"] == 3
    assert image_server.hits[urlpath(url) + "?" + httpx.URL(url).query.decode()] == 1
    rows = download(service, request_id)
    first, second = rows[0]["Output Image Urls"].split(",")
    assert first == second == rows[1]["Output Image Urls"] != ""


CSV_VARIANTS = {
    "bom-crlf-no-final-newline": (
        '\ufeffS. No.,Product Name,Input Image Urls\r\n1,Shoe,"{a}, {b}"\r\n2,Hat,{c}'
    ),
    "semicolon": "S.No;Product Name;Input URLs\n1;Shoe;{a},{b}\n\n2;Hat;{c}\n",
    "tab": "sno\tProduct Name\tImage Urls\n1\tShoe\t{a},{b}\n2\tHat\t{c}\n",
    "unquoted-trailing-urls": "S. No,Product Name,Input Image Urls\n1,Shoe,{a},{b}\n2,Hat,{c}\n",
    "reordered-with-extras": (
        'SKU,Input Image Urls,Product Name,Serial Number\nX-1,"{a},{b}",Shoe,1\nX-2,{c},Hat,2\n'
    ),
}


@pytest.mark.parametrize("variant", sorted(CSV_VARIANTS))
def test_every_accepted_csv_variant(
    service: Service, image_server: ImageServer, variant: str
) -> None:
    a, b, c = image_server.photo_urls(3, tag=variant)
    request_id = upload_ok(service, CSV_VARIANTS[variant].format(a=a, b=b, c=c))
    status = service.wait_until_finished(request_id)
    assert status["status"] == "completed"
    assert status["progress"]["done"] == 3
    rows = download(service, request_id)
    assert [(row["S. No."], row["Product Name"]) for row in rows] == [("1", "Shoe"), ("2", "Hat")]
    assert rows[0]["Input Image Urls"] == f"{a},{b}"
    assert len(rows[0]["Output Image Urls"].split(",")) == 2
    if variant == "reordered-with-extras":
        assert [row["SKU"] for row in rows] == ["X-1", "X-2"]


def test_a_file_with_bad_rows_is_refused_naming_each(service: Service) -> None:
    response = service.upload(
        "S. No,Product Name,Input Image Urls\n"
        "1,Good,https://example.com/a.jpg\n"
        "2,,https://example.com/b.jpg\n"
        "3,No URL,\n"
        "4,Bad URL,ftp://example.com/c.jpg\n"
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_rows"
    problems = {(detail["row"], detail["column"]) for detail in error["details"]}
    assert problems == {
        (3, "Product Name"),
        (4, "Input Image Urls"),
        (5, "Input Image Urls"),
    }
    assert all(detail["reason"] for detail in error["details"])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "empty_file"),
        (b"S. No,Product Name,Input Image Urls\n", "empty_file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not_csv"),
        (b"name,price\nshoe,10\n", "missing_columns"),
    ],
)
def test_unusable_files_get_a_clear_422(service: Service, body: bytes, code: str) -> None:
    response = service.upload(body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_limits_answer_413(make_service: ServiceFactory) -> None:
    service = make_service(MAX_CSV_BYTES="200", MAX_CSV_ROWS="2")
    rows = "".join(f"{n},P,https://example.com/{n}.jpg\n" for n in range(3))
    too_many = service.upload("S. No,Product Name,Input Image Urls\n" + rows)
    assert too_many.status_code == 413
    assert too_many.json()["error"]["code"] == "too_many_rows"
    too_big = service.upload("S. No,Product Name,Input Image Urls\n" + "1,P," + "x" * 300)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "file_too_large"


def test_an_upload_declared_too_large_is_refused_before_its_body_is_read(
    make_service: ServiceFactory,
) -> None:
    service = make_service(MAX_CSV_BYTES="1000")
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as connection:
        # Ten gigabytes declared, none sent: the answer comes at once, nothing spooled.
        connection.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 10000000000\r\n\r\n"
        )
        answer = connection.makefile("rb").read().decode()
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413")
    error = json.loads(body)["error"]
    assert error["code"] == "file_too_large"
    assert "1,000 byte limit (IMGCRUNCH_MAX_CSV_BYTES)" in error["message"]


def test_past_the_queue_cap_uploads_answer_429_with_retry_after(
    make_service: ServiceFactory, held_origin: ImageServer
) -> None:
    service = make_service(MAX_QUEUED_REQUESTS="1")
    urls = ",".join(held_origin.photo_urls(2, tag="cap-", held=True))
    first = upload_ok(service, f'S. No,Product Name,Input Image Urls\n1,A,"{urls}"\n')
    one_more = f"S. No,Product Name,Input Image Urls\n1,B,{held_origin.photo_urls(1)[0]}\n"
    refused = service.upload(one_more)
    held_origin.release.set()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert "IMGCRUNCH_MAX_QUEUED_REQUESTS" in refused.json()["error"]["message"]
    assert service.wait_until_finished(first)["status"] == "completed"
    upload_ok(service, one_more)  # room again


def test_one_key_past_its_own_cap_is_refused_while_another_key_is_not(
    make_service: ServiceFactory, held_origin: ImageServer
) -> None:
    key_a, key_b = "shop-a-" + "k" * 24, "shop-b-" + "q" * 24
    service = make_service(
        API_KEYS=f"shop-a:{key_a},shop-b:{key_b}", MAX_QUEUED_REQUESTS_PER_KEY="1"
    )
    as_a = {"Authorization": f"Bearer {key_a}"}
    as_b = {"Authorization": f"Bearer {key_b}"}

    def upload(headers: dict[str, str], count: int, *, held: bool = False) -> httpx.Response:
        urls = ",".join(held_origin.photo_urls(count, tag="per-key-", held=held))
        body = f'S. No,Product Name,Input Image Urls\n1,A,"{urls}"\n'
        with service.client() as client:
            files = {"file": ("p.csv", body, "text/csv")}
            return client.post("/upload", files=files, headers=headers)

    first = upload(as_a, 2, held=True)
    refused = upload(as_a, 1)
    other_key = upload(as_b, 1)
    held_origin.release.set()
    assert first.status_code == 202
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert "IMGCRUNCH_MAX_QUEUED_REQUESTS_PER_KEY" in refused.json()["error"]["message"]
    assert other_key.status_code == 202, other_key.text
    first_id = first.json()["request_id"]
    assert service.wait_until_finished(first_id, key=key_a)["status"] == "completed"
    assert upload(as_a, 1).status_code == 202  # room again for this key


def test_urls_per_row_and_url_length_are_limited(make_service: ServiceFactory) -> None:
    service = make_service(MAX_URLS_PER_ROW="2", MAX_URL_LENGTH="40")
    long_url = "https://example.com/" + "a" * 30 + ".jpg"
    response = service.upload(
        "S. No,Product Name,Input Image Urls\n"
        '1,Many,"https://e.com/1.jpg,https://e.com/2.jpg,https://e.com/3.jpg"\n'
        f"2,Long,{long_url}\n"
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"row": 2, "column": "Input Image Urls", "reason": "3 image URLs, more than the 2 allowed"},
        {
            "row": 3,
            "column": "Input Image Urls",
            "reason": f"'{long_url}' is longer than 40 characters",
        },
    ]


def test_webhook_urls_are_checked_at_upload(make_service: ServiceFactory) -> None:
    service = make_service(ALLOW_PRIVATE_NETWORKS="false", MAX_URL_LENGTH="60")
    csv_text = "S. No,Product Name,Input Image Urls\n1,A,https://example.com/a.jpg\n"
    refused = {
        "javascript:alert(1)": "is not an absolute http(s) URL",
        "http://169.254.169.254/latest/": "169.254.169.254 is not a public address",
        "http://0x7f000001/hook": "resolves to 127.0.0.1, which is not a public address",
        "https://user:secret@hooks.example.com/": "credentials",
        "https://hooks.example.com/" + "x" * 60: "longer than 60 characters",
    }
    for url, reason in refused.items():
        response = service.upload(csv_text, webhook_url=url)
        assert response.status_code == 422, url
        error = response.json()["error"]
        assert error["code"] == "invalid_webhook_url"
        assert error["details"][0]["field"] == "webhook_url"
        assert reason in error["details"][0]["reason"], (url, error)
        assert "secret" not in json.dumps(error)
    # A name is checked when the webhook is sent: its address may change meanwhile.
    assert service.upload(csv_text, webhook_url="https://hooks.example.com/x").status_code == 202


def test_wrong_form_fields_are_named(service: Service) -> None:
    with service.client() as client:
        wrong_field = client.post("/upload", files={"csv": ("p.csv", b"x", "text/csv")})
        not_multipart = client.post("/upload", content=b"S. No,Product Name\n")
    for response in (wrong_field, not_multipart):
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "file"
    bad_hook = service.upload(
        "S. No,Product Name,Input Image Urls\n1,A,https://example.com/a.jpg\n",
        webhook_url="javascript:alert(1)",
    )
    assert bad_hook.status_code == 422
    assert bad_hook.json()["error"]["code"] == "invalid_webhook_url"


def test_unknown_and_malformed_ids_answer_404(service: Service) -> None:
    with service.client() as client:
        for path in (f"/status/{uuid.uuid4()}", f"/download/{uuid.uuid4()}", "/status/nope"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"


def test_stored_images_are_served_for_good_and_revalidated_without_a_body(
    service: Service, image_server: ImageServer
) -> None:
    request_id = upload_ok(
        service, f"S. No,Product Name,Input Image Urls\n1,A,{image_server.photo_urls(1)[0]}\n"
    )
    assert service.wait_until_finished(request_id)["status"] == "completed"
    output_url = download(service, request_id)[0]["Output Image Urls"]
    served = httpx.get(output_url)
    assert served.status_code == 200
    assert served.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = served.headers["etag"]
    assert etag.strip('"') in output_url  # the content's hash, as the key is
    again = httpx.get(output_url, headers={"If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b"")
    head = httpx.head(output_url)
    assert (head.status_code, head.headers["content-type"]) == (200, "image/jpeg")
    assert int(head.headers["content-length"]) == len(served.content)
    base = f"{service.base_url}/images"
    for missing in (
        f"{base}/{request_id}/{'0' * 64}.jpg",  # well formed, never stored
        f"{base}/{uuid.uuid4()}/{output_url.rsplit('/', 1)[1]}",  # another request's folder
        f"{base}/{request_id}/..%2F..%2Fimgcrunch.db",
        f"{base}/{request_id}",
    ):
        response = httpx.get(missing)
        assert response.status_code == 404, missing


def test_paths_work_with_a_trailing_slash(service: Service, image_server: ImageServer) -> None:
    url = image_server.photo_urls(1, tag="slash")[0]
    with service.client() as client:
        response = client.post(
            "/upload/",
            files={"file": ("p.csv", f"S. No,Product Name,Input Image Urls\n1,A,{url}\n")},
        )
        assert response.status_code == 202
        request_id = response.json()["request_id"]
        assert client.get(f"/status/{request_id}/").status_code == 200
        assert client.get("/healthz/").status_code == 200


def test_unknown_form_fields_and_efforts_are_named(service: Service) -> None:
    csv_text = "S. No,Product Name,Input Image Urls\n1,A,https://example.com/a.jpg\n"
    with service.client() as client:
        before = [r["request_id"] for r in client.get("/requests").json()["requests"]]
    typo = service.upload(csv_text, qualty="30", efort="max")
    assert typo.status_code == 422
    error = typo.json()["error"]
    assert error["code"] == "unknown_field"
    assert "qualty, efort" in error["message"]
    assert [detail["field"] for detail in error["details"]] == ["qualty", "efort"]
    unknown_effort = service.upload(csv_text, effort="fastest")
    assert unknown_effort.status_code == 422
    error = unknown_effort.json()["error"]
    assert error["details"][0]["field"] == "effort"
    assert "'balanced' or 'max'" in error["details"][0]["reason"]
    with service.client() as client:  # nothing was accepted
        assert [r["request_id"] for r in client.get("/requests").json()["requests"]] == before


def test_effort_can_be_chosen_per_request(service: Service, image_server: ImageServer) -> None:
    url = image_server.photo_urls(1, tag="effort")[0]
    csv_text = f"S. No,Product Name,Input Image Urls\n1,A,{url}\n"
    sizes = {}
    for effort in ("balanced", "max"):
        request_id = upload_ok(service, csv_text, effort=effort)
        status = service.wait_until_finished(request_id)
        assert (status["status"], status["effort"]) == ("completed", effort)
        sizes[effort] = int(download(service, request_id)[0]["Bytes Out"])
    assert sizes["max"] < sizes["balanced"]


def test_an_original_that_would_not_shrink_is_kept_and_said_so(
    service: Service, image_server: ImageServer
) -> None:
    kept, compressed = image_server.url("/compressed.jpg"), image_server.photo_urls(1, tag="k")[0]
    request_id = upload_ok(
        service, f'S. No,Product Name,Input Image Urls\n1,A,"{compressed},{kept}"\n'
    )
    status = service.wait_until_finished(request_id)
    assert status["status"] == "completed"
    assert status["progress"]["kept_original"] == 1
    assert status["kept_originals"] == [{"row": "1", "product_name": "A", "url": kept}]
    assert status["kept_originals_truncated"] is False

    with service.client() as client:
        images = client.get(f"/requests/{request_id}/images").json()["images"]
    assert [image["kept_original"] for image in images] == [False, True]
    original = httpx.get(kept).content
    output = httpx.get(images[1]["output_url"]).content
    assert len(output) < len(original)  # the original, without its metadata
    assert images[1]["bytes_out"] == len(output)
    decoded = pyvips.Image.new_from_buffer(output, "")
    assert (decoded - pyvips.Image.new_from_buffer(original, "")).abs().max() == 0
    assert "exif-data" not in decoded.get_fields()

    row = download(service, request_id)[0]
    assert row["Kept Originals"] == kept
    assert row["Errors"] == ""


CATALOG_SET = "zoom=2000:jpeg, listing=800:avif, thumb=200x200:pad:webp"


def test_variants_are_made_stored_and_listed_for_each_image(
    service: Service, image_server: ImageServer
) -> None:
    photo, kept = image_server.photo_urls(1, tag="variants")[0], image_server.url("/compressed.jpg")
    request_id = upload_ok(
        service,
        f'S. No,Product Name,Input Image Urls,Brand\n1,A,"{photo},{kept}",Acme\n',
        variants=CATALOG_SET,
    )
    status = service.wait_until_finished(request_id)
    assert status["status"] == "completed"
    assert [(v["name"], v["format"], v["fit"], v["column"]) for v in status["variants"]] == [
        ("zoom", "jpeg", "inside", "Output Image Urls"),
        ("listing", "avif", "inside", "Listing Image Urls"),
        ("thumb", "webp", "pad", "Thumb Image Urls"),
    ]

    row = download(service, request_id)[0]
    assert list(row)[:7] == [
        "S. No.",
        "Product Name",
        "Input Image Urls",
        "Output Image Urls",
        "Listing Image Urls",
        "Thumb Image Urls",
        "Brand",
    ]
    expected = {  # per column: content type, and each image's size (photo, then the small one)
        "Output Image Urls": ("image/jpeg", [(1600, 1200), (200, 150)]),
        "Listing Image Urls": ("image/avif", [(800, 600), (200, 150)]),
        "Thumb Image Urls": ("image/webp", [(200, 200), (200, 200)]),
    }
    served_bytes = {}
    for column, (content_type, sizes) in expected.items():
        urls = row[column].split(",")
        for url, size in zip(urls, sizes, strict=True):
            served = httpx.get(url)
            assert served.status_code == 200
            assert served.headers["content-type"] == content_type
            image = pyvips.Image.new_from_buffer(served.content, "")
            assert (image.width, image.height) == size
            served_bytes[url] = len(served.content)
    assert int(row["Bytes Out"]) == sum(
        served_bytes[url] for url in row["Output Image Urls"].split(",")
    )

    # Each variant's total is its images' bytes; the first's is the request's own.
    totals = {v["name"]: v["bytes_out"] for v in status["variants"]}
    for name, column in (("zoom", "Output Image Urls"), ("listing", "Listing Image Urls"),
                         ("thumb", "Thumb Image Urls")):  # fmt: skip
        assert totals[name] == sum(served_bytes[url] for url in row[column].split(","))
    assert status["bytes_out"] == totals["zoom"]

    with service.client() as client:
        images = client.get(f"/requests/{request_id}/images").json()["images"]
        listed = client.get("/requests").json()["requests"]
    shown = [[(v["name"], v["width"], v["height"], v["kept_original"]) for v in image["variants"]]
             for image in images]  # fmt: skip
    assert shown == [
        [("zoom", 1600, 1200, False), ("listing", 800, 600, False), ("thumb", 200, 200, False)],
        # The small JPEG already is the zoom variant, and would not shrink: kept as it is.
        [("zoom", 200, 150, True), ("listing", 200, 150, False), ("thumb", 200, 200, False)],
    ]
    assert [v["url"] for v in images[0]["variants"]] == [
        row[column].split(",")[0] for column in expected
    ]
    (summary,) = [r for r in listed if r["request_id"] == request_id]
    assert summary["variants"] == status["variants"]
    assert status["variants"][0]["kept_original"] == 1


@pytest.mark.parametrize(
    ("variants", "part"),
    [
        ("zoom=2000:jpeg, zoom=800:avif", "zoom: this name is given twice"),
        ("zoom=2000:gif", "'gif' is none of"),
        ("thumb=0x200:webp", "a side of 0"),
        ("huge=8000x8000:jpeg", "64.0 megapixels; the limit is 50.0"),
        (", ".join(f"v{n}={100 + n}" for n in range(9)), "9 variants; at most 8"),
        ('[{"name": "a", "format": "png"}]', "format 'png' is unknown"),
    ],
)
def test_a_bad_variants_spec_is_refused_naming_the_part(
    service: Service, variants: str, part: str
) -> None:
    response = service.upload(
        "S. No,Product Name,Input Image Urls\n1,A,http://example.com/a.jpg\n", variants=variants
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_variants"
    assert part in error["message"]
    assert error["details"][0]["field"] == "variants"
    assert part in error["details"][0]["reason"]


def test_a_marketplace_profile_makes_the_first_variant_and_reports_what_it_cannot_fix(
    service: Service, image_server: ImageServer
) -> None:
    marketplace_run.check(service, marketplace_run.upload(service, image_server))


def test_an_unknown_profile_is_refused_naming_the_known_ones(service: Service) -> None:
    csv_text = "S. No,Product Name,Input Image Urls\n1,A,http://example.com/a.jpg\n"
    with service.client() as client:
        before = len(client.get("/requests").json()["requests"])
    response = service.upload(csv_text, profile="etsy")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_profile"
    assert error["message"] == "unknown profile 'etsy'; known: amazon, walmart, google, ebay"
    assert error["details"] == [{"field": "profile", "reason": error["message"]}]
    with service.client() as client:
        assert len(client.get("/requests").json()["requests"]) == before  # nothing accepted


def test_a_profile_leaves_the_output_column_to_itself(service: Service) -> None:
    csv_text = "S. No,Product Name,Input Image Urls\n1,A,http://example.com/a.jpg\n"
    response = service.upload(csv_text, profile="walmart", variants="output=800:webp")
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "variants cannot be made: output: the profile makes the first variant, 'output' "
        "('Output Image Urls'): give this one another name"
    )


def test_the_servers_default_variants_apply_where_a_request_names_none(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    service = make_service(VARIANTS="small=100:webp")
    (url,) = image_server.photo_urls(1, tag="default-variants")
    request_id = upload_ok(service, f"S. No,Product Name,Input Image Urls\n1,A,{url}\n")
    status = service.wait_until_finished(request_id)
    assert [v["spec"] for v in status["variants"]] == ["small=100x100:inside:webp"]
    output = download(service, request_id)[0]["Output Image Urls"]
    assert httpx.get(output).headers["content-type"] == "image/webp"
    # A request's own variants win.
    request_id = upload_ok(
        service, f"S. No,Product Name,Input Image Urls\n1,A,{url}\n", variants="big=jpeg"
    )
    status = service.wait_until_finished(request_id)
    assert [v["spec"] for v in status["variants"]] == ["big=inside:jpeg"]


def test_quality_can_be_chosen_per_request(service: Service, image_server: ImageServer) -> None:
    url = image_server.photo_urls(1, tag="quality")[0]
    csv_text = f"S. No,Product Name,Input Image Urls\n1,A,{url}\n"
    sizes = []
    for quality in ("20", "90"):
        request_id = upload_ok(service, csv_text, quality=quality)
        assert service.wait_until_finished(request_id)["status"] == "completed"
        sizes.append(int(download(service, request_id)[0]["Bytes Out"]))
    assert sizes[0] < sizes[1]


def test_webhook_is_called_when_done(
    service: Service, image_server: ImageServer, receiver: Receiver
) -> None:
    url = image_server.photo_urls(1, tag="hook")[0]
    request_id = upload_ok(
        service,
        f"S. No,Product Name,Input Image Urls\n1,A,{url}\n2,B,{image_server.url('/missing.jpg')}\n",
        webhook_url=receiver.url,
    )
    service.wait_until_finished(request_id)
    [delivery] = receiver.wait_for_deliveries(1)
    # Signed with the secret the service made for itself on first start and kept.
    secret = (service.data_dir / "webhook-secret").read_text().strip()
    event = verify(delivery.body, delivery.headers, secret)
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.id.startswith("msg_")
    assert event["type"] == "request.completed"
    assert event["data"] == {
        "request_id": request_id,
        "status": "completed_with_errors",
        "progress": {
            "total": 2,
            "done": 1,
            "failed": 1,
            "kept_original": 0,
            "reused": 0,
            "percent": 100.0,
            "compliant": None,
            "non_compliant": None,
        },
        "output_csv_url": f"{service.base_url}/download/{request_id}",
        "download_url": f"{service.base_url}/download/{request_id}",
    }

    def recorded() -> dict[str, Any] | None:
        webhook: dict[str, Any] = service.status(request_id)["webhook"]
        return webhook if webhook["state"] == "delivered" else None

    webhook = wait_until("the delivery recorded", recorded)
    assert {k: webhook[k] for k in ("url", "state", "attempts", "response_status")} == {
        "url": receiver.url,
        "state": "delivered",
        "attempts": 1,
        "response_status": 204,
    }


def test_api_keys_guard_every_route_and_keep_requests_apart(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    key_a, key_b = "shop-a-" + "k" * 24, "s3cr3t-" + "q" * 24
    service = make_service(API_KEYS=f"shop-a:{key_a},{key_b}")
    as_a = {"Authorization": f"Bearer {key_a}"}
    as_b = {"Authorization": f"Bearer {key_b}"}
    photo = image_server.photo_urls(1, tag="key")[0]
    csv_text = f"S. No,Product Name,Input Image Urls\n1,A,{photo}\n"
    some_id = uuid.uuid4()
    with service.client() as client:
        for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": key_a}):
            for method, path in (
                ("POST", "/upload"),
                ("GET", f"/status/{some_id}"),
                ("GET", f"/download/{some_id}"),
            ):
                refused = client.request(method, path, headers=headers)
                assert refused.status_code == 401, (headers, path)
                assert refused.headers["www-authenticate"] == "Bearer"
                assert refused.json()["error"]["code"] == "unauthorized"
        for open_path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
            assert client.get(open_path).status_code == 200, open_path

        accepted = client.post(
            "/upload", files={"file": ("p.csv", csv_text, "text/csv")}, headers=as_a
        )
        assert accepted.status_code == 202
        request_id = accepted.json()["request_id"]
        assert service.wait_until_finished(request_id, key=key_a)["status"] == "completed"
        # Another key sees nothing of it: the same answer as for an id that does not exist.
        for path in (f"/status/{request_id}", f"/download/{request_id}"):
            hidden = client.get(path, headers=as_b)
            assert hidden.status_code == 404
            assert hidden.json()["error"]["code"] == "not_found"
        output = client.get(f"/download/{request_id}", headers=as_a)
        assert output.status_code == 200
        listed = {
            name: [r["request_id"] for r in client.get("/requests", headers=h).json()["requests"]]
            for name, h in (("a", as_a), ("b", as_b))
        }
        assert listed == {"a": [request_id], "b": []}
        assert client.get("/requests").status_code == 401
        assert client.delete(f"/requests/{request_id}", headers=as_b).status_code == 404
    image_url = next(csv.DictReader(io.StringIO(output.text)))["Output Image Urls"]
    assert httpx.get(image_url).status_code == 200  # images are embedded where keys are not
    log = service.log_path.read_text()
    assert key_a not in log
    assert key_b not in log


def test_api_keys_are_never_stored_and_requests_made_without_keys_stay_hidden(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    service = make_service()  # no keys yet
    photos = image_server.photo_urls(3, tag="keys-kept-")
    before = upload_ok(service, f"S. No,Product Name,Input Image Urls\n1,A,{photos[0]}\n")
    assert service.wait_until_finished(before)["status"] == "completed"
    service.stop()
    key_a, key_b = "shop-a-" + "k" * 24, "bare-key-" + "q" * 24
    service.env["IMGCRUNCH_API_KEYS"] = f"shop-a:{key_a},{key_b}"
    service.start()

    made = []
    with service.client() as client:
        for key, photo in ((key_a, photos[1]), (key_b, photos[2])):
            bearer = {"Authorization": f"Bearer {key}"}
            for path in (f"/status/{before}", f"/download/{before}"):
                assert client.get(path, headers=bearer).status_code == 404, (key, path)
            assert client.get("/requests", headers=bearer).json()["requests"] == []
            csv_text = f"S. No,Product Name,Input Image Urls\n1,A,{photo}\n"
            files = {"file": ("p.csv", csv_text, "text/csv")}
            accepted = client.post("/upload", files=files, headers=bearer)
            assert accepted.status_code == 202
            made.append(accepted.json()["request_id"])
            assert service.wait_until_finished(made[-1], key=key)["status"] == "completed"
    service.stop()  # so that the database's write-ahead log is folded into its file

    with sqlite3.connect(service.data_dir / "imgcrunch.db") as db:
        owners = {
            str(uuid.UUID(id_)): owner
            for id_, owner in db.execute("SELECT id, owner FROM requests")
        }
    # The owner's name, or a fingerprint of a bare key: never the key.
    assert owners == {before: None, made[0]: "shop-a", made[1]: fingerprint(key_b)}
    # No file the service keeps (database, log, CSVs, images) holds either key.
    for kept in service.data_dir.rglob("*"):
        if kept.is_file():
            content = kept.read_bytes()
            assert key_a.encode() not in content, kept
            assert key_b.encode() not in content, kept


def test_errors_and_kept_originals_are_capped_in_the_status_never_in_the_csv(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    service = make_service(ERRORS_IN_STATUS="3")

    def submit(tag: str, failed: int, kept: int) -> str:
        urls = [image_server.url(f"/missing.jpg?n={tag}{n}") for n in range(failed)]
        urls += [image_server.url(f"/compressed.jpg?n={tag}{n}") for n in range(kept)]
        rows = "".join(f"{n},P{n},{url}\n" for n, url in enumerate(urls, 1))
        return upload_ok(service, "S. No,Product Name,Input Image Urls\n" + rows)

    # Each list at the cap in one request and over it in the other.
    more_kept, more_failed = submit("more-kept-", 3, 5), submit("more-failed-", 4, 3)
    status = service.wait_until_finished(more_kept)
    assert (status["progress"]["failed"], status["progress"]["kept_original"]) == (3, 5)
    assert (len(status["errors"]), status["errors_truncated"]) == (3, False)
    assert (len(status["kept_originals"]), status["kept_originals_truncated"]) == (3, True)

    status = service.wait_until_finished(more_failed)
    assert (status["progress"]["failed"], status["progress"]["kept_original"]) == (4, 3)
    assert (len(status["errors"]), status["errors_truncated"]) == (3, True)
    assert (len(status["kept_originals"]), status["kept_originals_truncated"]) == (3, False)
    assert [error["row"] for error in status["errors"]] == ["1", "2", "3"]  # the first ones
    rows = download(service, more_failed)
    assert sum(bool(row["Errors"]) for row in rows) == 4
    assert sum(bool(row["Kept Originals"]) for row in rows) == 3


def test_health_and_docs(service: Service) -> None:
    with service.client() as client:
        assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}
        schema = client.get("/openapi.json").json()
        assert {"/upload", "/status/{request_id}", "/download/{request_id}"} <= set(schema["paths"])
        assert client.get("/docs").status_code == 200
