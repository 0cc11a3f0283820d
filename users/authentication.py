"""`Authorization: Token <user_id>.<secret>` for product users.

The authenticated principal is a small ApiUser (the sharded account's id), not Django's auth user:
staff use the admin session (DRF's SessionAuthentication) instead.
"""

from dataclasses import dataclass

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from resilience.metrics import count_decision
from resilience.ratelimit.http import client_ip, headers, request_key
from resilience.ratelimit.limiter import check, peek

from . import services
from .tokens import TokenClient

GUESSING_POLICY = "auth.bad_token"


@dataclass(frozen=True)
class ApiUser:
    id: int
    is_authenticated: bool = True
    is_staff: bool = False
    is_active: bool = True

    @property
    def pk(self):
        return self.id


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header.")
        try:
            token = header[1].decode("ascii")
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        ip = client_ip(request)
        client = TokenClient.bounded(ip, request.META.get("HTTP_USER_AGENT", ""))
        user_id = services.token_authenticate(
            token=token, client=client, before_lookup=lambda: _refuse_guesser(request)
        )
        if user_id is None:
            _count_failure(request)  # a 429 once this address is over `auth.bad_token`, else the 401
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        from .writebehind import buffer

        buffer.touch_last_seen(user_id=user_id)
        return ApiUser(id=user_id), token

    def authenticate_header(self, request):
        return self.keyword


def _refuse_guesser(request) -> None:
    """Refuse, before its lookup reaches a shard, a client whose recent token failures used up
    `auth.bad_token`. DRF authenticates before it throttles, so this cannot be a throttle."""
    if not settings.RESILIENCE_RATELIMIT_ENABLED:
        return
    decision = peek(GUESSING_POLICY, request_key(GUESSING_POLICY, request))
    if not decision.allowed:
        _refuse(decision)


def _count_failure(request) -> None:
    """Count a failed token against the address, and answer 429 once it is over `auth.bad_token`: also
    for a token refused without a lookup (malformed, or known bad to the cache), so a client over the
    limit gets the 429 the limiter counted (found by the black-box pass: the Rate limits page showed
    172 refusals of a client that only ever got 401s)."""
    if not settings.RESILIENCE_RATELIMIT_ENABLED:
        return
    decision = check(GUESSING_POLICY, request_key(GUESSING_POLICY, request))
    count_decision(decision)
    if not decision.allowed:
        _refuse(decision)


def _refuse(decision) -> None:
    denied = exceptions.Throttled(
        detail="Too many invalid tokens from this address; retry after the time in Retry-After.",
        code="rate_limited",
    )
    denied.extra_headers = headers(decision)  # the project's handler adds them (resilience/errors.py)
    raise denied


class IsProductUser:
    """Allows token-authenticated product users only."""

    def has_permission(self, request, view):
        return isinstance(request.user, ApiUser)

    def has_object_permission(self, request, view, obj):
        return True


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "users.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <token>` as returned by POST /api/v1/auth/token/",
        }
