"""Webhooks: signing and verifying (Standard Webhooks 1.0), the secret kept on disk, the retry
policy, and deliveries to a real local receiver that misbehaves on purpose."""

from __future__ import annotations

import random
import signal
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from imgcrunch.config import Settings
from imgcrunch.models import DeliveryStatus
from imgcrunch.signing import new_secret
from imgcrunch.webhooks import SECRET_FILE, DeliveryPolicy, Outcome, signing_secrets
from tests.plugins.origin import ImageServer
from tests.plugins.receivers import Receiver, start_receiver
from tests.plugins.services import Service, ServiceFactory
from tests.service_process import free_port
from tests.waiting import wait_until

SECRET = new_secret()
OLD_SECRET = new_secret()
NOW = 1_800_000_000


# --- the secret kept on disk ------------------------------------------------------------


def test_a_secret_is_made_once_kept_private_and_shared(tmp_path: Path) -> None:
    made = signing_secrets((), tmp_path)
    assert len(made) == 1
    assert made[0].startswith("whsec_")
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing_secrets((), tmp_path) == made  # the next start, or another process
    assert signing_secrets((OLD_SECRET,), tmp_path) == (OLD_SECRET,)  # configured ones win


def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    seen: list[tuple[str, ...]] = []
    threads = [
        threading.Thread(target=lambda: seen.append(signing_secrets((), tmp_path)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRET_FILE]  # no temp files left


@pytest.mark.parametrize("bad", ["secret", "whsec_not base64!", "whsec_" + "QUJD"])
def test_unusable_secrets_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad: str
) -> None:
    monkeypatch.setenv("IMGCRUNCH_WEBHOOK_SECRET", f"{SECRET},{bad}")
    settings = Settings()
    with pytest.raises(ValueError, match="IMGCRUNCH_WEBHOOK_SECRET: a webhook secret") as refused:
        signing_secrets(settings.webhook_secret, tmp_path)
    assert SECRET not in str(refused.value)


# --- the retry policy -----------------------------------------------------------------------


POLICY = DeliveryPolicy(timeout=10, retry_schedule=(5, 300, 1800), jitter=0.2)
T0 = datetime(2026, 11, 25, tzinfo=UTC)


def test_a_2xx_delivers() -> None:
    assert POLICY.after(1, Outcome(204, None), T0) == (DeliveryStatus.DELIVERED, T0)


def test_failures_follow_the_schedule_with_jitter_then_give_up() -> None:
    random.seed(7)
    for attempt, wait in enumerate(POLICY.retry_schedule, 1):
        status, at = POLICY.after(attempt, Outcome(500, "HTTP 500"), T0)
        assert status == DeliveryStatus.PENDING
        assert timedelta(seconds=wait * 0.8) <= at - T0 <= timedelta(seconds=wait * 1.2)
    assert POLICY.after(4, Outcome(None, "timeout"), T0)[0] == DeliveryStatus.GAVE_UP


def test_410_gone_stops_at_once() -> None:
    assert POLICY.after(1, Outcome(410, "HTTP 410 Gone"), T0)[0] == DeliveryStatus.GAVE_UP


def test_retry_after_is_honoured_up_to_the_longest_wait() -> None:
    status, at = POLICY.after(1, Outcome(429, "HTTP 429", retry_after=42), T0)
    assert (status, at) == (DeliveryStatus.PENDING, T0 + timedelta(seconds=42))
    _, at = POLICY.after(1, Outcome(503, "HTTP 503", retry_after=10**9), T0)
    assert at == T0 + timedelta(days=1)


# --- a real receiver (tests/plugins/receivers.py) ------------------------------------------


@pytest.fixture
def receiver(receiver: Receiver) -> Receiver:
    receiver.secret = SECRET  # the one the services below sign with first
    return receiver


QUICK_RETRIES = {
    "WEBHOOK_SECRET": f"{SECRET},{OLD_SECRET}",
    "WEBHOOK_TIMEOUT": "1",
    "WEBHOOK_RETRY_SCHEDULE": "0.3,0.3,0.3,0.3",
}


def finish_request(service: Service, image_server: ImageServer, webhook_url: str) -> str:
    photo = image_server.photo_urls(1, tag=f"hook-{random.random()}")[0]
    response = service.upload(
        f"S. No,Product Name,Input Image Urls\n1,A,{photo}\n", webhook_url=webhook_url
    )
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    assert service.wait_until_finished(request_id)["status"] == "completed"
    return request_id


def webhook_of(service: Service, request_id: str) -> dict[str, Any]:
    state: dict[str, Any] = service.status(request_id)["webhook"]
    return state


def wait_for_webhook(
    service: Service, request_id: str, what: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The request's webhook state, once `ready` says it is what the test waits for."""

    def check() -> dict[str, Any] | None:
        webhook = webhook_of(service, request_id)
        return webhook if ready(webhook) else None

    return wait_until(what, check)


def wait_until_settled(service: Service, request_id: str) -> dict[str, Any]:
    """The request's webhook state once no attempt is to come: delivered, or given up."""
    return wait_for_webhook(
        service,
        request_id,
        "the webhook delivered or given up",
        lambda hook: hook["state"] in ("delivered", "gave_up"),
    )


def wait_for_state(service: Service, request_id: str, state: str) -> dict[str, Any]:
    return wait_for_webhook(
        service, request_id, f"the webhook to be {state}", lambda hook: hook["state"] == state
    )


def test_a_receiver_that_blips_gets_the_event_once_every_attempt_signed_and_recorded(
    make_service: ServiceFactory, image_server: ImageServer, receiver: Receiver
) -> None:
    receiver.script = ["500", "timeout", "429:1", "204"]
    service = make_service(**QUICK_RETRIES)
    request_id = finish_request(service, image_server, receiver.url)
    # Recorded as delivered: the outbox sends nothing more for it from then on.
    state = wait_for_state(service, request_id, "delivered")

    attempts = receiver.deliveries
    assert [a.answer for a in attempts] == ["500", "timeout", "429:1", "204"]
    assert all(a.verified for a in attempts)  # every attempt, signed with the new secret
    assert len({a.id for a in attempts}) == 1  # the same webhook-id on every attempt
    assert attempts[3].at - attempts[2].at >= 1.0  # Retry-After: 1, not the 0.3 s schedule
    event = attempts[3].event
    assert event["type"] == "request.completed"
    download = f"{service.base_url}/download/{request_id}"
    assert event["data"] == {
        "request_id": request_id,
        "status": "completed",
        "progress": {
            "total": 1,
            "done": 1,
            "failed": 0,
            "kept_original": 0,
            "reused": 0,
            "percent": 100.0,
            "compliant": None,
            "non_compliant": None,
        },
        "output_csv_url": download,
        "download_url": download,
    }

    assert (state["event_id"], state["attempts"], state["response_status"]) == (
        attempts[0].id,
        4,
        204,
    )
    assert [(h["attempt"], h["response_status"]) for h in state["history"]] == [
        (1, 500),
        (2, None),
        (3, 429),
        (4, 204),
    ]
    assert state["history"][1]["error"] == "timeout: no answer within 1 s"
    assert state["history"][3]["error"] is None


def test_status_shows_failing_then_gave_up_and_redeliver_sends_it_again(
    make_service: ServiceFactory, image_server: ImageServer, receiver: Receiver
) -> None:
    receiver.script = ["503"]
    service = make_service(**QUICK_RETRIES | {"WEBHOOK_RETRY_SCHEDULE": "0.5,30"})
    request_id = finish_request(service, image_server, receiver.url)
    receiver.wait_for_deliveries(2)
    state = wait_for_webhook(
        service, request_id, "two attempts recorded", lambda hook: hook["attempts"] == 2
    )
    assert state["state"] == "failing"
    assert state["last_error"] == "HTTP 503 Service Unavailable"
    assert state["next_attempt_at"] is not None  # the 30 s retry

    receiver.script = ["410"]  # the receiver asks us to stop
    with httpx.Client(base_url=service.base_url) as client:
        redelivered = client.post(f"/requests/{request_id}/webhook/redeliver")
        assert redelivered.status_code == 202
        wait_for_state(service, request_id, "gave_up")
        assert len(receiver.deliveries) == 3

        receiver.script = ["200"]
        assert client.post(f"/requests/{request_id}/webhook/redeliver/").status_code == 202
        wait_for_state(service, request_id, "delivered")
    assert len({a.id for a in receiver.deliveries}) == 1
    assert [h["response_status"] for h in webhook_of(service, request_id)["history"]] == [
        503,
        503,
        410,
        200,
    ]


def test_redeliver_answers_clearly_when_there_is_nothing_to_send(
    service: Service, image_server: ImageServer
) -> None:
    request_id = finish_request(service, image_server, webhook_url="")
    with httpx.Client(base_url=service.base_url) as client:
        no_hook = client.post(f"/requests/{request_id}/webhook/redeliver")
        unknown = client.post("/requests/5c0e5c0e-0000-4000-8000-000000000000/webhook/redeliver")
    assert (no_hook.status_code, no_hook.json()["error"]["code"]) == (409, "no_webhook")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")


def test_an_undelivered_event_is_delivered_after_a_restart(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    port = free_port()  # nothing listens there yet: every attempt fails to connect
    receiver = Receiver(url=f"http://127.0.0.1:{port}/hooks", secret=SECRET)
    service = make_service(**QUICK_RETRIES | {"WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1,1,1,1"})
    request_id = finish_request(service, image_server, receiver.url)
    wait_for_state(service, request_id, "failing")
    service.signal(signal.SIGKILL)
    service.wait()

    server = start_receiver(receiver, port)
    try:
        service.start()
        wait_for_state(service, request_id, "delivered")
    finally:
        server.stop()
    assert receiver.accepted[0].verified
    first = webhook_of(service, request_id)["history"][0]
    assert first["error"].startswith("connect_error: could not connect")


def test_a_request_that_cannot_be_processed_sends_request_failed(
    make_service: ServiceFactory, receiver: Receiver
) -> None:
    # An API whose broker is away records the request and ingests nothing; its kept CSV is
    # lost meanwhile. Started again in embedded mode, the service finds it unreadable.
    service = make_service(
        **QUICK_RETRIES, QUEUE="celery", BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    response = service.upload(
        "S. No,Product Name,Input Image Urls\n1,A,https://example.com/a.jpg\n",
        webhook_url=receiver.url,
    )
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    service.stop()
    (service.data_dir / "csv" / request_id / "input.csv").unlink()
    service.env["IMGCRUNCH_QUEUE"] = "inline"
    service.start()

    wait_for_state(service, request_id, "delivered")
    [delivery] = receiver.accepted
    assert delivery.event["type"] == "request.failed"
    assert delivery.event["data"] == {
        "request_id": request_id,
        "status": "failed",
        "progress": {
            "total": 1,
            "done": 0,
            "failed": 0,
            "kept_original": 0,
            "reused": 0,
            "percent": 0.0,
            "compliant": None,
            "non_compliant": None,
        },
        "output_csv_url": None,
        "download_url": None,
    }
    status = service.status(request_id)
    assert status["status"] == "failed"
    assert status["error"].startswith("input CSV unreadable")


# --- where deliveries may go ------------------------------------------------------------------


def test_every_attempt_passes_the_address_guard_a_name_included(
    make_service: ServiceFactory, image_server: ImageServer, receiver: Receiver
) -> None:
    # Private networks refused, as in production; only the image origin let in.
    origin = httpx.URL(image_server.base_url).netloc.decode()
    service = make_service(
        **QUICK_RETRIES | {"WEBHOOK_RETRY_SCHEDULE": "0.2,0.2"},
        ALLOW_PRIVATE_NETWORKS="false",
        ALLOWED_HOSTS=origin,
    )
    # The receiver's own address, by a name: the upload cannot tell, each delivery can.
    by_name = receiver.url.replace("127.0.0.1", "localhost")
    request_id = finish_request(service, image_server, by_name)
    state = wait_until_settled(service, request_id)
    assert receiver.deliveries == []
    assert state["state"] == "gave_up"
    assert [h["attempt"] for h in state["history"]] == [1, 2, 3]
    for attempt in state["history"]:
        assert attempt["error"].startswith("blocked_address: localhost resolves to "), attempt
        assert "is not a public address" in attempt["error"]


def test_a_redirect_is_recorded_and_never_followed(
    make_service: ServiceFactory, image_server: ImageServer, receiver: Receiver
) -> None:
    elsewhere = Receiver()
    server = start_receiver(elsewhere)
    try:
        # 307 and 308 would carry the signed body on to the other address, as a POST.
        receiver.script = [f"302:{elsewhere.url}", f"307:{elsewhere.url}", f"308:{elsewhere.url}"]
        service = make_service(**QUICK_RETRIES | {"WEBHOOK_RETRY_SCHEDULE": "0.2,0.2"})
        request_id = finish_request(service, image_server, receiver.url)
        state = wait_until_settled(service, request_id)
    finally:
        server.stop()
    assert elsewhere.deliveries == []
    assert [(h["response_status"], h["error"]) for h in state["history"]] == [
        (302, "HTTP 302 Found"),
        (307, "HTTP 307 Temporary Redirect"),
        (308, "HTTP 308 Permanent Redirect"),
    ]
    assert len(receiver.deliveries) == 3
