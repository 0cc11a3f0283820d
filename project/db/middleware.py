"""Carry read-your-writes across requests, and honour `Consistency: strong`.

After a request that wrote, the response carries the deadline until which the client's reads go to
primaries: a cookie for browsers and the `Bulwark-Read-Primary-Until` header (unix seconds) that API
clients echo back on their next requests.
"""

import time

from django.conf import settings

from . import pinning
from .fleet import heartbeat

COOKIE = "bulwark_rpu"
HEADER = "Bulwark-Read-Primary-Until"


def _parse_deadline(raw: str | None) -> float:
    try:
        value = float(raw or 0)
    except ValueError:
        return 0.0
    # A client may only ask for the window it could have been given.
    return min(value, time.time() + settings.READ_YOUR_WRITES_WINDOW)


class ReadYourWritesMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        # Built once per serving process: it then announces the groups it knows (reshard checks them).
        heartbeat.ensure_started()

    def __call__(self, request):
        deadline = max(_parse_deadline(request.COOKIES.get(COOKIE)), _parse_deadline(request.headers.get(HEADER)))
        strong = request.headers.get("Consistency", "").strip().lower() == "strong"
        pinning.reset(pinned_until=deadline, strong=strong)
        response = self.get_response(request)
        if pinning.wrote():
            until = pinning.pinned_until()
            response[HEADER] = f"{until:.3f}"
            response.set_cookie(
                COOKIE, f"{until:.3f}", max_age=int(settings.READ_YOUR_WRITES_WINDOW) + 1, httponly=True, samesite="Lax"
            )
        return response
