"""Carry read-your-writes across requests, and honour `Consistency: strong`.

After a request that wrote, the response carries, for each database group written, the primary's WAL
position after the write (and whether a synchronous standby applied it): the `Bulwark-Read-Lsn` header
and a cookie, which clients echo back. A later read of that group goes to a replica that has replayed
that position, else to the primary (project/db/pinning.py, routing.py). `Bulwark-Read-Primary-Until`
(unix seconds) bounds that for READ_YOUR_WRITES_WINDOW; a client sending it alone, as before LSNs,
reads from primaries until then.

Token format: `group:lsn[:s],group:lsn[:s]` (`s`: committed with remote_apply). A client can only
weaken or strengthen its own reads with it, never anyone else's.
"""

import time

from django.conf import settings

from . import pinning, routing
from .fleet import heartbeat

COOKIE = "bulwark_rpu"
HEADER = "Bulwark-Read-Primary-Until"
LSN_COOKIE = "bulwark_lsn"
LSN_HEADER = "Bulwark-Read-Lsn"
# The request headers as WSGI names them: read from META, since request.headers copies every header
# into a new mapping on first use, a cost the cached profile read otherwise never pays.
_META_HEADER, _META_LSN_HEADER, _META_CONSISTENCY = (
    "HTTP_BULWARK_READ_PRIMARY_UNTIL",
    "HTTP_BULWARK_READ_LSN",
    "HTTP_CONSISTENCY",
)


def _parse_deadline(raw: str | None) -> float:
    if not raw:  # most requests carry none: no settings look-up, no clock read
        return 0.0
    try:
        value = float(raw or 0)
    except ValueError:
        return 0.0
    # A client may only ask for the window it could have been given.
    return min(value, time.time() + settings.READ_YOUR_WRITES_WINDOW)


def parse_lsns(raw: str | None) -> dict:
    """Parse a token into {group: (lsn, synced)}; unknown groups and malformed items are ignored."""
    result = {}
    if not raw:
        return result
    for item in raw.split(",")[:64]:
        group, _, rest = item.strip().partition(":")
        lsn, _, flag = rest.partition(":")
        if group in settings.DATABASE_GROUPS and lsn.isdigit() and len(lsn) <= 20:
            result[group] = (int(lsn), flag == "s")
    return result


def format_lsns(lsns: dict) -> str:
    return ",".join(f"{g}:{lsn}{':s' if synced else ''}" for g, (lsn, synced) in sorted(lsns.items()))


class ReadYourWritesMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        # Built once per serving process: it then announces the groups it knows (reshard checks them).
        heartbeat.ensure_started()

    def __call__(self, request):
        meta = request.META
        deadline = max(_parse_deadline(request.COOKIES.get(COOKIE)), _parse_deadline(meta.get(_META_HEADER)))
        lsns = parse_lsns(request.COOKIES.get(LSN_COOKIE))
        for group, value in parse_lsns(meta.get(_META_LSN_HEADER)).items():
            lsns[group] = max(lsns.get(group, value), value)
        strong = meta.get(_META_CONSISTENCY, "").strip().lower() == "strong"
        pinning.reset(pinned_until=deadline, strong=strong, lsns=lsns)
        response = self.get_response(request)
        if pinning.wrote():
            routing.record_commit_lsns()
            until = pinning.pinned_until()
            max_age = int(settings.READ_YOUR_WRITES_WINDOW) + 1
            response[HEADER] = f"{until:.3f}"
            response.set_cookie(COOKIE, f"{until:.3f}", max_age=max_age, httponly=True, samesite="Lax")
            token = format_lsns(pinning.lsns())
            if token:
                response[LSN_HEADER] = token
                response.set_cookie(LSN_COOKIE, token, max_age=max_age, httponly=True, samesite="Lax")
        return response
