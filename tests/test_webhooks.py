"""Webhooks: signing and verifying (Standard Webhooks 1.0), the secret kept on disk, the retry
policy, and deliveries to a real local receiver that misbehaves on purpose."""

from __future__ import annotations

import json
import random
import signal
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from imgcrunch.config import Settings
from imgcrunch.models import DeliveryStatus
from imgcrunch.signing import WebhookVerificationError, new_secret, sign, signature_header, verify
from imgcrunch.webhooks import SECRET_FILE, DeliveryPolicy, Outcome, signing_secrets
from tests.conftest import (
    ImageServer,
    Receiver,
    Service,
    ServiceFactory,
    start_receiver,
)
from tests.service_process import free_port

SECRET = new_secret()
OLD_SECRET = new_secret()
NOW = 1_800_000_000


def signed(body: bytes, *, secrets: tuple[str, ...] = (SECRET,), at: int = NOW) -> dict[str, str]:
    return {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(at),
        "Webhook-Signature": signature_header(secrets, "msg_1", at, body),
    }


# --- signing and verifying ------------------------------------------------------------------


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    # From the Standard Webhooks specification's reference libraries.
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_signed_delivery_verifies_and_parses() -> None:
    body = b'{"type":"request.completed","data":{}}'
    assert verify(body, signed(body), SECRET, now=NOW + 10) == json.loads(body)
    assert verify(body.decode(), signed(body), SECRET, now=NOW - 10)  # clocks differ a little


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered body", "no signature matches"),
        ("wrong secret", "no signature matches"),
        ("old timestamp", "too far from now"),
        ("future timestamp", "too far from now"),
        ("timestamp re-signed by someone else", "no signature matches"),
        ("no signature", "missing"),
    ],
)
def test_the_verifier_rejects(case: str, reason: str) -> None:
    body = b'{"type":"request.completed"}'
    headers, now, secret = signed(body), NOW, SECRET
    if case == "tampered body":
        body = body.replace(b"completed", b"failed")
    elif case == "wrong secret":
        secret = new_secret()
    elif case == "old timestamp":
        now = NOW + 301
    elif case == "future timestamp":
        now = NOW - 301
    elif case == "timestamp re-signed by someone else":
        headers["Webhook-Timestamp"] = str(NOW + 60)
        now = NOW + 60
    else:
        del headers["Webhook-Signature"]
    with pytest.raises(WebhookVerificationError, match=reason):
        verify(body, headers, secret, now=now)


def test_every_secret_signs_so_receivers_can_rotate() -> None:
    body = b"{}"
    headers = signed(body, secrets=(SECRET, OLD_SECRET))
    assert len(headers["Webhook-Signature"].split()) == 2
    assert verify(body, headers, SECRET, now=NOW) == {}
    assert verify(body, headers, OLD_SECRET, now=NOW) == {}


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


@pytest.mark.slow
def test_retry_after_is_honoured_up_to_the_longest_wait() -> None:
    status, at = POLICY.after(1, Outcome(429, "HTTP 429", retry_after=42), T0)
    assert (status, at) == (DeliveryStatus.PENDING, T0 + timedelta(seconds=42))
    _, at = POLICY.after(1, Outcome(503, "HTTP 503", retry_after=10**9), T0)
    assert at == T0 + timedelta(days=1)


# --- a real receiver (tests/conftest.py) ----------------------------------------------------


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
    state: dict[str, Any] = httpx.get(f"{service.base_url}/status/{request_id}").json()["webhook"]
    return state


