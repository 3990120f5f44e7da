"""Faults of ours, tried as an operator would: the images' disk fills up, a worker is killed,
the broker and the database are killed or restarted. No image fails for any of them, each is
done exactly once, and every request completes by itself once the fault has cleared."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import servers
from tests.plugins.disks import SmallDisk, SmallDiskFactory
from tests.plugins.origin import ImageServer, OriginDelay
from tests.plugins.services import Service, ServiceFactory, scrape
from tests.products import products_csv
from tests.scale_out import ScaleOut, running_scale_out
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[servers.PrivateRedis]:
    redis = servers.PrivateRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def private_postgres() -> Iterator[servers.PrivatePostgres]:
    postgres = servers.PrivatePostgres()
    postgres.init()
    postgres.start()
    yield postgres
    postgres.remove()


def wait_for_done(service: Service, request_id: str, at_least: int) -> None:
    def far_enough() -> bool:
        status = service.status(request_id)
        assert status["progress"]["failed"] == 0, status
        return bool(status["progress"]["done"] >= at_least)

    wait_until(f"{at_least} images done", far_enough, timeout=120)


def assert_every_image_done_exactly_once(
    service: Service, request_id: str, urls: list[str]
) -> None:
    status = service.wait_until_finished(request_id, timeout=240)
    assert status["status"] == "completed", status
    assert status["progress"]["done"] == len(urls)
    assert status["progress"]["failed"] == 0
    assert status["waiting"] is None
    images: list[dict[str, Any]] = []
    with service.client() as client:
        page = f"/requests/{request_id}/images?limit=500"
        images = client.get(page).json()["images"]
        assert [image["source_url"] for image in images] == urls  # each once, none added
        assert all(image["status"] == "done" for image in images)
        output = client.get(f"/download/{request_id}").text
    outputs = [image["output_url"] for image in images]
    assert all(url in output for url in outputs)
    for url in outputs[:: max(1, len(outputs) // 20)]:  # a sample: each is a real file
        assert httpx.get(url).status_code == 200, url


# --- the images' disk ---------------------------------------------------------------------------


def test_a_disk_that_fills_up_fails_no_image_and_the_request_resumes_once_freed(
    make_service: ServiceFactory,
    image_server: ImageServer,
    origin_delay: OriginDelay,
    small_disk: SmallDiskFactory,
) -> None:
    with small_disk("16m") as disk:
        service = make_service(storage_dir=str(disk.path), min_free_bytes=str(1 << 20))
        urls = image_server.photo_urls(90, tag="outage-disk-")
        origin_delay(0.05)  # long enough to fill the disk in the middle of it
        request_id = service.upload(products_csv(urls)).json()["request_id"]
        wait_for_done(service, request_id, 9)
        disk.fill()
        waiting = wait_until_waiting(service, request_id, "storage full")
        ready = httpx.get(f"{service.base_url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["storage"].startswith("full: ")
        assert scrape(f"{service.base_url}/metrics")[("imgcrunch_storage_free_bytes", ())] < (
            1 << 20
        )
        assert waiting["progress"]["failed"] == 0
        disk.free()
        origin_delay(0)
        assert_every_image_done_exactly_once(service, request_id, urls)
        assert httpx.get(f"{service.base_url}/readyz").status_code == 200
        log = service.log_path.read_text()
        assert log.count("work is waiting: storage full") == 1  # said once, not per image
        assert "work goes on: storage full has cleared" in log


def wait_until_waiting(service: Service, request_id: str, reason: str) -> dict[str, Any]:
    def waiting() -> dict[str, Any] | None:
        status = service.status(request_id)
        return status if str(status.get("waiting") or "").startswith(reason) else None

    return wait_until(f"the status to say {reason!r}", waiting)


# --- the broker and the database ----------------------------------------------------------------


def test_a_broker_killed_and_restarted_empty_costs_a_sweep_not_the_request(
    make_service: ServiceFactory,
    postgres: servers.Postgres,
    private_redis: servers.PrivateRedis,
    image_server: ImageServer,
    tmp_path: Path,
    origin_delay: OriginDelay,
) -> None:
    urls = image_server.photo_urls(201, tag="outage-redis-")
    with running_scale_out(
        make_service, tmp_path, database_url=postgres.new_database(), broker_url=private_redis.url
    ) as deployment:
        origin_delay(0.02)
        request_id = deployment.api.upload(products_csv(urls)).json()["request_id"]
        wait_for_done(deployment.api, request_id, len(urls) // 4)
        private_redis.kill()  # every queued message is gone with it
        time.sleep(2)  # the outage
        private_redis.start()
        # Back, and empty, while the database knows of images still to do.
        assert private_redis.client().llen("imgcrunch") == 0
        assert deployment.api.status(request_id)["progress"]["done"] < len(urls)
        origin_delay(0)
        assert_every_image_done_exactly_once(deployment.api, request_id, urls)


def test_a_database_restarted_mid_request_answers_503_meanwhile_and_loses_nothing(
    make_service: ServiceFactory,
    private_postgres: servers.PrivatePostgres,
    redis_server: servers.Redis,
    image_server: ImageServer,
    tmp_path: Path,
    origin_delay: OriginDelay,
) -> None:
    urls = image_server.photo_urls(201, tag="outage-postgres-")
    with running_scale_out(
        make_service,
        tmp_path,
        database_url=private_postgres.url,
        broker_url=servers.REDIS_URL,
        key_prefix=redis_server.new_prefix(),
    ) as deployment:
        api = deployment.api
        origin_delay(0.02)
        request_id = api.upload(products_csv(urls)).json()["request_id"]
        wait_for_done(api, request_id, len(urls) // 4)
        private_postgres.stop("fast")
        away = httpx.get(f"{api.base_url}/status/{request_id}", timeout=30)
        assert away.status_code == 503
        assert away.json()["error"]["code"] == "database_unavailable"
        assert away.headers["retry-after"] == "5"
        ready = httpx.get(f"{api.base_url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("unreachable")
        time.sleep(2)  # the outage
        private_postgres.start()
        origin_delay(0)
        assert_every_image_done_exactly_once(api, request_id, urls)


# --- all of it at once --------------------------------------------------------------------------


def test_chaos_disk_full_a_worker_killed_and_the_broker_restarted_in_one_request(
    make_service: ServiceFactory,
    postgres: servers.Postgres,
    private_redis: servers.PrivateRedis,
    image_server: ImageServer,
    tmp_path: Path,
    origin_delay: OriginDelay,
    small_disk: SmallDiskFactory,
) -> None:
    urls = image_server.photo_urls(240, tag="outage-chaos-")
    with (
        small_disk("32m") as disk,
        running_scale_out(
            make_service,
            tmp_path,
            database_url=postgres.new_database(),
            broker_url=private_redis.url,
            settings={"storage_dir": str(disk.path), "min_free_bytes": str(1 << 20)},
        ) as deployment,
    ):
        api = deployment.api
        origin_delay(0.03)
        request_id = api.upload(products_csv(urls)).json()["request_id"]
        fill_and_free(disk, api, request_id, at=len(urls) // 6)
        wait_for_done(api, request_id, len(urls) // 3)
        kill_a_worker(deployment)
        wait_for_done(api, request_id, len(urls) // 2)
        private_redis.kill()
        time.sleep(2)
        private_redis.start()
        origin_delay(0)
        assert_every_image_done_exactly_once(api, request_id, urls)


def fill_and_free(disk: SmallDisk, api: Service, request_id: str, *, at: int) -> None:
    wait_for_done(api, request_id, at)
    disk.fill()
    wait_until_waiting(api, request_id, "storage full")
    disk.free()


def kill_a_worker(deployment: ScaleOut) -> None:
    doomed = deployment.workers[0]
    doomed.kill_whole()
