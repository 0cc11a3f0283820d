"""How the users domain's exceptions answer over HTTP, registered with the generic error machinery
(resilience/errors.py) from UsersConfig.ready()."""

import logging

from resilience.errors import ApiError, register_error

from .etags import IF_MATCH_FAILED, IF_NONE_MATCH_FAILED
from .services import Conflict, InvalidCredentials, UserNotFound, VersionMismatch
from .sharding.access import ShardFrozen, ShardUnavailable

logger = logging.getLogger("users")


def _shard_unavailable(exc: ShardUnavailable) -> ApiError:
    logger.warning("%s", exc)
    return ApiError(
        503,
        "A storage shard is temporarily unavailable; retry shortly.",
        "shard_unavailable",
        headers={"Retry-After": "5"},
    )


def register() -> None:
    register_error(
        ShardFrozen,
        lambda exc: ApiError(
            503,
            "This account is being moved between shards; retry in a moment.",
            "shard_moving",
            headers={"Retry-After": "1"},
        ),
    )
    register_error(ShardUnavailable, _shard_unavailable)
    register_error(
        Conflict,
        lambda exc: ApiError(
            409, "Already taken.", "conflict", fields={f: [f"This {f} is already taken."] for f in exc.fields}
        ),
    )
    register_error(
        VersionMismatch,
        lambda exc: ApiError(
            412, IF_NONE_MATCH_FAILED if exc.header == "If-None-Match" else IF_MATCH_FAILED, "precondition_failed"
        ),
    )
    register_error(UserNotFound, lambda exc: ApiError(404, "Not found.", "not_found"))
    register_error(InvalidCredentials, lambda exc: ApiError(400, "Invalid credentials.", "invalid_credentials"))
