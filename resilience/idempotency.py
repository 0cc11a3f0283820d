"""`Idempotency-Key` for POST endpoints, recorded in the state Redis.

The first request with a key runs and its response is stored for IDEMPOTENCY_TTL; a retry with the
same key and the same body gets that response again and creates nothing; the same key with a
different body gets 422; a retry while the first is still running gets 409. Keys are scoped to the
caller (user id, else client IP) and the path. Responses carrying a secret (a new API token) are
never stored: a replay of such a request gets 409, since tokens exist only as hashes.

If the state Redis cannot answer, a request with a key is not run: it gets 503
`idempotency_unavailable` with Retry-After, and its retry with the same key runs once the store is
back. Running it without the record would break the promise the client asked for: found by a
black-box pass, ten retries of one keyed view during a state Redis outage were counted ten times (the
views went straight to the database), and once more after the restart. A request without a key runs
as usual (views are then written to the database directly).

Each new key keeps a record for a day, so one caller could fill the state Redis (noeviction: then every
write there fails) by sending a fresh key with each request. A caller (user id, else client address,
an IPv6 client by its /64 like the rate limiter) may use RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER new
keys per window of IDEMPOTENCY_TTL starting at its first one; past that, a request with a new key gets
429 `idempotency_keys_exhausted` with Retry-After (the end of the window) and is not run: running it
without the key would silently drop the guarantee the client asked for. Requests without a key and
retries with a known key are not affected.

A 5xx with the code OUTCOME_UNKNOWN ("it may or may not have taken effect; retry with the same key")
keeps the record in an "unknown" state instead of deleting it: a retry with the same key and body runs
again, and the endpoint resolves the first attempt's outcome by `request.idempotency_id`, a stable id
of the key (a view counted under that id is not counted again).
"""

import functools
import hashlib
import json
import logging
from pathlib import Path

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.response import Response

from .errors import error_body
from .ratelimit.http import client_ip, ip_key
from .redis_state import UNAVAILABLE, lua_script, state_redis

logger = logging.getLogger(__name__)
IDEMPOTENCY_TTL = 24 * 3600
PENDING_TTL = 60
CLAIMED, EXISTS, EXHAUSTED = 1, 0, -1  # idempotency_begin.lua's answers
OUTCOME_UNKNOWN = "unconfirmed"  # the error code of a 5xx whose effect is unknown (the record is kept)
_BEGIN_LUA = Path(__file__).resolve().parent / "idempotency_begin.lua"


def _begin_script():
    return lua_script(_BEGIN_LUA)


def _caller(request) -> str:
    """`request`'s caller: its user id, else its address (an IPv6 client by its /64, which it usually
    owns whole, so it cannot rotate around the cap)."""
    user = getattr(request, "user", None)
    if getattr(user, "is_authenticated", False) and hasattr(user, "id"):
        return f"u{user.id}"
    return ip_key(request)


# A caller's records and its count of new keys share the hash tag {idem:<caller>}: the begin script
# touches both, so on a Redis Cluster they must be in one slot.
def caller_key(request) -> str:
    """The state Redis key counting the new Idempotency-Keys of `request`'s caller."""
    return f"idem:{{idem:{_caller(request)}}}:callers"


def record_key(request, key: str) -> str:
    """The state Redis key of the record of Idempotency-Key `key` sent by `request`'s caller to its path."""
    digest = hashlib.sha256(f"{_scope(request)}:{key}".encode()).hexdigest()
    return f"idem:{{idem:{_caller(request)}}}:{digest}"


def _exhausted(retry_after: int) -> Response:
    return Response(
        error_body(
            "Too many new Idempotency-Keys from this caller; retry after the time in Retry-After "
            "(a retry of an earlier request with its own key is still answered).",
            "idempotency_keys_exhausted",
        ),
        status=429,
        headers={"Retry-After": str(max(1, int(retry_after)))},
    )


