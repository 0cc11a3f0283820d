"""One error shape everywhere: {"detail": ..., "code": ..., "fields": {...}?, "request_id": ...}.

Maps DRF's exceptions, and the domain exceptions apps register with `register_error` (conflicts,
stale versions, unavailable shards: users/errors.py), to clear 4xx/503 answers, so bad input never
becomes a 500.
"""

import logging
from collections.abc import Callable

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .request_id import current as current_request_id

logger = logging.getLogger(__name__)
_render_json = JSONRenderer().render  # DRF's own rendering: the same bytes as an APIView's answer


class ApiError(exceptions.APIException):
    """An API error with an explicit status, code and optional headers."""

    def __init__(self, status_code: int, detail: str, code: str, *, fields=None, headers=None):
        super().__init__(detail=detail, code=code)
        self.status_code = status_code
        self.code = code
        self.fields = fields
        self.extra_headers = headers or {}


def error_body(detail, code, fields=None) -> dict:
    """The error shape; `request_id` names the request in the logs (resilience/request_id.py), so a
    client reporting an error can quote it."""
    body = {"detail": str(detail), "code": code}
    if fields:
        body["fields"] = fields
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    return body


def _flatten(detail):
    if isinstance(detail, dict):
        return {k: _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [str(x) if not isinstance(x, dict | list) else _flatten(x) for x in detail]
    return [str(detail)]


# Domain exception type -> function building the ApiError it answers as. Apps register theirs from
# AppConfig.ready() (users/apps.py), so this generic module imports no domain code.
_DOMAIN_ERRORS: dict[type[BaseException], Callable[[BaseException], ApiError]] = {}


def register_error(exc_type: type[BaseException], to_api_error: Callable[[BaseException], ApiError]) -> None:
    """Answer `exc_type` (and its subclasses, unless they are registered themselves) with the ApiError
    `to_api_error(exc)` returns."""
    _DOMAIN_ERRORS[exc_type] = to_api_error


def _domain_error(exc: BaseException) -> ApiError | None:
    for klass in type(exc).__mro__:  # the most specific registered type wins
        if klass in _DOMAIN_ERRORS:
            return _DOMAIN_ERRORS[klass](exc)
    return None


def exception_handler(exc, context):
    if isinstance(exc, Http404):  # Django's (DRF raises it for an unknown ?format=): no message of its own
        exc = ApiError(404, "Not found.", "not_found")
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("Request body too large (max 64 KiB).", "request_too_large"), status=413)
    domain = _domain_error(exc)
    if domain is not None:
        exc = domain
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        if isinstance(detail, dict):
            non_field = detail.get("non_field_errors")
            fields = {k: v for k, v in _flatten(detail).items() if k != "non_field_errors"}
            message = str(non_field[0]) if non_field else "Invalid input."
            response.data = error_body(message, "invalid", fields or None)
        else:
            response.data = error_body(_flatten(detail)[0], "invalid")
        return response
    code = getattr(exc, "code", None) or (exc.get_codes() if isinstance(exc, exceptions.APIException) else "error")
    if not isinstance(code, str):
        code = "error"
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    response.data = error_body(detail, code, getattr(exc, "fields", None))
    for name, value in getattr(exc, "extra_headers", {}).items():
        response[name] = value
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = "Token"
    return response


def error_response(exc: Exception) -> HttpResponse | None:
    """The answer `exception_handler` gives to `exc`, as a plain Django response, for a view that
    answers outside DRF (users/fastpath.py); None for an exception it does not handle."""
    answer = exception_handler(exc, {})
    if answer is None:
        return None
    response = HttpResponse(_render_json(answer.data), status=answer.status_code, content_type="application/json")
    for name, value in answer.items():
        if name != "Content-Type":
            response[name] = value
    return response


def _json(body: dict, status: int) -> HttpResponse:
    """Django's error views answer in the API's bytes (DRF's compact JSON), not JsonResponse's spaced ones."""
    return HttpResponse(_render_json(body), status=status, content_type="application/json")


@csrf_exempt  # an unknown path is a 404 whatever the method, never a CSRF failure page
def json_404(request, exception=None):
    return _json(error_body("Not found.", "not_found"), 404)


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: the JSON error shape instead of Django's HTML page (an API client sending a
    session cookie without the CSRF token gets this)."""
    return _json(error_body(f"CSRF verification failed: {reason}", "csrf_failed"), 403)


def json_500(request):
    return _json(error_body("Internal error.", "server_error"), 500)


def json_400(request, exception=None):
    return _json(error_body("Bad request.", "bad_request"), 400)


def json_403(request, exception=None):
    return _json(error_body("Forbidden.", "forbidden"), 403)
