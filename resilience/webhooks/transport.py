"""One POST with separate connect and read timeouts, on the standard library (no redirects followed)."""

import http.client
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_RESPONSE_BYTES = 4096  # kept for the admin's last_error; the rest is not read


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    retry_after: float | None


def url_host(url: str) -> str:
    """Return the lower-cased host name of `url` ("" if it has none): one breaker per destination host."""
    return (urlsplit(url).hostname or "").lower()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: ignored, our own backoff applies


def post(url: str, body: bytes, headers: dict[str, str], *, connect_timeout: float, read_timeout: float) -> Response:
    """POST `body` to `url` and return the response (any status).

    Raise OSError (refused, unreachable, DNS, TLS, a timeout: socket.timeout is an OSError) or
    http.client.HTTPException (a malformed answer) when there is no response, and ValueError for a URL
    that cannot be requested. `read_timeout` bounds each wait for the receiver, not the whole answer.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=connect_timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout)
    try:
        conn.connect()
        conn.sock.settimeout(read_timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        body = response.read(MAX_RESPONSE_BYTES)
        return Response(response.status, body, _retry_after(response.getheader("Retry-After")))
    finally:
        conn.close()
