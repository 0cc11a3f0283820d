"""A real webhook receiver on loopback for the tests (only the world outside the machine is faked, and by
a real HTTP server)."""

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from webhooks.signing import (
    ID_HEADER,
    verify,
)


class Receiver:
    """A real HTTP server on a loopback address. It answers `status` (200 = accept), verifies every
    request's signature with `secret` (or any of several secrets; 401 if it fails) and processes each
    event id at most once. With `drip` set it sends its answer one byte every `drip` seconds."""

    def __init__(self, host: str = "127.0.0.1"):
        self.secret: str | list[str] = ""
        self.status = 200
        self.drip: float | None = None
        self.drip_finished = threading.Event()
        self.hang_next = False  # the next request blocks until `release` is set
        self.release = threading.Event()
        self.hanging = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # every request: headers, body, verified, answered status
        self.processed: list[str] = []  # event ids acted upon, in order (each at most once)
        self.duplicates: Counter[str] = Counter()  # accepted again and ignored
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.handle(self, body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/hooks/bulwark?x=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = dict(request.headers)
        event_id = headers.get(ID_HEADER, "")
        verified = verify(self.secret, headers, body)
        with self.lock:
            hang, self.hang_next = self.hang_next, False
            status = 401 if not verified else self.status
        if hang:
            self.hanging.set()
            self.release.wait(30)
        with self.lock:
            self.requests.append(
                {"headers": headers, "body": body, "verified": verified, "status": status, "path": request.path}
            )
            if status == 200:
                if event_id in self.processed:
                    self.duplicates[event_id] += 1
                else:
                    self.processed.append(event_id)
        try:
            if self.drip is not None:
                self._drip(request, status)
                return
            request.send_response(status)
            request.send_header("Content-Length", "2")
            request.end_headers()
            request.wfile.write(b"ok")
        except OSError:
            pass  # the sender is gone (killed mid-request)

    def _drip(self, request: BaseHTTPRequestHandler, status: int) -> None:
        """Send the whole answer a byte at a time, each byte well within the sender's read timeout."""
        answer = f"HTTP/1.1 {status} OK\r\nContent-Length: 100\r\n\r\n".encode() + b"x" * 100
        for i in range(len(answer)):
            request.wfile.write(answer[i : i + 1])
            request.wfile.flush()
            if self.release.wait(self.drip):
                return  # the test is over
        self.drip_finished.set()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
