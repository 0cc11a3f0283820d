"""The users REST API: thin views that validate, call one service or selector, and serialize.

Ids are 64-bit and are rendered as strings (JavaScript numbers lose precision above 2**53).
"""

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from project.api import SessionAuthenticationScheme
from resilience.errors import ApiError
from resilience.idempotency import OUTCOME_UNKNOWN, idempotent
from resilience.ratelimit.drf import NOT_RUN, CompanionResults, RateLimitedApiMixin
from resilience.ratelimit.http import client_ip

from . import selectors, services
from .authentication import ApiUser, IsProductUser, TokenScheme
from .etags import (
    IF_NONE_MATCH_FAILED,
    if_match_holds,
    if_match_version,
    if_none_match_refuses,
    none_match,
    profile_etag,
    public_etag,
)
from .identity import (
    EMAIL_MAX,
    USERNAME_MAX,
    USERNAME_PATTERN,
    display_form,
    display_name_problem,
    email_problem,
    password_form,
    username_problem,
)
from .sharding.ids import MAX_ID
from .tokens import TokenClient, token_digest, token_public_id
from .writebehind import buffer


class StrictSerializer(serializers.Serializer):
    """Rejects unknown and read-only fields instead of ignoring them (no mass assignment), and a number
    sent for a text field (`{"bio": 1}` is refused, not stored as "1")."""

    # The docstring is the description of every input schema in the OpenAPI document: it speaks to
    # clients. DRF's CharField (EmailField and RegexField are CharFields too) turns an int or float into
    # its text; one check here covers every text field of every input, the ones added later included.

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        writable = {name for name, field in self.fields.items() if not field.read_only}
        errors = {name: ["This field is not allowed."] for name in sorted(set(data) - writable)}
        for name, field in self.fields.items():
            sent = data.get(name)  # null is left to the field (allow_null)
            if isinstance(field, serializers.CharField) and sent is not None and not isinstance(sent, str):
                errors[name] = [serializers.CharField.default_error_messages["invalid"]]
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            errors = {**exc.detail, **errors}
        if errors:
            raise serializers.ValidationError(errors)
        return value


def public_profile(row: dict, *, pending_views: int = 0) -> dict:
    return {
        "id": str(row["id"]),
        "username": row["username"],
        "display_name": row["display_name"],
        "bio": row["bio"],
        "created_at": row["created_at"],
        "view_count": row["view_count"] + pending_views,
    }


def private_profile(row: dict) -> dict:
    return {
        **public_profile(row),
        "email": row["email"],
        "version": row["version"],
        "updated_at": row["updated_at"],
        "last_seen_at": row["last_seen_at"],
    }


class PublicProfile(serializers.Serializer):
    id = serializers.CharField()
    username = serializers.CharField()
    display_name = serializers.CharField()
    bio = serializers.CharField()
    created_at = serializers.DateTimeField()
    view_count = serializers.IntegerField()


class PrivateProfile(PublicProfile):
    email = serializers.EmailField()
    version = serializers.IntegerField()
    updated_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField(allow_null=True)


class PrivateProfileWithToken(PrivateProfile):
    token = serializers.CharField(required=False, help_text="A fresh token, after a password or email change.")


ErrorBody = inline_serializer(
    "Error",
    {
        "detail": serializers.CharField(),
        "code": serializers.CharField(),
        "fields": serializers.DictField(required=False),
        "request_id": serializers.CharField(required=False, help_text="The request's X-Request-ID."),
    },
)


def _check_password(password: str, *, username: str = "", email: str = "") -> None:
    from .models import User

    candidate = User(username=username, email=email)  # unsaved: what the similarity validator compares
    try:
        validate_password(password_form(password), user=candidate)  # the form that is hashed
    except DjangoValidationError as exc:
        raise serializers.ValidationError({"password": list(exc.messages)}) from None


class UsernameField(serializers.CharField):
    """A username as submitted, in the form it is stored and checked in (users/identity.py's
    display_form: NFKC, so "e" + U+0301 is "é"): length limits and the pattern apply to that form."""

    def to_internal_value(self, data):
        return display_form(super().to_internal_value(data))


class NewUsernameField(UsernameField, serializers.RegexField):
    """A username to register: the pattern and length limits on the stored form."""

    def __init__(self, **kwargs):
        super().__init__(USERNAME_PATTERN, max_length=USERNAME_MAX, min_length=3, **kwargs)


def _valid(value: str, problem) -> str:
    message = problem(value)
    if message:
        raise serializers.ValidationError(message)
    return value


