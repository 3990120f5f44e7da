"""A killed or stopped server picks its requests up again: nothing lost, nothing twice."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.plugins.origin import ImageServer, OriginDelay
from tests.plugins.services import Service, ServiceFactory
from tests.waiting import wait_until

IMAGES = 60


@pytest.fixture
def slow_origin(origin_delay: OriginDelay) -> ImageServer:
    return origin_delay(0.1)  # so a request of IMAGES photos lasts a few seconds


def upload_many(
    service: Service, server: ImageServer, tag: str, *, held: bool = False, **form: str
) -> tuple[str, list[str]]:
    urls = server.photo_urls(IMAGES, tag=tag, held=held)
    pairs = zip(urls[::2], urls[1::2], strict=True)
    rows = "".join(f'{n},Product {n},"{a},{b}"\n' for n, (a, b) in enumerate(pairs))
    response = service.upload("S. No,Product Name,Input Image Urls\n" + rows, **form)
    assert response.status_code == 202, response.text
    return response.json()["request_id"], urls


def assert_every_image_exactly_once(service: Service, request_id: str, urls: list[str]) -> None:
    status = service.wait_until_finished(request_id, timeout=120)
    assert status["status"] == "completed"
    assert status["progress"] == {
        "total": IMAGES,
        "done": IMAGES,
        "failed": 0,
        "kept_original": 0,
        "reused": 0,
        "percent": 100.0,
        "compliant": None,
        "non_compliant": None,
    }

    csv_text = httpx.get(f"{service.base_url}/download/{request_id}").text
    lines = csv_text.strip().splitlines()
    assert len(lines) == 1 + IMAGES // 2  # one row per product, none twice
    for n, line in enumerate(lines[1:]):
        assert line.startswith(f'{n},Product {n},"{urls[2 * n]},{urls[2 * n + 1]}",')
    outputs = [url for line in lines[1:] for url in line.split('"')[3].split(",")]
    assert len(outputs) == IMAGES
    assert all(outputs)
    for url in outputs[:: IMAGES // 6]:
        assert httpx.get(url).status_code == 200

    with sqlite3.connect(service.data_dir / "imgcrunch.db") as db:
        rows = db.execute(
            "SELECT status, count(*) FROM images WHERE request_id = ? GROUP BY status",
            (request_id.replace("-", ""),),
        ).fetchall()
    assert rows == [("done", IMAGES)]
    assert not list((service.data_dir / ".partial").iterdir())


def test_sigkill_mid_request_then_restart_finishes_every_image_once(
    make_service: ServiceFactory, slow_origin: ImageServer
) -> None:
    # Small batches: progress is recorded a batch at a time, and the kill must land mid-request.
    service = make_service(BATCH_SIZE="4", FETCH_CONCURRENCY="4")
    request_id, urls = upload_many(service, slow_origin, "kill")
    done_before = service.wait_until_done(request_id, 5)["progress"]["done"]
    workers = codec_workers(service)
    assert workers
    service.signal(signal.SIGKILL)
    service.wait()
    assert done_before < IMAGES
    # Orphaned, they notice and go by themselves.
    wait_until(
        "the killed server's codec workers to go",
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
    )

    service.start()
    assert_every_image_exactly_once(service, request_id, urls)


def test_sigkill_mid_request_with_variants_records_each_variant_once(
    make_service: ServiceFactory, slow_origin: ImageServer
) -> None:
    service = make_service(BATCH_SIZE="4", FETCH_CONCURRENCY="4")
    request_id, urls = upload_many(
        service, slow_origin, "kill-variants", variants="big=jpeg, small=64:webp"
    )
    assert service.wait_until_done(request_id, 5)["progress"]["done"] < IMAGES
    service.signal(signal.SIGKILL)
    service.wait()
    service.start()
    assert_every_image_exactly_once(service, request_id, urls)

    status = service.status(request_id)
    with httpx.Client() as client:
        rows = list(
            csv.DictReader(
                io.StringIO(client.get(f"{service.base_url}/download/{request_id}").text)
            )
        )
        smalls = [url for row in rows for url in row["Small Image Urls"].split(",")]
        assert len(smalls) == IMAGES
        small_bytes = [len(client.get(url).content) for url in smalls]
    # Recorded once per image: the totals are the files', however often a batch was begun.
    totals = {variant["name"]: variant["bytes_out"] for variant in status["variants"]}
    assert totals["small"] == sum(small_bytes)
    assert totals["big"] == status["bytes_out"]


def codec_workers(service: Service) -> list[int]:
    """The server's codec worker processes: its children other than multiprocessing's helper."""
    assert service.process is not None
    children = Path(f"/proc/{service.process.pid}/task/{service.process.pid}/children")
    workers = []
    for child in children.read_text().split():
        command = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"resource_tracker" not in command:
            workers.append(int(child))
    return workers


def test_a_codec_worker_killed_mid_request_fails_no_image(
    make_service: ServiceFactory, slow_origin: ImageServer
) -> None:
    # Killed as the OOM killer would kill it, or as libvips crashing on a hostile file would.
    service = make_service(BATCH_SIZE="4", FETCH_CONCURRENCY="4", CPU_WORKERS="2")
    request_id, urls = upload_many(service, slow_origin, "worker")
    service.wait_until_done(request_id, 5)
    workers = codec_workers(service)
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    assert_every_image_exactly_once(service, request_id, urls)
    assert workers[0] not in codec_workers(service)  # replaced
    assert "a codec worker process died" in service.log_path.read_text()


def image_states(service: Service, request_id: str) -> dict[str, str]:
    """Each image's state, from the database: done, pending, or claimed (pending, in a batch
    a worker holds)."""
    with sqlite3.connect(service.data_dir / "imgcrunch.db") as db:
        rows = db.execute(
            "SELECT source_url, CASE WHEN status = 'pending' AND claimed_by IS NOT NULL"
            " THEN 'claimed' ELSE status END FROM images WHERE request_id = ?",
            (request_id.replace("-", ""),),
        ).fetchall()
    return dict(rows)


# Small batches, and downloads that wait at the origin as long as the test holds them.
HELD = {"BATCH_SIZE": "4", "FETCH_CONCURRENCY": "4", "READ_TIMEOUT": "120", "FETCH_TIMEOUT": "120"}


def held_in_flight(service: Service, origin: ImageServer, request_id: str) -> set[str]:
    """The images in flight, once both lanes hold a batch of four and FETCH_CONCURRENCY (4)
    downloads wait at the origin: nothing moves from then until the origin is released."""

    def claimed() -> set[str] | None:
        states = image_states(service, request_id)
        in_flight = {url for url, state in states.items() if state == "claimed"}
        return in_flight if origin.held == 4 and len(in_flight) == 8 else None

    return wait_until("two batches claimed, four downloads held at the origin", claimed)


def test_sigterm_lets_the_batches_in_flight_finish_within_the_grace(
    make_service: ServiceFactory, held_origin: ImageServer
) -> None:
    service = make_service(SHUTDOWN_GRACE="60", **HELD)
    request_id, urls = upload_many(service, held_origin, "term-grace", held=True)
    in_flight = held_in_flight(service, held_origin, request_id)
    service.signal(signal.SIGTERM)
    wait_until("the shutdown to begin", lambda: "no new work is claimed" in service.log_tail())
    held_origin.release.set()  # the origin answers only now, in the grace
    assert service.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert "Application shutdown complete" in service.log_path.read_text()

    states = image_states(service, request_id)
    # The images in flight were finished; no other was started.
    assert {url for url, state in states.items() if state == "done"} == in_flight
    assert set(states.values()) == {"done", "pending"}  # none left claimed

    service.start()
    assert_every_image_exactly_once(service, request_id, urls)


@pytest.mark.parametrize("grace", ["0", "2"])
def test_sigterm_hands_back_what_the_grace_cannot_wait_for(
    make_service: ServiceFactory, held_origin: ImageServer, grace: str
) -> None:
    service = make_service(SHUTDOWN_GRACE=grace, **HELD)
    request_id, urls = upload_many(service, held_origin, f"term-{grace}", held=True)
    held_in_flight(service, held_origin, request_id)
    service.signal(signal.SIGTERM)
    # It goes while the origin still holds its downloads (the test releases them only below):
    # it did not wait past the grace for them.
    assert service.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "shutdown: released 8 images for the next start" in service.log_path.read_text()

    states = image_states(service, request_id)
    assert set(states.values()) == {"pending"}  # nothing done, nothing left claimed

    held_origin.release.set()
    service.start()
    assert_every_image_exactly_once(service, request_id, urls)


def ingest_state(service: Service, request_id: str) -> tuple[int, bool]:
    """Rows the request has stored so far, and whether all are."""
    with sqlite3.connect(service.data_dir / "imgcrunch.db") as db:
        stored, done = db.execute(
            "SELECT ingested_rows, ingested_at IS NOT NULL FROM requests WHERE id = ?",
            (request_id.replace("-", ""),),
        ).fetchone()
    return int(stored), bool(done)


def test_sigkill_mid_ingest_then_restart_stores_every_row_once(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    rows = 30_000  # stored in chunks over a few seconds: the kill lands among them
    shared = image_server.url("/missing/shared.jpg")  # in every row: repeats across chunks
    lines = (f'{n},P{n},"{image_server.url(f"/missing/{n}.jpg")},{shared}"\n' for n in range(rows))
    service = make_service()
    response = service.upload("S. No,Product Name,Input Image Urls\n" + "".join(lines))
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]

    def part_stored() -> int | None:
        stored, whole = ingest_state(service, request_id)
        return stored if stored and not whole else None

    stored = wait_until("some rows stored, not all", part_stored, interval=0.005)
    service.signal(signal.SIGKILL)
    service.wait()
    assert 0 < stored < rows

    service.start()
    wait_until("every row stored", lambda: ingest_state(service, request_id)[1])
    with sqlite3.connect(service.data_dir / "imgcrunch.db") as db:
        stored_id = request_id.replace("-", "")
        products = db.execute(
            "SELECT count(*), count(DISTINCT position), min(position), max(position)"
            " FROM products WHERE request_id = ?",
            (stored_id,),
        ).fetchone()
        images = db.execute(
            "SELECT count(*), count(DISTINCT product_id || '.' || position)"
            " FROM images WHERE request_id = ?",
            (stored_id,),
        ).fetchone()
        firsts_of_shared = db.execute(
            "SELECT count(*) FROM images WHERE request_id = ? AND source_url = ?"
            " AND duplicate_of IS NULL",
            (stored_id, shared),
        ).fetchone()
    assert products == (rows, rows, 0, rows - 1)  # each row once, none lost
    assert images == (2 * rows, 2 * rows)
    assert firsts_of_shared == (1,)  # fetched once: every other is its duplicate
    assert service.status(request_id)["progress"]["total"] == 2 * rows
    assert httpx.post(f"{service.base_url}/requests/{request_id}/cancel").status_code == 200
