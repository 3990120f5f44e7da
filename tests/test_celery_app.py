"""Scale-out mode for real: the API and `imgcrunch worker` processes on PostgreSQL and Redis."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imgcrunch.celery_app import celery_config
from imgcrunch.config import Settings
from imgcrunch.signing import new_secret, verify
from tests import marketplace_run, servers
from tests.plugins.origin import ImageServer, OriginDelay
from tests.plugins.receivers import Receiver
from tests.plugins.services import Service, ServiceFactory, scrape
from tests.products import products_csv
from tests.scale_out import (
    CLAIM_TIMEOUT,
    ScaleOut,
    Worker,
    running_scale_out,
)
from tests.service_process import free_port
from tests.waiting import wait_until

IMAGES = 240  # 80 products of three photos: many batches, shared by both workers


@pytest.fixture
def extra_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    """More settings for `scale_out`, by `parametrize(..., indirect=True)`."""
    extra: dict[str, str] = getattr(request, "param", {})
    return extra


@pytest.fixture
def scale_out(
    make_service: ServiceFactory,
    postgres: servers.Postgres,
    redis_server: servers.Redis,
    tmp_path: Path,
    extra_settings: dict[str, str],
) -> Iterator[ScaleOut]:
    with running_scale_out(
        make_service,
        tmp_path,
        database_url=postgres.new_database(),
        broker_url=servers.REDIS_URL,
        key_prefix=redis_server.new_prefix(),
        settings=extra_settings,
    ) as deployment:
        yield deployment


def normalised_output(service: Service, request_id: str) -> list[list[str]]:
    """The output CSV with this service's base URL and the owner's scope taken out of its URLs."""
    text = httpx.get(f"{service.base_url}/download/{request_id}").text
    text = re.sub(re.escape(service.base_url) + r"/images/[0-9a-f-]{36}/", "<out>/", text)
    return list(csv.reader(io.StringIO(text)))


# A failed delivery would be retried within 1.2 s (the schedule's 1 s, +20%).
@pytest.mark.parametrize("extra_settings", [{"webhook_retry_schedule": "1,1"}], indirect=True)
def test_many_workers_share_a_request_and_a_killed_one_loses_nothing(
    scale_out: ScaleOut,
    image_server: ImageServer,
    receiver: Receiver,
    make_service: ServiceFactory,
    origin_delay: OriginDelay,
) -> None:
    urls = image_server.photo_urls(IMAGES, tag="scale-")
    origin_delay(0.02)  # a request that lasts long enough to kill a worker in it
    response = scale_out.api.upload(products_csv(urls), webhook_url=receiver.url)
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]

    doomed, survivor = scale_out.workers
    pool_pid = doomed.pool_pids()[0]
    wait_until("the doomed worker to hold a claim", lambda: scale_out.claims_held_by(pool_pid))
    doomed.kill_whole()
    status = scale_out.api.wait_until_finished(request_id, timeout=120)

    assert status["status"] == "completed", status
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
    # The dead worker's claims went stale and the sweep sent them to the survivor.
    assert "re-running a claim its holder stopped renewing" in survivor.log()
    # One pool process (--concurrency 1) compresses on every core the settings give it.
    assert f"with {len(os.sched_getaffinity(0))} codec threads" in survivor.log()
    assert "imgcrunch.process_next" in doomed.log()  # both workers took part

    rows = scale_out.image_rows(request_id)
    assert [url for url, *_ in rows] == urls  # every image once, none added
    assert all(state == "done" and key for _, state, key, _ in rows)
    assert any(attempts > 1 for *_, attempts in rows)  # the killed batch was run again

    output = normalised_output(scale_out.api, request_id)
    assert len(output) == 1 + IMAGES // 3
    for key in {key for _, _, key, _ in rows if key}:
        served = httpx.get(f"{scale_out.api.base_url}/{key}")
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/jpeg"

    # Exactly one webhook, for the one finalisation, whichever worker finished last: one event
    # in the outbox, and it recorded as delivered, so nothing more goes out for this request.
    def deliveries() -> list[tuple[Any, ...]]:
        return scale_out.query(
            "SELECT status FROM webhook_deliveries WHERE request_id = $1", request_id
        )

    wait_until("the webhook delivered", lambda: deliveries() == [("delivered",)])
    # Nor later: by now a retry (1.2 s at most), or a sweep (every second), would have come.
    time.sleep(3)
    assert len(receiver.deliveries) == 1
    # Signed with the secret the workers made in the folder they share with the API.
    secret = (scale_out.api.data_dir / "webhook-secret").read_text().strip()
    event = verify(receiver.deliveries[0].body, receiver.deliveries[0].headers, secret)
    assert (event["type"], event["data"]["request_id"]) == ("request.completed", request_id)

    # The same input through embedded mode gives the same output, byte for byte of each image.
    embedded = make_service()
    embedded_id = embedded.upload(products_csv(urls)).json()["request_id"]
    assert embedded.wait_until_finished(embedded_id, timeout=120)["status"] == "completed"
    assert normalised_output(embedded, embedded_id) == output


def test_a_killed_pool_process_has_its_batch_redelivered(
    scale_out: ScaleOut, image_server: ImageServer, origin_delay: OriginDelay
) -> None:
    urls = image_server.photo_urls(48, tag="pool-kill-")
    scale_out.workers[1].stop()  # one worker, so the one killed process surely held work
    origin_delay(0.05)
    request_id = scale_out.api.upload(products_csv(urls)).json()["request_id"]
    worker = scale_out.workers[0]
    pool_pid = worker.pool_pids()[0]
    wait_until("the pool process to hold a claim", lambda: scale_out.claims_held_by(pool_pid))
    os.kill(pool_pid, signal.SIGKILL)  # Celery starts a new one; the message is requeued
    status = scale_out.api.wait_until_finished(request_id, timeout=120)
    assert status["progress"]["done"] == 48, status
    assert "WorkerLostError" in worker.log()
    assert [url for url, *_ in scale_out.image_rows(request_id)] == urls


@pytest.mark.parametrize("extra_settings", [{"batch_size": "2"}], indirect=True)
def test_a_small_request_is_not_queued_behind_a_huge_one(
    scale_out: ScaleOut, image_server: ImageServer, origin_delay: OriginDelay
) -> None:
    scale_out.workers[1].stop()  # one worker process: the order it is given work decides

    def done(request_id: str) -> int:
        status = httpx.get(f"{scale_out.api.base_url}/status/{request_id}").json()
        count: int = status["progress"]["done"]
        return count

    origin_delay(0.03)
    huge = scale_out.api.upload(products_csv(image_server.photo_urls(90, tag="huge-")))
    huge_id = huge.json()["request_id"]
    wait_until("the huge request to start", lambda: done(huge_id) > 0)
    small = scale_out.api.upload(products_csv(image_server.photo_urls(3, tag="small-")))
    small_status = scale_out.api.wait_until_finished(small.json()["request_id"])
    huge_done_then = done(huge_id)
    huge_status = scale_out.api.wait_until_finished(huge_id, timeout=120)
    assert small_status["status"] == "completed"
    # Its two batches came next, not after the huge request's 45.
    assert huge_done_then < 45, huge_done_then
    assert huge_status["progress"]["done"] == 90


def test_a_marketplace_profile_is_made_and_reported_by_the_workers(
    scale_out: ScaleOut, image_server: ImageServer
) -> None:
    request_id = marketplace_run.upload(scale_out.api, image_server)
    marketplace_run.check(scale_out.api, request_id)


def test_each_worker_serves_the_sum_of_its_pool_processes_metrics(
    scale_out: ScaleOut,
    image_server: ImageServer,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    for worker in scale_out.workers:
        worker.stop()
    ports = [free_port(), free_port()]
    workers = [
        Worker(
            f"metrics-{port}",
            scale_out.api.env | {"IMGCRUNCH_WORKER_METRICS_PORT": str(port)},
            tmp_path / f"metrics-{port}.log",
            options=["--concurrency", "2", "--without-mingle", "--without-gossip"],
        )
        for port in ports
    ]
    urls = [*image_server.photo_urls(29, tag="metrics-"), image_server.url("/missing.jpg")]
    try:
        for worker in workers:
            worker.spawn()
        for worker in workers:
            worker.wait_ready()
        response = scale_out.api.upload(products_csv(urls), webhook_url=receiver.url)
        request_id = response.json()["request_id"]
        status = scale_out.api.wait_until_finished(request_id)
        # Recorded as delivered: the attempt is counted before it is recorded.
        wait_until(
            "the webhook recorded as delivered",
            lambda: scale_out.api.status(request_id)["webhook"]["state"] == "delivered",
        )
        scraped = [scrape(f"http://127.0.0.1:{port}/metrics") for port in ports]
        api = scrape(f"{scale_out.api.base_url}/metrics")
    finally:
        for worker in workers:
            worker.stop()

    def total(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return sum(figures.get(key, 0.0) for figures in scraped)

    assert status["status"] == "completed_with_errors"
    # Both workers took part; each added up its two pool processes, and nothing was lost.
    assert all(figures.get(("imgcrunch_fetch_seconds_count", ()), 0) for figures in scraped)
    assert total("imgcrunch_images_total", outcome="done", code="") == 29
    assert total("imgcrunch_images_total", outcome="failed", code="http_error") == 1
    assert total("imgcrunch_image_bytes_total", direction="in") == status["bytes_in"]
    assert total("imgcrunch_image_bytes_total", direction="out") == status["bytes_out"]
    assert total("imgcrunch_fetch_seconds_count") == 30
    assert total("imgcrunch_codec_seconds_count") == 29
    assert total("imgcrunch_webhook_attempts_total", outcome="delivered") == 1
    # The API processed nothing itself; it serves what the database says.
    assert api.get(("imgcrunch_images_total", (("code", ""), ("outcome", "done"))), 0) == 0
    assert api[("imgcrunch_requests", (("status", "completed_with_errors"),))] == 1
    assert api[("imgcrunch_queued_images", ())] == 0
    assert ("imgcrunch_requests", (("status", "completed_with_errors"),)) not in scraped[0]


def test_readyz_reports_the_database_the_broker_and_the_storage(
    scale_out: ScaleOut, make_service: ServiceFactory
) -> None:
    ready = httpx.get(f"{scale_out.api.base_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}

    no_broker = make_service(
        database_url=scale_out.database_url,
        queue="celery",
        broker_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        auto_migrate="false",
    )
    answer = httpx.get(f"{no_broker.base_url}/readyz", timeout=30)
    assert answer.status_code == 503
    assert answer.json()["checks"]["database"] == "ok"
    assert answer.json()["checks"]["broker"].startswith("unreachable")


def test_upload_is_accepted_while_the_broker_is_down_and_runs_once_it_is_back(
    scale_out: ScaleOut, image_server: ImageServer, make_service: ServiceFactory
) -> None:
    # An API whose broker is unreachable still records the request (the database is the truth);
    # the sweep of an API that can reach the broker sends it to the workers.
    no_broker = make_service(
        database_url=scale_out.database_url,
        data_dir=str(scale_out.api.data_dir),  # the workers read the kept CSV from there
        queue="celery",
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        auto_migrate="false",
        claim_timeout=str(CLAIM_TIMEOUT),
    )
    response = no_broker.upload(products_csv(image_server.photo_urls(6, tag="lost-send-")))
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    status = scale_out.api.wait_until_finished(request_id, timeout=60)
    assert status["status"] == "completed"


def test_the_broker_is_configured_never_to_lose_a_message() -> None:
    config = celery_config(Settings(broker_key_prefix="team-a:", claim_timeout=300))
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"]["visibility_timeout"] > 300
    assert config["broker_transport_options"]["global_keyprefix"] == "team-a:"


def test_worker_options_pass_through_to_celery() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imgcrunch", "worker", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "--concurrency" in result.stdout
    serve = subprocess.run(
        [sys.executable, "-m", "imgcrunch", "serve", "--concurrency", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert serve.returncode == 2
    assert re.search(r"unrecognized arguments: --concurrency 2", serve.stderr)


def test_a_worker_without_its_database_retries_a_bounded_number_of_times(
    scale_out: ScaleOut, image_server: ImageServer, tmp_path: Path
) -> None:
    for worker in scale_out.workers:
        worker.stop()
    cut_off = Worker(
        "cut-off",
        scale_out.api.env
        | {
            # Nothing listens there: every task meets a refused database connection.
            "IMGCRUNCH_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x",
            "IMGCRUNCH_TASK_MAX_RETRIES": "2",
        },
        tmp_path / "cut-off.log",
    )
    cut_off.spawn()
    try:
        cut_off.wait_ready()
        response = scale_out.api.upload(products_csv(image_server.photo_urls(6, tag="no-db-")))
        request_id = response.json()["request_id"]
        # The ingest is tried three times in all (backoff up to 1, then 2 s), then given up.
        wait_until("the retries to run out", lambda: "giving up after 2" in cut_off.log())
        assert cut_off.log().count("imgcrunch.ingest: ") == 3
        assert cut_off.log().count("retrying in") == 2
    finally:
        cut_off.stop()
    # Nothing was lost: the request is still queued, and a healthy worker's sweep ingests it.
    assert httpx.get(f"{scale_out.api.base_url}/status/{request_id}").json()["status"] == "queued"
    healthy = scale_out.workers[0]
    healthy.spawn()
    healthy.wait_ready()
    assert scale_out.api.wait_until_finished(request_id, timeout=60)["status"] == "completed"


HOOK_SECRET = new_secret()


@pytest.mark.parametrize(
    "extra_settings",
    [
        {
            "webhook_retry_schedule": "0.5,0.5",
            "sweep_interval": "3600",
            "webhook_secret": HOOK_SECRET,
        }
    ],
    indirect=True,
)
def test_workers_retry_a_failed_webhook_before_the_next_sweep(
    scale_out: ScaleOut, image_server: ImageServer, receiver: Receiver
) -> None:
    # The next sweep is an hour away: only the countdown task a failed attempt leaves can
    # deliver it again.
    receiver.script, receiver.secret = ["500", "204"], HOOK_SECRET
    urls = image_server.photo_urls(3, tag="celery-hook-")
    response = scale_out.api.upload(products_csv(urls), webhook_url=receiver.url)
    request_id = response.json()["request_id"]
    assert scale_out.api.wait_until_finished(request_id, timeout=60)["status"] == "completed"
    receiver.wait_for_deliveries(2)
    assert [d.answer for d in receiver.deliveries] == ["500", "204"]
    assert all(d.verified for d in receiver.deliveries)
    assert len({d.id for d in receiver.deliveries}) == 1
