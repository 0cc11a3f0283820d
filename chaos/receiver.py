"""The webhook receiver the suite delivers to: a real HTTP server in a thread. (The processes it starts,
stops and kills are tests/processes.py's.)"""

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from webhooks.signing import ID_HEADER, verify


class Receiver:
    """A webhook receiver on a fixed loopback port: verifies each signature, answers 200, and records
    every delivery by event id (the webhook-id header). `stop()` closes the port (connections are refused),
    `start()` opens it again."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks/bulwark"
        self.secret = ""
        self.lock = threading.Lock()
        self.accepted: Counter[str] = Counter()  # event id -> deliveries answered 200
        self.events: dict[str, dict] = {}  # event id -> payload (first delivery)
        self.bad_signatures = 0
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.handle(dict(self.headers), body)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def handle(self, headers: dict, body: bytes) -> int:
        if not verify(self.secret, headers, body):
            with self.lock:
                self.bad_signatures += 1
            return 401
        event_id = headers.get(ID_HEADER, "")
        with self.lock:
            self.accepted[event_id] += 1
            self.events.setdefault(event_id, json.loads(body))
        return 200

    def received(self) -> set[str]:
        with self.lock:
            return set(self.accepted)
