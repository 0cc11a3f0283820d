"""`Authorization: Token <user_id>.<secret>` for product users.

The authenticated principal is a small ApiUser (the sharded account's id), not Django's auth user:
staff use the admin session (DRF's SessionAuthentication) instead.
"""

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from . import services


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
        user_id = services.token_authenticate(token=token)
        if user_id is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        from .writebehind import buffer

        buffer.touch_last_seen(user_id=user_id)
        return ApiUser(id=user_id), token

    def authenticate_header(self, request):
        return self.keyword


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
