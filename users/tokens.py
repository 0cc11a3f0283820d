"""API tokens: `<user_id>.<secret>`. The user id routes to the shard without a scan; only the
HMAC-SHA256 of the whole token is stored (a fast digest is right for a 256-bit random secret)."""

import secrets

from django.utils.crypto import salted_hmac

from .sharding.ids import parse_id


def token_generate(user_id: int) -> str:
    return f"{user_id}.{secrets.token_urlsafe(32)}"


def token_digest(token: str) -> str:
    return salted_hmac("bulwark.users.token", token, algorithm="sha256").hexdigest()


def token_user_id(token: str) -> int | None:
    """The user id a well-formed token names, or None for a malformed one."""
    user_part, sep, secret = token.partition(".")
    if not sep or not 20 <= len(secret) <= 100:
        return None
    return parse_id(user_part)
