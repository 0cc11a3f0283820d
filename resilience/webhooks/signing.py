"""Signing webhook requests, and verifying them (what a receiver does).

The signature is HMAC-SHA256 with the subscriber's secret over f"{timestamp}.{body}", hex-encoded and
prefixed "sha256=". Signing the timestamp lets a receiver reject replays older than its tolerance.
"""

import hashlib
import hmac
import json
import secrets
import time

EVENT_HEADER = "X-Bulwark-Event"
EVENT_ID_HEADER = "X-Bulwark-Event-Id"
TIMESTAMP_HEADER = "X-Bulwark-Timestamp"
SIGNATURE_HEADER = "X-Bulwark-Signature"
ATTEMPT_HEADER = "X-Bulwark-Attempt"


def new_secret() -> str:
    """Return a fresh subscriber secret (256 random bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def webhook_body(payload: dict) -> bytes:
    """Serialize a payload the same way on every attempt (the receiver may compare retries)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def webhook_signature(secret: str, timestamp: int | str, body: bytes | str) -> str:
    """Return the X-Bulwark-Signature value for `body` sent at `timestamp` (Unix seconds)."""
    message = _bytes(str(timestamp)) + b"." + _bytes(body)
    return "sha256=" + hmac.new(_bytes(secret), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    timestamp: int | str | None,
    body: bytes | str,
    signature: str | None,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """Return True if `signature` signs exactly `body` at `timestamp` with `secret`, and `timestamp` is
    within `tolerance` seconds of `now` (default: the clock). Never raises on malformed input."""
    if not timestamp or not signature:
        return False
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance:
        return False
    return hmac.compare_digest(webhook_signature(secret, timestamp, body), signature)


def webhook_headers(
    *, secret: str, event: str, event_id: str, body: bytes, attempt: int, timestamp: int | None = None
) -> dict[str, str]:
    """Return the headers of one delivery attempt, signed now (or at `timestamp`)."""
    sent_at = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "User-Agent": "Bulwark-Webhooks/1",
        EVENT_HEADER: event,
        EVENT_ID_HEADER: event_id,
        ATTEMPT_HEADER: str(attempt),
        TIMESTAMP_HEADER: str(sent_at),
        SIGNATURE_HEADER: webhook_signature(secret, sent_at, body),
    }