class UserRegisterApi(RateLimitedApiMixin, APIView):
    """Register an account: answers its private profile, with an ETag."""

    # The first class of /users/ in users/urls.py: it also answers OPTIONS and the 405 of other methods.

    permission_classes = [AllowAny]
    concurrency_policy = "api.concurrent"  # requests in flight per user (per address when anonymous)
    rate_limits = {"POST": "users.register"}

    class RegisterInput(StrictSerializer):
        username = NewUsernameField()
        email = serializers.EmailField(max_length=EMAIL_MAX)
        password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)
        display_name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")

        def validate_display_name(self, value):
            return _valid(value, display_name_problem)

        def validate_username(self, value):
            return _valid(value, username_problem)

        def validate_email(self, value):
            return _valid(value, email_problem)

    @extend_schema(
        request=RegisterInput,
        responses={201: PrivateProfile, 400: ErrorBody, 409: ErrorBody},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
    )
    @idempotent()
    def post(self, request):
        data = self.RegisterInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        _check_password(values["password"], username=values["username"], email=values["email"])
        row = services.user_create(**values)
        return Response(private_profile(row), status=status.HTTP_201_CREATED, headers={"ETag": profile_etag(row)})


def _is_lookup(request) -> bool:
    """Whether GET /users/ is the one-row `?username=` lookup. A blank `?username=` is no filter (DRF's
    serializer drops a blank optional query field), so it is the list: the permission and the view
    must both decide by this."""
    return bool(request.query_params.get("username"))


class IsStaffUnlessLookup(BasePermission):
    """GET /users/: the `?username=` lookup is public; the whole list is for staff (the admin session).
    DRF answers a caller it could not authenticate 401, anyone else 403 with this message."""

    message = "Listing all users is for staff."
    code = "permission_denied"

    def has_permission(self, request, view):
        return _is_lookup(request) or bool(request.user and request.user.is_staff)


class UserListApi(RateLimitedApiMixin, APIView):
    """`?username=`: the exact, case-insensitive lookup of one user, public. Without it: all users, page
    by page (`limit`, at most 100, and `cursor`), for staff."""

    # The lookup and the list stay one class: one operation of the URL (GET, one response shape and one
    # OpenAPI operation), the lookup being the list filtered to at most one row, which makes it public.

    permission_classes = [IsStaffUnlessLookup]
    concurrency_policy = "api.concurrent"

    class ListInput(serializers.Serializer):
        username = UsernameField(max_length=USERNAME_MAX, required=False)
        limit = serializers.IntegerField(min_value=1, required=False, default=50)
        cursor = serializers.IntegerField(min_value=0, max_value=MAX_ID, required=False)

        def validate_limit(self, value):
            return min(value, 100)  # a larger page is served at the cap, not refused

    @extend_schema(
        operation_id="users_list",
        parameters=[ListInput],
        # Anonymous callers too (`{}`): the generator sees that only in AllowAny, not in IsStaffUnlessLookup.
        auth=[{TokenScheme.name: []}, {SessionAuthenticationScheme.name: []}, {}],
        responses={
            200: inline_serializer(
                "UserList", {"results": PublicProfile(many=True), "next": serializers.CharField(allow_null=True)}
            ),
            403: ErrorBody,
        },
    )
    def get(self, request):
        params = self.ListInput(data=request.query_params)
        params.is_valid(raise_exception=True)
        values = params.validated_data
        if _is_lookup(request):
            row = selectors.user_get_by_username(username=values["username"])
            pending = 0 if row is None else buffer.pending_views(user_id=row["id"], rev=row["rev"])
            results = [] if row is None else [public_profile(row, pending_views=pending)]
            return Response({"results": results, "next": None})
        rows, next_id = selectors.user_list(limit=values["limit"], after_id=values.get("cursor", 0))
        next_cursor = None if next_id is None else str(next_id)
        return Response({"results": [public_profile(r) for r in rows], "next": next_cursor})


class UserDetailApi(RateLimitedApiMixin, APIView):
    """GET a public profile, with an ETag and 304 on If-None-Match."""

    permission_classes = [AllowAny]

    def rate_limit_companions(self, request):
        # The pending-views read (state Redis) and the cached row (cache Redis) go out with the
        # limiter's call: the request waits for Redis once.
        return row_companions(self.kwargs["user_id"], pending=True)

    @extend_schema(
        operation_id="users_retrieve", responses={200: PublicProfile, 304: None, 404: ErrorBody, 412: ErrorBody}
    )
    def get(self, request, user_id: str):
        status_code, body, etag = public_profile_answer(
            user_id,
            getattr(request, "companion_results", NOT_RUN),
            request.headers.get("If-None-Match", ""),
            request.headers.get("If-Match"),
        )
        return Response(body, status=status_code, headers={"ETag": etag})


