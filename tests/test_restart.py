"""A killed or stopped server picks its requests up again: nothing lost, nothing twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ImageServer, Service, ServiceFactory

IMAGES = 60


@pytest.fixture
def slow_origin(image_server: ImageServer) -> Iterator[ImageServer]:
    image_server.delay = 0.1  # so a request of IMAGES photos lasts a few seconds
    yield image_server
    image_server.delay = 0.0


def upload_many(service: Service, server: ImageServer, tag: str) -> tuple[str, list[str]]:
    urls = server.photo_urls(IMAGES, tag=tag)
    pairs = zip(urls[::2], urls[1::2], strict=True)
    rows = "".join(f'{n},Product {n},"{a},{b}"\n' for n, (a, b) in enumerate(pairs))
    response = service.upload("S. No,Product Name,Input Image Urls\n" + rows)
    assert response.status_code == 202, response.text
    return response.json()["request_id"], urls


def wait_for_progress(service: Service, request_id: str, at_least: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done: int = httpx.get(f"{service.base_url}/status/{request_id}").json()["progress"]["done"]
        if done >= at_least:
            return done
        time.sleep(0.02)
    raise AssertionError(f"no progress on {request_id}")


def assert_every_image_exactly_once(service: Service, request_id: str, urls: list[str]) -> None:
    status = service.wait_until_finished(request_id, timeout=120)
    assert status["status"] == "completed"
    assert status["progress"] == {
        "total": IMAGES,
        "done": IMAGES,
        "failed": 0,
        "kept_original": 0,
        "percent": 100.0,
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
    done_before = wait_for_progress(service, request_id, at_least=5)
    workers = codec_workers(service)
    assert workers
    service.signal(signal.SIGKILL)
    service.wait()
    assert done_before < IMAGES
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers):  # orphans go by themselves
        assert time.monotonic() < deadline, "the killed server's codec workers live on"
        time.sleep(0.1)

    service.start()
    assert_every_image_exactly_once(service, request_id, urls)


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
    wait_for_progress(service, request_id, at_least=5)
    workers = codec_workers(service)
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    assert_every_image_exactly_once(service, request_id, urls)
    assert workers[0] not in codec_workers(service)  # replaced
    assert "a codec worker process died" in service.log_path.read_text()


@pytest.mark.parametrize("grace", ["10", "0"])
def test_sigterm_stops_gracefully_and_the_next_start_resumes(
    make_service: ServiceFactory, slow_origin: ImageServer, grace: str
) -> None:
    # Small batches, so that most of the request is still waiting when the signal comes.
    service = make_service(SHUTDOWN_GRACE=grace, BATCH_SIZE="4", FETCH_CONCURRENCY="4")
    request_id, urls = upload_many(service, slow_origin, f"term{grace}")
    wait_for_progress(service, request_id, at_least=5)
    service.signal(signal.SIGTERM)
    assert service.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert "Application shutdown complete" in service.log_path.read_text()

    with sqlite3.connect(service.data_dir / "imgcrunch.db") as db:
        done, claimed = db.execute(
            "SELECT sum(status = 'done'), sum(status = 'pending' AND claimed_by IS NOT NULL) "
            "FROM images WHERE request_id = ?",
            (request_id.replace("-", ""),),
        ).fetchone()
    assert claimed == 0  # in-flight work was finished or handed back, not left claimed
    assert 0 < done < IMAGES

    service.start()
    assert_every_image_exactly_once(service, request_id, urls)