def test_a_receiver_that_blips_gets_the_event_once_every_attempt_signed_and_recorded(
    make_service: ServiceFactory, image_server: ImageServer, receiver: Receiver
) -> None:
    receiver.script = ["500", "timeout", "429:1", "204"]
    service = make_service(**QUICK_RETRIES)
    request_id = finish_request(service, image_server, receiver.url)
    # Recorded as delivered: the outbox sends nothing more for it from then on.
    receiver.wait_for(lambda: webhook_of(service, request_id)["state"] == "delivered")

    attempts = receiver.attempts
    assert [a["answer"] for a in attempts] == ["500", "timeout", "429:1", "204"]
    assert all(a["verified"] for a in attempts)  # every attempt, signed with the new secret
    assert len({a["id"] for a in attempts}) == 1  # the same webhook-id on every attempt
    assert attempts[3]["at"] - attempts[2]["at"] >= 1.0  # Retry-After: 1, not the 0.3 s schedule
    event = attempts[3]["event"]
    assert event["type"] == "request.completed"
    download = f"{service.base_url}/download/{request_id}"
    assert event["data"] == {
        "request_id": request_id,
        "status": "completed",
        "progress": {"total": 1, "done": 1, "failed": 0, "kept_original": 0, "percent": 100.0},
        "output_csv_url": download,
        "download_url": download,
    }

    state = webhook_of(service, request_id)
    assert (state["event_id"], state["attempts"], state["response_status"]) == (
        attempts[0]["id"],
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
    receiver.wait_for(lambda: len(receiver.attempts) >= 2)
    state = webhook_of(service, request_id)
    assert state["state"] == "failing"
    assert state["last_error"] == "HTTP 503 Service Unavailable"
    assert state["next_attempt_at"] is not None  # the 30 s retry

    receiver.script = ["410"]  # the receiver asks us to stop
    with httpx.Client(base_url=service.base_url) as client:
        redelivered = client.post(f"/requests/{request_id}/webhook/redeliver")
        assert redelivered.status_code == 202
        receiver.wait_for(lambda: webhook_of(service, request_id)["state"] == "gave_up")
        assert len(receiver.attempts) == 3

        receiver.script = ["200"]
        assert client.post(f"/requests/{request_id}/webhook/redeliver/").status_code == 202
        receiver.wait_for(lambda: webhook_of(service, request_id)["state"] == "delivered")
    assert len({a["id"] for a in receiver.attempts}) == 1
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
    receiver = Receiver(url=f"http://127.0.0.1:{port}/hooks", script=["204"], secret=SECRET)
    service = make_service(**QUICK_RETRIES | {"WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1,1,1,1"})
    request_id = finish_request(service, image_server, receiver.url)
    deadline = time.monotonic() + 10
    while webhook_of(service, request_id)["state"] != "failing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    service.signal(signal.SIGKILL)
    service.wait()

    server = start_receiver(receiver, port)
    try:
        service.start()
        receiver.wait_for(lambda: receiver.accepted)
        receiver.wait_for(lambda: webhook_of(service, request_id)["state"] == "delivered")
    finally:
        server.shutdown()
        server.server_close()
    assert receiver.accepted[0]["verified"]
    first = webhook_of(service, request_id)["history"][0]
    assert first["error"].startswith("connect_error: could not connect")


def test_a_request_that_cannot_be_processed_sends_request_failed(
    make_service: ServiceFactory, image_server: ImageServer, receiver: Receiver
) -> None:
    # A long first request holds the queue, so the second waits; meanwhile its kept CSV goes.
    service = make_service(**QUICK_RETRIES | {"FETCH_CONCURRENCY": "1", "BATCH_SIZE": "1"})
    image_server.delay = 0.2
    try:
        rows = "".join(f"{n},P{n},{url}\n" for n, url in enumerate(image_server.photo_urls(10)))
        first = service.upload("S. No,Product Name,Input Image Urls\n" + rows)
        second = service.upload(
            "S. No,Product Name,Input Image Urls\n1,A,https://example.com/a.jpg\n",
            webhook_url=receiver.url,
        )
        assert first.status_code == second.status_code == 202
        request_id = second.json()["request_id"]
        (service.data_dir / "csv" / request_id / "input.csv").unlink()
        receiver.wait_for(lambda: receiver.accepted)
    finally:
        image_server.delay = 0.0
    event = receiver.accepted[0]["event"]
    assert event["type"] == "request.failed"
    assert event["data"] == {
        "request_id": request_id,
        "status": "failed",
        "progress": {"total": 1, "done": 0, "failed": 0, "kept_original": 0, "percent": 0.0},
        "output_csv_url": None,
        "download_url": None,
    }
    status = httpx.get(f"{service.base_url}/status/{request_id}").json()
    assert status["status"] == "failed"
    assert status["error"].startswith("input CSV unreadable")
    assert status["webhook"]["state"] == "delivered"
