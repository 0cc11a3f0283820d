"""The real processes the suite starts, stops and kills: the stack's components (scripts/stack), a
granian server, a Celery worker and beat, and a webhook receiver (a real HTTP server in a thread).

Every child gets this process's environment, so BULWARK_* ports and BULWARK_STACK_DIR reach them all.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from project.server import granian_argv
from project.worker import beat_argv, worker_argv
from tests.stack import wait_for
from webhooks.signing import ID_HEADER, verify

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SETTINGS = "chaos.settings"


class Process:
    """One child process in its own session (so a signal reaches its children too), logging to a file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path):
        self.name, self.argv, self.log_path = name, argv, log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0

    def start(self, **env_extra) -> None:
        env = dict(os.environ, DJANGO_SETTINGS_MODULE=SETTINGS, **{k: str(v) for k, v in env_extra.items()})
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "a") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start {' '.join(self.argv)} {env_extra or ''}\n")
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_log(self, text: str, *, timeout: float) -> None:
        """Wait until this run of the process has logged `text` (e.g. Celery's "ready.")."""

        def logged():
            if self.pid is None:
                raise RuntimeError(f"{self.name} exited (see {self.log_path})")
            with open(self.log_path, errors="replace") as log:
                log.seek(self._log_offset)
                return text in log.read()

        wait_for(logged, timeout=timeout, interval=0.2, message=f"{self.name} to log {text!r}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def signal(self, sig: int) -> None:
        if self.pid is not None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (no graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


def server(port: int, log_dir: Path) -> Process:
    """granian as `make bench` runs it: 2 processes, 4 threads each."""
    return Process(
        "server",
        granian_argv(port, log_level="warning"),
        log_dir,
    )


def wait_until_serving(base_url: str, proc: Process, timeout: float = 60) -> None:
    def live():
        if proc.pid is None:
            raise RuntimeError(f"{proc.name} exited (see {proc.log_path})")
        return urllib.request.urlopen(f"{base_url}/health/live", timeout=2).status == 200  # noqa: S310

    wait_for(live, timeout=timeout, interval=0.2, message=f"{proc.name} to serve")


def worker(log_dir: Path) -> Process:
    # Two pool processes: a webhook run waiting on a dead receiver never delays a flush.
    return Process(
        "worker",
        worker_argv("--without-gossip", "--without-mingle", "--without-heartbeat", concurrency=2),
        log_dir,
    )


def beat(log_dir: Path) -> Process:
    return Process(
        "beat",
        beat_argv(log_dir / "beat-schedule", "--max-interval=1"),
        log_dir,
    )


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
