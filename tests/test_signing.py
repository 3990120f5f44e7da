"""Signing webhook deliveries and verifying them: Standard Webhooks 1.0."""

from __future__ import annotations

import json

import pytest

from imgcrunch.signing import (
    WebhookVerificationError,
    new_secret,
    secret_key,
    sign,
    signature_header,
    verify,
)

SECRET = new_secret()
OLD_SECRET = new_secret()
NOW = 1_800_000_000


def signed(body: bytes, *, secrets: tuple[str, ...] = (SECRET,), at: int = NOW) -> dict[str, str]:
    return {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(at),
        "Webhook-Signature": signature_header(secrets, "msg_1", at, body),
    }


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


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("secret", "starts with 'whsec_'"),
        ("whsec_not base64!", "followed by base64"),
        ("whsec_QUJD", "at least 16 bytes"),
    ],
)
def test_an_unusable_secret_is_refused_saying_why(secret: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        secret_key(secret)
    with pytest.raises(ValueError, match=reason):
        sign(secret, "msg_1", NOW, b"{}")


def test_new_secrets_are_random_and_hold_32_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first != second
    assert len(secret_key(first)) == 32


def test_the_tolerance_is_five_minutes_either_way() -> None:
    body = b'{"a":1}'
    for now in (NOW - 300, NOW + 300):
        assert verify(body, signed(body), SECRET, now=now) == {"a": 1}


def test_header_names_are_read_in_any_case() -> None:
    body = b"{}"
    for spelled in (str.lower, str.upper):
        headers = {spelled(name): value for name, value in signed(body).items()}
        assert verify(body, headers, SECRET, now=NOW) == {}


def test_a_timestamp_that_is_not_a_number_is_refused() -> None:
    body = b"{}"
    headers = signed(body) | {"Webhook-Timestamp": "soon"}
    with pytest.raises(WebhookVerificationError, match="not a number"):
        verify(body, headers, SECRET, now=NOW)
