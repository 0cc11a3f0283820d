"""Request ids: one per request, on its response, its error bodies, its log lines and the work it starts.

The id is the `X-Request-ID` a trusted proxy (RESILIENCE_TRUSTED_PROXIES, e.g. nginx setting its
$request_id) sent, so the proxy's access log and ours name the same request; from anyone else the
header is ignored (a client must not be able to make its requests look like someone else's in the
logs) and an id is generated. It lives in a contextvar for the request's duration: `current()` reads
it anywhere (error bodies, the log filter, Celery's publish hook, the users outbox) without passing
it down every call. A Celery task gets its publisher's id in a message header (project/celery.py).
"""

import contextvars
import logging
import os
import re
from contextlib import contextmanager

from .ratelimit.http import from_trusted_proxy

HEADER = "X-Request-ID"
_META_KEY = "HTTP_X_REQUEST_ID"
# What an id may look like: UUIDs, nginx's hex $request_id, most tracing ids. Bounded, and no spaces,
# quotes or control characters, so an id copied into a header, a JSON log or a task header cannot
# break out of it.
_VALID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("bulwark_request_id", default="")


def current() -> str:
    """Return the id of the request (or task) this code runs for; "" outside of one."""
    return _current.get()


def valid(value: str) -> bool:
    return bool(value) and _VALID.fullmatch(value) is not None


def generate() -> str:
    # 128 random bits in hex: as unique as a uuid4, at a third of its cost on the hot path.
    return os.urandom(16).hex()


@contextmanager
def bound(value: str):
    """Run the block as request `value` (a task, a test, a management command)."""
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)


def set_current(value: str) -> None:
    """Make `value` the id from here on in this context (Celery's task_prerun: one task at a time)."""
    _current.set(value)


def from_request(request) -> str:
    """The id `request` carries from a trusted proxy, else a new one."""
    offered = request.META.get(_META_KEY)
    if offered and valid(offered) and from_trusted_proxy(request):
        return offered
    return generate()


class RequestIdMiddleware:
    """Give every request an id (see the module docstring) and return it in `X-Request-ID`. First in
    MIDDLEWARE, so every other middleware's log lines and answers carry it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        value = from_request(request)
        request.request_id = value
        token = _current.set(value)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        response[HEADER] = value
        return response


class RequestIdFilter(logging.Filter):
    """Add `request_id` (the current id, "-" outside a request) to every record a handler emits; the
    formatters name it (project/settings/base.py, production.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        value = _current.get()
        if not value:
            # Django logs a 4xx/5xx answer ("Not Found: /x") after the middleware chain has returned,
            # so after this id was unbound; it passes the request along, which carries the id.
            value = getattr(getattr(record, "request", None), "request_id", None)
        record.request_id = value or "-"
        return True
