"""Signing webhook deliveries, and checking them: Standard Webhooks 1.0, with the standard library
alone, so that the settings can check a secret and a receiver can verify without the service.

A delivery has `webhook-id` (the same on every attempt: the receiver's idempotency key),
`webhook-timestamp` (Unix seconds, of the attempt) and `webhook-signature`,
`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` for each configured secret. `verify` is
what a receiver runs; the tests use it too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

SECRET_PREFIX = "whsec_"
TOLERANCE = 300  # seconds a receiver should accept between a timestamp and its own clock


class WebhookVerificationError(Exception):
    """The delivery is not from us, was altered, or is too old (or too new) to accept."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside `whsec_<base64>`; ValueError if `secret` is not of that form."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret holds at least 16 bytes")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of the message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    signing_secrets: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> str:
    """Every secret signs, space-separated, so receivers can move to a new one at their pace."""
    return " ".join(sign(secret, message_id, timestamp, body) for secret in signing_secrets)


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> Any:
    """What a receiver runs: the event, parsed, or WebhookVerificationError.

    Checks that the timestamp is within `tolerance` seconds of now (a replayed old delivery
    fails) and that one of the signatures is ours over exactly these bytes, in constant time.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    data = body.encode() if isinstance(body, str) else body
    expected = sign(secret, message_id, timestamp, data).encode()
    if not any(hmac.compare_digest(expected, given.encode()) for given in signatures.split()):
        raise WebhookVerificationError("no signature matches")
    return json.loads(data)