def public_profile_answer(
    raw_id: str, sent: CompanionResults, if_none_match: str, if_match: str | None = None
) -> tuple[int, dict | None, str]:
    """GET /users/{id}/ after the limiter: (200, profile, ETag), or (304, None, ETag) when `if_none_match`
    names the ETag. `sent` holds the results of `row_companions(raw_id, pending=True)`. Raises ApiError
    404, and 412 when If-Match `if_match` (None: no header) is false."""
    probed = sent.get("row")
    row = _existing_user(raw_id, probed=probed)
    if_match_holds(row["version"], if_match)
    pending = buffer.pending_views(
        user_id=row["id"],
        rev=row["rev"],
        result=sent.get("pending"),
        row_read_first=selectors.user_read_before_probe_sent(probed),
    )
    etag = public_etag(row, pending_views=pending)
    if none_match(etag, if_none_match):
        return status.HTTP_304_NOT_MODIFIED, None, etag
    return status.HTTP_200_OK, public_profile(row, pending_views=pending), etag


def private_profile_answer(row: dict, if_none_match: str, if_match: str | None = None) -> tuple[int, dict | None, str]:
    """GET /users/me/: (200, profile, ETag), or (304, None, ETag) when `if_none_match` names the ETag.
    Raises ApiError 412 when If-Match `if_match` (None: no header) is false."""
    if_match_holds(row["version"], if_match)
    etag = profile_etag(row)
    if none_match(etag, if_none_match):
        return status.HTTP_304_NOT_MODIFIED, None, etag
    return status.HTTP_200_OK, private_profile(row), etag


def row_companions(raw_id: str, *, pending: bool = False) -> dict:
    """The Redis reads a view of user `raw_id` needs, to send ahead with the limiter's call."""
    user_id = selectors.user_id_parse(raw_id)
    if user_id is None:
        return {}
    calls = {"row": selectors.user_cache_probe(user_id=user_id)}
    if pending:
        calls["pending"] = buffer.pending_views_call(user_id=user_id)
    return {name: call for name, call in calls.items() if call is not None}


def _existing_user(raw_id: str, *, probed=None) -> dict:
    user_id = selectors.user_id_parse(raw_id)
    row = None if user_id is None else selectors.user_get_by_id(user_id=user_id, probed=probed)
    if row is None:
        raise ApiError(404, "Not found.", "not_found")
    return row


class UserViewsApi(RateLimitedApiMixin, APIView):
    """POST one view of a profile: buffered (write-behind), 202."""

    permission_classes = [AllowAny]
    rate_limits = {"POST": "users.views"}

    def rate_limit_companions(self, request):
        return row_companions(self.kwargs["user_id"])  # the existence check rides with the limiter

    @extend_schema(
        description=(
            "If-Match and If-None-Match are evaluated against the profile the view is counted on, as on "
            "GET /users/{id}/: If-Match by its version, If-None-Match by its tag (`*`: it exists); a false "
            "one is a 412 and no view is counted."
        ),
        request=None,
        responses={
            202: inline_serializer("Accepted", {"status": serializers.CharField()}),
            404: ErrorBody,
            412: ErrorBody,
            503: ErrorBody,
        },
        parameters=[
            OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER),
            OpenApiParameter("If-Match", str, OpenApiParameter.HEADER),
        ],
    )
    @idempotent()
    def post(self, request, user_id: str):
        row = _existing_user(user_id, probed=getattr(request, "companion_results", NOT_RUN).get("row"))
        # Inside the idempotent call: a retry of a view that was counted replays its 202 even if the
        # profile has been edited since; a 412 is not stored, so a retry with a fresh tag is judged anew.
        if_match_holds(row["version"], request.headers.get("If-Match"))
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None:  # only then the pending views are read: the tag counts them
            pending = buffer.pending_views(user_id=row["id"], rev=row["rev"])
            if if_none_match_refuses(public_etag(row, pending_views=pending), if_none_match):
                raise ApiError(412, IF_NONE_MATCH_FAILED, "precondition_failed")
        try:
            # With an Idempotency-Key the view has an id: a retry after "unconfirmed" counts it once.
            how = services.user_view_record(user_id=row["id"], view_id=getattr(request, "idempotency_id", None))
        except buffer.BufferFull:
            raise ApiError(
                503, "Too many pending views; retry shortly.", "backpressure", headers={"Retry-After": "2"}
            ) from None
        except buffer.BufferUncertain:
            raise ApiError(
                503,
                "The view could not be confirmed; retry with the same Idempotency-Key.",
                OUTCOME_UNKNOWN,
                headers={"Retry-After": "1"},
            ) from None
        return Response({"status": how}, status=status.HTTP_202_ACCEPTED)


