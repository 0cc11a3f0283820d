"""Drive the real local stack from tests: stop, start, kill and pause its processes."""

import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stack(*args: str) -> str:
    result = subprocess.run([str(ROOT / "scripts" / "stack"), *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/stack {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result.stdout.strip()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for a server a test or the chaos suite starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessExited(RuntimeError):
    """A process that should be running has exited: `wait_for` gives up at once when its predicate raises it."""


def wait_for(predicate, *, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value, and return that; raise TimeoutError after
    `timeout` seconds (ProcessExited at once)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except ProcessExited:
            raise
        except Exception as exc:  # the condition may raise while a dependency comes back
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {message} (last error: {last_error})")


def run_together(fn, n: int) -> None:
    """Run `fn()` in `n` threads released at the same moment by a barrier; each thread closes its own
    database connections. Exceptions in a thread are re-raised here."""
    import threading

    from django.db import connections

    barrier, errors = threading.Barrier(n), []

    def target():
        barrier.wait()
        try:
            fn()
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
