"""AdaptiveLimitMiddleware: every request to a view (but health and /metrics) passes its group's
adaptive limit.

Second in MIDDLEWARE, right after the request id. It takes the slot in `process_view`, once Django has
resolved the URL (classifying needs the view, and resolving a second time here would cost the cached
read more than the limit itself), and gives it back in `__call__` when the response has come back
through every later middleware: the latency sample is the view plus all the response-side work. A
refused request is answered before its view runs: 503, Retry-After and the JSON error body (code
"overloaded", the request id included).

Per request: a dictionary look-up to classify, a lock to take a slot, a lock to give it back with its
latency. RESILIENCE_ADAPTIVE_ENABLED = False leaves one attribute test.
"""

import time

from django.http import JsonResponse

from ..errors import error_body
from ..metrics import count_adaptive_refusal
from .limiter import REFUSED, SHADOWED
from .options import limiter, options
from .registry import classify

_perf = time.perf_counter
_SLOT = "_bulwark_adaptive_slot"  # request attribute: (limiter, admitted at) while a slot is held


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
        try:
            return self.get_response(request)
        finally:
            slot = request.__dict__.pop(_SLOT, None)
            if slot is not None:
                slot[0].release(_perf() - slot[1])

    def process_view(self, request, view_func, view_args, view_kwargs):
        settings = options()
        if not settings.enabled:
            return None
        classified = classify(request, request.resolver_match)
        if classified is None:
            return None
        group, priority = classified
        group_limiter = limiter(group)
        verdict = group_limiter.acquire(priority)
        if verdict is REFUSED:
            count_adaptive_refusal(group, str(priority), shadow=False)
            return overloaded_response(settings.retry_after)
        if verdict is SHADOWED:
            count_adaptive_refusal(group, str(priority), shadow=True)
        # Taken after the wait for a slot: that wait is this limiter's own queue, and counting it
        # would shrink the limit because of the limit.
        request.__dict__[_SLOT] = (group_limiter, _perf())
        return None