def _me(request, *, probed=None) -> dict:
    return me_row(request.user.id, probed=probed)


def me_row(user_id: int, *, probed=None) -> dict:
    """The authenticated caller's row (`probed`: its cache probe's result). Raises ApiError 401 when
    the account is gone (its token outlived it)."""
    row = selectors.user_get_by_id(user_id=user_id, probed=probed)
    if row is None:
        raise ApiError(401, "The account no longer exists.", "not_authenticated")
    return row


class UserMeApi(RateLimitedApiMixin, APIView):
    """The caller's private profile, with an ETag (its version for If-Match)."""

    # The first class of /users/me/ in users/urls.py: it also answers OPTIONS and the 405 of other
    # methods, after IsProductUser, which the URL's three classes share.

    permission_classes = [IsProductUser]
    # No api.concurrent slot: a cached read, like GET /users/{id}/ (users/fastpath.py serves both with
    # one state-Redis call; a slot would add two). Its edits and deletion take one.

    def rate_limit_companions(self, request):
        # Permissions ran first, so the caller is known: its cached row rides with the limiter's call.
        probe = selectors.user_cache_probe(user_id=request.user.id) if request.method == "GET" else None
        return {"row": probe} if probe else {}

    @extend_schema(responses={200: PrivateProfile, 304: None, 401: ErrorBody, 412: ErrorBody})
    def get(self, request):
        row = _me(request, probed=getattr(request, "companion_results", NOT_RUN).get("row"))
        status_code, body, etag = private_profile_answer(
            row, request.headers.get("If-None-Match", ""), request.headers.get("If-Match")
        )
        return Response(body, status=status_code, headers={"ETag": etag})


class UserMeUpdateApi(RateLimitedApiMixin, APIView):
    """Edit the caller's profile; If-Match refuses the edit when another edit came first."""

    permission_classes = [IsProductUser]
    concurrency_policy = "api.concurrent"

    class PatchInput(StrictSerializer):
        display_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
        bio = serializers.CharField(max_length=1000, required=False, allow_blank=True)

        def validate_display_name(self, value):
            return _valid(value, display_name_problem)

        email = serializers.EmailField(max_length=EMAIL_MAX, required=False)
        password = serializers.CharField(max_length=128, required=False, write_only=True, trim_whitespace=False)
        current_password = serializers.CharField(max_length=128, required=False, write_only=True, trim_whitespace=False)

        def validate_email(self, value):
            return _valid(value, email_problem)

        def validate(self, attrs):
            # The email the account already has, in its stored form, is no change: no password needed,
            # and no new version (a client may send its whole profile back). A different letter case
            # is a change: the stored address is what mail goes to, and its local part may be
            # case-sensitive.
            if "email" in attrs and display_form(attrs["email"]) == self.context["current_email"]:
                del attrs["email"]
            for field in ("password", "email"):
                if field in attrs and "current_password" not in attrs:
                    raise serializers.ValidationError({"current_password": [f"Required to change the {field}."]})
            return attrs

    @extend_schema(
        description=(
            "Changing the password or the email needs `current_password`, revokes every token of the "
            "account and answers with a fresh one in `token`."
        ),
        request=PatchInput,
        responses={200: PrivateProfileWithToken, 400: ErrorBody, 409: ErrorBody, 412: ErrorBody},
        parameters=[
            OpenApiParameter("If-Match", str, OpenApiParameter.HEADER),
            OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER, description="`*` is always a 412."),
        ],
    )
    def patch(self, request):
        row = _me(request)
        data = self.PatchInput(data=request.data, context={"current_email": row["email"]})
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        current_password = changes.pop("current_password", None)
        if_match = if_match_version(request.headers.get("If-Match"))
        if "password" in changes:
            _check_password(changes["password"], username=row["username"], email=changes.get("email", row["email"]))
        try:
            row = services.user_update(
                user_id=request.user.id,
                changes=changes,
                if_match=if_match,
                if_none_match=request.headers.get("If-None-Match"),
                current_password=current_password,
                new_token=token_client(request),
            )
        except services.InvalidCredentials:
            raise serializers.ValidationError({"current_password": ["Incorrect password."]}) from None
        body = private_profile(row)
        if "token" in row:
            body["token"] = row["token"]
        return Response(body, headers={"ETag": profile_etag(row)})


