"""`Idempotency-Key` for POST endpoints, recorded in the state Redis.

The first request with a key runs and its response is stored for IDEMPOTENCY_TTL; a retry with the
same key and the same body gets that response again and creates nothing; the same key with a
different body gets 422; a retry while the first is still running gets 409. Keys are scoped to the
caller (user id, else client IP) and the path. Responses carrying a secret (a new API token) are
never stored: a replay of such a request gets 409, since tokens exist only as hashes.
If the state Redis is down the request runs without the guarantee (logged).

A 5xx with the code OUTCOME_UNKNOWN ("it may or may not have taken effect; retry with the same key")
keeps the record in an "unknown" state instead of deleting it: a retry with the same key and body runs
again, and the endpoint resolves the first attempt's outcome by `request.idempotency_id`, a stable id
of the key (a view counted under that id is not counted again).
"""

import functools
import hashlib
import json
import logging

from django_redis import get_redis_connection
from redis.exceptions import RedisError
from rest_framework.response import Response

from .errors import error_body
from .ratelimit.http import client_ip

logger = logging.getLogger(__name__)
IDEMPOTENCY_TTL = 24 * 3600
PENDING_TTL = 60
OUTCOME_UNKNOWN = "unconfirmed"


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
            redis_key = "idem:" + hashlib.sha256(f"{_scope(request)}:{key}".encode()).hexdigest()
            request.idempotency_id = redis_key.removeprefix("idem:")
            try:
                client = get_redis_connection("state")
                fresh = client.set(
                    redis_key, json.dumps({"state": "pending", "hash": body_hash}), nx=True, ex=PENDING_TTL
                )
                record = {} if fresh else json.loads(client.get(redis_key) or "{}")
                if record.get("state") == "unknown" and record.get("hash") == body_hash:
                    # Run again: the endpoint tells by request.idempotency_id whether the first took effect.
                    client.set(redis_key, json.dumps({"state": "pending", "hash": body_hash}), ex=PENDING_TTL)
                elif not fresh:
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
            except RedisError as exc:
                logger.warning("idempotency unavailable (state Redis: %s); running without it", exc)
                return method(self, request, *args, **kwargs)
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
            get_redis_connection("state").set(redis_key, record, ex=IDEMPOTENCY_TTL)
        else:
            get_redis_connection("state").delete(redis_key)
    except RedisError:
        pass
