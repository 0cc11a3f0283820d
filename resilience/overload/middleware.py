"""AdaptiveLimitMiddleware: every request (but health and /metrics) passes its group's adaptive limit.

Second in MIDDLEWARE, right after the request id: the latency it measures is all of Django's work on
the request (sessions, authentication, the view, the cached read's fast path), and a refused request
skips all of it. That matters: a refusal must cost far less than the request it saves, or shedding
under overload burns the capacity it is meant to protect (docs/architecture.md, "Overload"). A refusal
is a 503 with Retry-After and the JSON error body (code "overloaded", the request id included).

Per request: a dictionary look-up to classify (registry.py resolves each distinct path once), a lock to
take a slot, a lock to give it back with its latency. RESILIENCE_ADAPTIVE_ENABLED = False skips it all.
"""

import time

from django.http import JsonResponse

from ..errors import error_body
from ..metrics import count_adaptive_refusal
from .limiter import REFUSED, SHADOWED
from .options import limiter, options
from .registry import classify

_perf = time.perf_counter


def overloaded_response(retry_after: int) -> JsonResponse:
    """The answer to a request over the limit: 503, Retry-After, the error shape."""
    response = JsonResponse(
        error_body("The server is overloaded; retry after the time in Retry-After.", "overloaded"), status=503
    )
    response["Retry-After"] = str(retry_after)
    # Django logs every 5xx at ERROR, one line each: under overload that is thousands of lines a second
    # spent on requests refused to save work. Refusals are counted (bulwark_adaptive_refusals) and
    # summed up once per window in the log instead (resilience/metrics.py).
    response._has_been_logged = True
    return response


class AdaptiveLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        settings = options()
        if not settings.enabled:
            return self.get_response(request)
        classified = classify(request)
        if classified is None:
            return self.get_response(request)
        group, priority = classified
        group_limiter = limiter(group)
        verdict = group_limiter.acquire(priority)
        if verdict is REFUSED:
            count_adaptive_refusal(group, str(priority), shadow=False)
            return overloaded_response(settings.retry_after)
        if verdict is SHADOWED:
            count_adaptive_refusal(group, str(priority), shadow=True)
        # Started after the wait for a slot: that wait is this limiter's own queue, and counting it
        # would shrink the limit because of the limit.
        started = _perf()
        try:
            return self.get_response(request)
        finally:
            group_limiter.release(_perf() - started)