class UserMeDeleteApi(RateLimitedApiMixin, APIView):
    """End the caller's account."""

    permission_classes = [IsProductUser]
    concurrency_policy = "api.concurrent"

    class DeleteInput(StrictSerializer):
        current_password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)

    @extend_schema(
        description=(
            "Deleting the account needs `current_password`: a token alone must not end it. If-Match and "
            "If-None-Match are checked as on PATCH: a false one is a 412 and the account is kept."
        ),
        request=DeleteInput,
        responses={204: None, 400: ErrorBody, 401: ErrorBody, 412: ErrorBody},
        parameters=[
            OpenApiParameter("If-Match", str, OpenApiParameter.HEADER),
            OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER, description="`*` is always a 412."),
        ],
    )
    def delete(self, request):
        data = self.DeleteInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            services.user_delete(
                user_id=request.user.id,
                current_password=data.validated_data["current_password"],
                if_match=if_match_version(request.headers.get("If-Match")),
                if_none_match=request.headers.get("If-None-Match"),
            )
        except services.InvalidCredentials:
            raise serializers.ValidationError({"current_password": ["Incorrect password."]}) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


def token_client(request) -> TokenClient:
    return TokenClient.bounded(client_ip(request), request.headers.get("User-Agent", ""))


class TokenApi(RateLimitedApiMixin, APIView):
    permission_classes = [AllowAny]
    concurrency_policy = "api.concurrent"
    # Per address and username, per address (one password sprayed over many accounts), per username
    # (many addresses guessing one account): the first one's headers go on the answer.
    rate_limits = {"POST": ("auth.token", "auth.token.ip", "auth.token.username")}

    class TokenInput(StrictSerializer):
        username = UsernameField(max_length=USERNAME_MAX)
        password = serializers.CharField(max_length=128, trim_whitespace=False)

    @extend_schema(
        request=TokenInput,
        responses={
            200: inline_serializer("Token", {"token": serializers.CharField(), "user_id": serializers.CharField()}),
            401: ErrorBody,
        },
    )
    @idempotent(store_body=False)  # never store a token in plaintext
    def post(self, request):
        data = self.TokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            token, user_id = services.token_create(**data.validated_data, client=token_client(request))
        except services.InvalidCredentials:
            raise ApiError(401, "Invalid username or password.", "invalid_credentials") from None
        return Response({"token": token, "user_id": str(user_id)})

    @extend_schema(request=None, responses={204: None, 401: ErrorBody})
    def delete(self, request):
        if not isinstance(request.user, ApiUser):
            raise ApiError(401, "Authentication credentials were not provided.", "not_authenticated")
        services.token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenOutput(serializers.Serializer):
    id = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    client_ip = serializers.CharField()
    user_agent = serializers.CharField()
    current = serializers.BooleanField()


class TokenListApi(RateLimitedApiMixin, APIView):
    """GET: the caller's tokens. DELETE: revoke all of them, the one used for this request included."""

    permission_classes = [IsProductUser]
    concurrency_policy = "api.concurrent"

    @extend_schema(
        operation_id="auth_tokens_list",
        responses={200: inline_serializer("TokenList", {"results": TokenOutput(many=True)}), 401: ErrorBody},
    )
    def get(self, request):
        current = token_public_id(token_digest(request.auth))
        rows = selectors.token_list(user_id=request.user.id)
        return Response({"results": [{**row, "current": row["id"] == current} for row in rows]})

    @extend_schema(
        operation_id="auth_tokens_revoke_all",
        request=None,
        responses={200: inline_serializer("Revoked", {"revoked": serializers.IntegerField()}), 401: ErrorBody},
    )
    def delete(self, request):
        return Response({"revoked": services.tokens_revoke_all(user_id=request.user.id)})


class TokenDetailApi(RateLimitedApiMixin, APIView):
    """DELETE one of the caller's tokens by the id the list shows."""

    permission_classes = [IsProductUser]
    concurrency_policy = "api.concurrent"

    @extend_schema(request=None, responses={204: None, 401: ErrorBody, 404: ErrorBody})
    def delete(self, request, token_id: str):
        if not services.token_revoke_by_id(user_id=request.user.id, token_id=token_id):
            raise ApiError(404, "Not found.", "not_found")
        return Response(status=status.HTTP_204_NO_CONTENT)
