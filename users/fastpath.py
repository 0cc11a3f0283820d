"""GET /api/v1/users/{id}/, the hottest request, without DRF's per-request machinery.

DRF's dispatch (wrapping the request, negotiating, authenticator and permission objects, a template
response to render) costs a cached profile read a tenth of its throughput (`make bench`). An anonymous
caller asking for JSON needs none of it: `fast_get` answers that plain case with the same limiter
call, selectors and body as UserDetailApi, and hands every other request (a token or session, an
Accept header or query string for DRF to judge, any method but GET, `USERS_FAST_READ = False`) to
UserDetailApi unchanged. tests/users/test_fastpath.py holds both to the same answers.
"""

import functools

from django.conf import settings
from django.http import HttpResponse

from project.api import JsonContentNegotiation
from resilience.errors import error_response
from resilience.ratelimit.drf import admit
from resilience.ratelimit.http import headers, request_key

from .apis import UserDetailApi, public_profile_answer, row_companions

_api = UserDetailApi()  # asked, never dispatched: its allowed methods and rate-limit policy
_api.head = _api.get  # as View.setup does for every dispatched view: HEAD is allowed where GET is
_ALLOW = ", ".join(_api.allowed_methods)
_render_json = UserDetailApi.renderer_classes[0]().render


def fast_get(drf_view):
    """Wrap UserDetailApi's view. functools.wraps keeps its `cls` and `csrf_exempt`, so the schema
    generator and the CSRF middleware see UserDetailApi itself."""

    @functools.wraps(drf_view)
    def view(request, user_id):
        if not _plain(request):
            return drf_view(request, user_id=user_id)
        try:
            policy = _api.rate_limit_policy(request)
            key = functools.partial(request_key, policy, request, anonymous=True)
            decision, sent = admit(policy, key, row_companions(user_id, pending=True))
        except Exception as exc:  # a denial, or a domain error (an unknown shard group) naming the keys
            response = error_response(exc)
            if response is None:
                raise  # not the API's to answer: Django's handler500, as from a DRF view
            return _finish(response, None)
        try:
            status_code, body, etag = public_profile_answer(user_id, sent, request.headers.get("If-None-Match", ""))
        except Exception as exc:
            response = error_response(exc)
            if response is None:
                raise  # not the API's to answer: Django's handler500, as from a DRF view
            return _finish(response, decision)
        if body is None:
            response = HttpResponse(status=status_code)
            del response["Content-Type"]  # as DRF: no body, no type
        else:
            response = HttpResponse(_render_json(body), status=status_code, content_type="application/json")
        response["ETag"] = etag
        return _finish(response, decision)

    return view


def _plain(request) -> bool:
    """Whether UserDetailApi would treat `request` as this view does: a GET by an anonymous caller
    (no token, no session cookie: the limiter counts it by address) that takes JSON."""
    meta = request.META
    return (
        request.method == "GET"
        and settings.USERS_FAST_READ
        and "HTTP_AUTHORIZATION" not in meta
        and settings.SESSION_COOKIE_NAME not in request.COOKIES
        and meta.get("HTTP_ACCEPT", "") in JsonContentNegotiation.PLAIN
        and not meta.get("QUERY_STRING")
    )


def _finish(response: HttpResponse, decision) -> HttpResponse:
    response["Allow"] = _ALLOW
    if decision is not None:
        for name, value in headers(decision).items():
            response[name] = value
    return response
