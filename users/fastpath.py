"""GET /api/v1/users/{id}/ and GET /api/v1/users/me/, the hottest requests, without DRF's
per-request machinery.

DRF's dispatch (wrapping the request, negotiating, authenticator and permission objects, a template
response to render) costs a cached profile read a tenth of its throughput (`make bench`). A plain
request needs none of it: `fast_get` answers an anonymous caller asking for JSON with the same
limiter call, selectors and body as UserDetailApi; `fast_me` answers a `Token` holder asking for
JSON with the same authenticator (TokenAuthentication itself), limiter call and body as UserMeApi.
Every other request (a session, an Accept header or query string for DRF to judge, any method but
GET, `USERS_FAST_READ = False`) goes to the DRF view unchanged. tests/users/test_fastpath.py holds
both paths to the same answers.
"""

import functools

from django.conf import settings
from django.http import HttpResponse
from rest_framework.authentication import get_authorization_header

from project.api import JsonContentNegotiation
from resilience.errors import error_response
from resilience.ratelimit.drf import admit
from resilience.ratelimit.http import USERNAME_KINDS, headers, request_key
from resilience.ratelimit.policies import get_policy

from . import selectors
from .apis import UserDetailApi, UserMeApi, me_row, private_profile_answer, public_profile_answer, row_companions
from .authentication import TokenAuthentication

_api = UserDetailApi()  # asked, never dispatched: its allowed methods and rate-limit policy
_api.head = _api.get  # as View.setup does for every dispatched view: HEAD is allowed where GET is
_ALLOW = ", ".join(_api.allowed_methods)
_render_json = UserDetailApi.renderer_classes[0]().render
_me_api = UserMeApi()  # asked, never dispatched: its rate-limit policy
_authenticator = TokenAuthentication()
_TOKEN_KEYWORD = _authenticator.keyword.lower().encode()


def fast_get(drf_view):
    """Wrap UserDetailApi's view. functools.wraps keeps its `cls` and `csrf_exempt`, so the schema
    generator and the CSRF middleware see UserDetailApi itself."""

    @functools.wraps(drf_view)
    def view(request, user_id):
        if not (_front_took(request) or _plain(request)):
            return drf_view(request, user_id=user_id)
        try:
            policy = _api.rate_limit_policy(request)
            key = functools.partial(request_key, policy, request, anonymous=True)
            decision, sent = admit(policy, key, row_companions(user_id, pending=True))
        except Exception as exc:  # a denial, or a domain error (an unknown shard group) naming the keys
            return _error(exc, None)
        try:
            meta = request.META
            status_code, body, etag = public_profile_answer(
                user_id, sent, meta.get("HTTP_IF_NONE_MATCH", ""), meta.get("HTTP_IF_MATCH")
            )
        except Exception as exc:
            return _error(exc, decision)
        response = _response(status_code, body)
        response["ETag"] = etag
        return _finish(response, decision)

    view.front_takes = _plain  # project/front.py: the requests this view answers itself
    return view


def fast_me(drf_view):
    """Wrap the view of /users/me/ (a project.api_routing.by_method view: its Allow is kept)."""

    @functools.wraps(drf_view)
    def view(request):
        if not (_front_took(request) or _takes_me(request)):
            return drf_view(request)
        try:
            authenticated = _authenticator.authenticate(request)  # DRF's first authenticator, as DRF runs it
        except Exception as exc:  # a bad, expired or revoked token, a guesser refused, a shard down
            return _error(exc, None, drf_view.allow)
        if authenticated is None:  # not a `Token` header: DRF's other authenticators decide
            return drf_view(request)
        request.user = authenticated[0]  # as DRF's Request sets it: the limiter keys on it
        decision = None
        try:
            policy = _me_api.rate_limit_policy(request)
            probe = selectors.user_cache_probe(user_id=request.user.id)
            decision, sent = admit(
                policy, functools.partial(request_key, policy, request), {"row": probe} if probe else {}
            )
            row = me_row(request.user.id, probed=sent.get("row"))
            meta = request.META
            status_code, body, etag = private_profile_answer(
                row, meta.get("HTTP_IF_NONE_MATCH", ""), meta.get("HTTP_IF_MATCH")
            )
        except Exception as exc:  # a denial, the account gone, a false If-Match, a domain error
            return _error(exc, decision, drf_view.allow)
        response = _response(status_code, body)
        response["ETag"] = etag
        return _finish(response, decision, drf_view.allow)

    view.front_takes = _takes_me  # project/front.py: the requests this view answers itself
    return view


def _response(status_code: int, body: dict | None) -> HttpResponse:
    if body is None:
        response = HttpResponse(status=status_code)
        del response["Content-Type"]  # as DRF: no body, no type
        return response
    return HttpResponse(_render_json(body), status=status_code, content_type="application/json")


def _needs_body(request) -> bool:
    """Whether UserMeApi's limiter would read a username from the request body (a policy keyed by
    username): DRF parses it, so DRF answers."""
    return get_policy(_me_api.rate_limit_policy(request)).key_kind in USERNAME_KINDS


def _front_took(request) -> bool:
    """Whether project/front.py asked this view's `front_takes` and it said yes (the same request)."""
    return getattr(request, "front_taken", False)


def _plain_type(request) -> bool:
    """A GET without a session cookie that takes JSON, asking nothing DRF's negotiation must judge."""
    meta = request.META
    return (
        request.method == "GET"
        and settings.USERS_FAST_READ
        and settings.SESSION_COOKIE_NAME not in request.COOKIES
        and meta.get("HTTP_ACCEPT", "") in JsonContentNegotiation.PLAIN
        and not meta.get("QUERY_STRING")
    )


def _takes_me(request) -> bool:
    """Whether the /me view answers `request` itself: a plain GET with a `Token` Authorization header
    (anything else, such as Basic, is for DRF's other authenticators) and a limit not keyed by a
    username from the body."""
    if not _plain_type(request):
        return False
    words = get_authorization_header(request).split()  # as TokenAuthentication splits it
    return bool(words) and words[0].lower() == _TOKEN_KEYWORD and not _needs_body(request)


def _plain(request) -> bool:
    """Whether UserDetailApi would treat `request` as this view does: a GET by an anonymous caller
    (no token, no session cookie: the limiter counts it by address) that takes JSON."""
    return _plain_type(request) and "HTTP_AUTHORIZATION" not in request.META


def _error(exc: Exception, decision, allow: str = _ALLOW) -> HttpResponse:
    """The answer DRF's exception handler gives `exc`; re-raise what it does not answer (Django's
    handler500 then answers, as for an exception a DRF view raises)."""
    response = error_response(exc)
    if response is None:
        raise exc
    return _finish(response, decision, allow)


def _finish(response: HttpResponse, decision, allow: str = _ALLOW) -> HttpResponse:
    response["Allow"] = allow
    if decision is not None:
        for name, value in headers(decision).items():
            response[name] = value
    return response
