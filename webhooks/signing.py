"""Signing webhook requests to the Standard Webhooks scheme, and verifying them (what a receiver does).

https://www.standardwebhooks.com/ : a request carries `webhook-id` (the event id, the same on every
retry), `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`, a space-separated
list of `v1,<base64 of HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`. The key is the base64-decoded
part of the secret `whsec_<base64>`.

The id is inside the HMAC: a captured request replayed with a new id (to get past a receiver's
duplicate filter) fails verification, and the timestamp bounds how long a replay with the same id is
accepted at all. Several signatures let a subscriber rotate its secret with no gap: while the previous
secret is still valid, a request is signed with both, and a receiver holding either one accepts it.
"""

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from secrets import token_bytes

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
# Not signed, informational only: the event type is also in the (signed) body.
EVENT_HEADER = "X-Bulwark-Event"
ATTEMPT_HEADER = "X-Bulwark-Attempt"

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
SIGNATURE_VERSION = "v1"


def new_secret() -> str:
    """Return a fresh subscriber secret: `whsec_` and the standard base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """Return the HMAC key of `secret` (the base64-decoded part after `whsec_`, which is optional).

    Raise ValueError if it is not standard base64: the Standard Webhooks libraries decode it that way,
    and a key we derived differently would never verify on their side.
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by standard base64") from exc
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def webhook_body(payload: dict) -> bytes:
    """Serialize a payload the same way on every attempt (the receiver may compare retries)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def sign(secret: str, msg_id: str, timestamp: int | str, body: bytes | str) -> str:
    """Return one signature, `v1,<base64>`, of `body` sent as message `msg_id` at `timestamp`."""
    content = _bytes(f"{msg_id}.{timestamp}.") + _bytes(body)
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_header(secrets: Iterable[str], msg_id: str, timestamp: int | str, body: bytes | str) -> str:
    """Return the `webhook-signature` value: one signature per secret, space-separated, in order."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def verify(
    secrets: str | Iterable[str],
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """Return True if `headers` (any mapping; names are matched case-insensitively) carry a timestamp
    within `tolerance` seconds of `now` (default: the clock) and at least one `v1` signature of
    f"{webhook-id}.{webhook-timestamp}.{body}" made with one of `secrets` (one secret, or several
    while the receiver rotates its own). Never raises on malformed input.

    `body` must be the raw bytes received, before any JSON parsing: re-serializing changes them.
    """
    lowered = {str(name).lower(): value for name, value in headers.items()}
    msg_id, timestamp = lowered.get(ID_HEADER), lowered.get(TIMESTAMP_HEADER)
    received = lowered.get(SIGNATURE_HEADER)
    if not msg_id or not timestamp or not received:
        return False
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance:
        return False
    candidates = [s.partition(",")[2] for s in received.split() if s.startswith(SIGNATURE_VERSION + ",")]
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    for secret in keys:
        try:
            expected = sign(secret, msg_id, timestamp, body).partition(",")[2]
        except ValueError:
            continue
        # Compare against every candidate (no early exit): the time taken says nothing about which matched.
        matches = [hmac.compare_digest(expected.encode(), c.encode()) for c in candidates]
        if any(matches):
            return True
    return False


def webhook_headers(
    *,
    secrets: list[str],
    event: str,
    event_id: str,
    body: bytes,
    attempt: int,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Return the headers of one delivery attempt, signed now (or at `timestamp`) with each of
    `secrets` (the current secret first, then the previous one during a rotation)."""
    sent_at = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "User-Agent": "Bulwark-Webhooks/1",
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(sent_at),
        SIGNATURE_HEADER: signature_header(secrets, event_id, sent_at, body),
        EVENT_HEADER: event,
        ATTEMPT_HEADER: str(attempt),
    }
