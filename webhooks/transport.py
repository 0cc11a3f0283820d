"""One POST on the standard library (no redirects followed, no proxy), under three bounds:

- the destination: the host is resolved once, every address is checked by egress.py, and the socket
  is connected to one of those checked addresses (the Host header and TLS SNI/certificate check still
  use the URL's name), so a second DNS answer can never send us somewhere else;
- a per-operation timeout: `connect_timeout` for TCP + TLS, `read_timeout` for each wait on the
  receiver;
- an overall deadline for the whole attempt: a receiver that answers one byte at a time, each within
  the read timeout, is cut off at the deadline instead of holding the worker for as long as it likes.
"""

import http.client
import io
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import egress

MAX_RESPONSE_BYTES = 4096  # kept for the admin's last_error; the rest is not read


class DeadlineExceeded(TimeoutError):
    """The attempt ran past its overall deadline (a TimeoutError, so an OSError: no response)."""


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


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def timeout(self, limit: float) -> float:
        """Return the timeout for the next operation: `limit`, cut to what is left of the deadline.
        Raise DeadlineExceeded if nothing is left."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.exceeded()
        return min(limit, left)

    def exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"delivery deadline of {self.seconds:g} s exceeded")

    def call(self, limit: float, sock: socket.socket, operation, *args):
        """Run `operation(*args)` on `sock` with the timeout for the next operation; a timeout that
        the deadline caused is reported as DeadlineExceeded."""
        sock.settimeout(self.timeout(limit))
        try:
            return operation(*args)
        except TimeoutError:
            if time.monotonic() >= self.at:
                raise self.exceeded() from None
            raise


class _DeadlineReader(io.RawIOBase):
    """The response stream: each receive waits at most the read timeout and never past the deadline
    (http.client reads the status line, headers and body through it)."""

    def __init__(self, sock: socket.socket, deadline: _Deadline, read_timeout: float):
        self._sock, self._deadline, self._read_timeout = sock, deadline, read_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._deadline.call(self._read_timeout, self._sock, self._sock.recv_into, buffer)


class _DeadlineSocket:
    """What http.client holds as its socket: the only three methods it uses on a connected socket.

    `close` does nothing: http.client closes its socket as soon as it has read the headers of a
    response that ends the connection, while the body is still to be read from the socket (a real
    socket survives that through makefile's reference count). post() closes the real socket itself.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline, read_timeout: float):
        self._sock, self._deadline, self._read_timeout = sock, deadline, read_timeout

    def sendall(self, data) -> None:
        # Since Python 3.5 a socket timeout bounds the whole sendall, not each chunk.
        self._deadline.call(self._read_timeout, self._sock, self._sock.sendall, data)

    def makefile(self, mode: str = "rb", *args, **kwargs):
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline, self._read_timeout))

    def close(self) -> None:
        pass


def _connect(infos: list[tuple], deadline: _Deadline, connect_timeout: float, *, tls_host: str | None) -> socket.socket:
    """Connect to the first of the checked addresses that answers (TLS on top when `tls_host` is set)."""
    error: OSError | None = None
    for family, type_, proto, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            deadline.call(connect_timeout, sock, sock.connect, sockaddr)
            if tls_host is not None:
                sock = ssl.create_default_context().wrap_socket(
                    sock, server_hostname=tls_host, do_handshake_on_connect=False
                )
                deadline.call(connect_timeout, sock, sock.do_handshake)
            return sock
        except DeadlineExceeded:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            error = exc
    raise error if error is not None else OSError("no address to connect to")


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connect_timeout: float,
    read_timeout: float,
    deadline: float,
    allowed_networks: Iterable[egress.Network] = (),
) -> Response:
    """POST `body` to `url` and return the response (any status), all within `deadline` seconds.

    Raise egress.DestinationRefused (a ValueError) if the host resolves to an address that is not
    allowed, ValueError for a URL that cannot be requested, DeadlineExceeded (an OSError) past the
    deadline, OSError (refused, unreachable, DNS, TLS, a timeout) or http.client.HTTPException
    (a malformed answer) when there is no response.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    budget = _Deadline(deadline)
    # getaddrinfo cannot be given a timeout; the resolver's own (a few seconds) bounds it.
    infos = egress.resolve(parts.hostname, port, allowed_networks)
    sock = _connect(infos, budget, connect_timeout, tls_host=parts.hostname if parts.scheme == "https" else None)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    # The connection is given the socket already connected, so it never resolves the name itself;
    # it still sends the URL's host in the Host header.
    conn = connection_class(parts.hostname, parts.port)
    conn.sock = _DeadlineSocket(sock, budget, read_timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        body = response.read(MAX_RESPONSE_BYTES)
        return Response(response.status, body, _retry_after(response.getheader("Retry-After")))
    finally:
        conn.close()
        sock.close()
