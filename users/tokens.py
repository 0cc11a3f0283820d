"""API tokens: `<user_id>.<secret>`. The user id routes to the shard without a scan; only the
HMAC-SHA256 of the whole token is stored (a fast digest is right for a 256-bit random secret)."""

import secrets
from dataclasses import dataclass

from django.utils.crypto import salted_hmac

from .models import Token
from .sharding.ids import user_id_parse

TOKEN_TOUCH_INTERVAL = 60  # seconds: a token's last use is written at most this often


def token_generate(user_id: int) -> str:
    return f"{user_id}.{secrets.token_urlsafe(32)}"


def token_digest(token: str) -> str:
    return salted_hmac("bulwark.users.token", token, algorithm="sha256").hexdigest()


def token_user_id(token: str) -> int | None:
    """The user id a well-formed token names, or None for a malformed one (an id no shard can hold
    included: it must be a 401 like any other bad token, never a lookup)."""
    user_part, sep, secret = token.partition(".")
    if not sep or not 20 <= len(secret) <= 100:
        return None
    return user_id_parse(user_part)


def token_public_id(digest: str) -> str:
    """The id a token is listed and revoked by: a prefix of its stored digest (never the token)."""
    return digest[:16]


@dataclass(frozen=True)
class TokenClient:
    """Who a token is issued to or used by, as the token list shows it."""

    ip: str = ""
    user_agent: str = ""

    @classmethod
    def bounded(cls, ip: str, user_agent: str) -> "TokenClient":
        # PostgreSQL text cannot hold NUL; a header can (some servers pass it through).
        return cls(
            ip=ip.replace("\x00", "")[: Token.CLIENT_IP_MAX],
            user_agent=user_agent.replace("\x00", "")[: Token.USER_AGENT_MAX],
        )


UNKNOWN_CLIENT = TokenClient()