def _unavailable() -> Response:
    return Response(
        error_body(
            "Idempotency-Keys cannot be checked right now, so this request was not run; retry it with the "
            "same key after the time in Retry-After.",
            "idempotency_unavailable",
        ),
        status=503,
        headers={"Retry-After": str(max(1, round(settings.RESILIENCE_STATE_RETRY_SECONDS)))},
    )


def _scope(request) -> str:
    user = getattr(request, "user", None)
    # Anonymous callers are scoped by their own address: behind a trusted proxy, REMOTE_ADDR would be
    # the proxy's, and every anonymous client would share one key space.
    who = (
        f"u{user.id}" if getattr(user, "is_authenticated", False) and hasattr(user, "id") else f"ip{client_ip(request)}"
    )
    return f"{who}:{request.path}"


def idempotent(*, store_body: bool = True):
    """Decorate a DRF view method (self, request, ...) to honour Idempotency-Key."""

    def decorator(method):
        @functools.wraps(method)
        def wrapper(self, request, *args, **kwargs):
            key = request.headers.get("Idempotency-Key")
            if not key:
                return method(self, request, *args, **kwargs)
            if len(key) > 200:
                return Response(error_body("Idempotency-Key is too long (max 200).", "invalid"), status=400)
            body_hash = hashlib.sha256(request.body).hexdigest()
            redis_key = record_key(request, key)
            request.idempotency_id = redis_key.rpartition(":")[2]  # the digest (a view id of write-behind)
            try:
                client = state_redis()
                outcome, retry_after = _begin_script()(
                    keys=[redis_key, caller_key(request)],
                    args=[
                        json.dumps({"state": "pending", "hash": body_hash}),
                        PENDING_TTL,
                        settings.RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER,
                        IDEMPOTENCY_TTL,
                    ],
                    client=client,
                )
                if outcome == EXHAUSTED:
                    return _exhausted(retry_after)
                record = json.loads(client.get(redis_key) or "{}") if outcome == EXISTS else {}
                if record.get("state") == "unknown" and record.get("hash") == body_hash:
                    # Run again: the endpoint tells by request.idempotency_id whether the first took effect.
                    client.set(redis_key, json.dumps({"state": "pending", "hash": body_hash}), ex=PENDING_TTL)
                elif outcome == EXISTS:
                    if record.get("hash") != body_hash:
                        return Response(
                            error_body(
                                "This Idempotency-Key was used with a different body.", "idempotency_key_reused"
                            ),
                            status=422,
                        )
                    if record.get("state") == "done" and "body" in record:
                        response = Response(record["body"], status=record["status"])
                        response["Idempotent-Replayed"] = "true"
                        return response
                    return Response(
                        error_body(
                            "A request with this Idempotency-Key is in progress or its response cannot be replayed.",
                            "idempotency_conflict",
                        ),
                        status=409,
                    )
            except (RedisError, *UNAVAILABLE) as exc:
                logger.warning("idempotency unavailable (state Redis: %s); a keyed request refused", exc)
                return _unavailable()
            try:
                response = method(self, request, *args, **kwargs)
            except BaseException as exc:
                _forget(redis_key, body_hash, getattr(exc, "code", None))
                raise
            if response.status_code >= 500:
                data = getattr(response, "data", None)
                _forget(redis_key, body_hash, data.get("code") if isinstance(data, dict) else None)
                return response
            record = {"state": "done", "hash": body_hash, "status": response.status_code}
            if store_body:
                record["body"] = response.data
            try:
                client.set(redis_key, json.dumps(record, default=str), ex=IDEMPOTENCY_TTL)
            except RedisError as exc:
                logger.warning("idempotency record for %s lost: %s", key, exc)
            return response

        return wrapper

    return decorator


def _forget(redis_key: str, body_hash: str, code=None) -> None:
    """Forget a failed attempt (a retry runs afresh), unless its outcome is unknown."""
    try:
        if code == OUTCOME_UNKNOWN:
            record = json.dumps({"state": "unknown", "hash": body_hash})
            state_redis().set(redis_key, record, ex=IDEMPOTENCY_TTL)
        else:
            state_redis().delete(redis_key)
    except RedisError:
        pass
