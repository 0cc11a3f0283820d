"""Which Celery queues have messages and no consumer: one cached, time-boxed check for the ops
overview (ops/dashboard/panels.py) and /health/ready's details (resilience/health.py).

A worker started without a queue (`-Q bulwark`) never runs its tasks, and the queue grows in a Redis
that never evicts; nothing fails loudly, so both pages say so. Asking the workers costs a broadcast
and a wait for replies, so the answer is cached for CELERY_CACHE_SECONDS per process and the ask runs
in a helper thread with a hard deadline: a broker that hangs costs a caller about a second at most.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from project.worker import QUEUES

CELERY_PING_TIMEOUT = 0.5
CELERY_CACHE_SECONDS = 5.0  # a ping waits its whole timeout for replies: don't pay it on every poll

_lock = threading.Lock()
# (monotonic time, workers, the queues each consumes, error)
_cache: tuple[float, list[str], dict[str, list[str]], str] | None = None
_ping_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-queue-ping")


def _describe(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {message}"[:300] if message else exc.__class__.__name__


def _ping_workers() -> dict[str, list[str]]:
    """Ask the workers which queues they consume (active_queues: an answer is also a ping)."""
    from project.celery import app

    # A connection of its own, closed here: a pooled one would keep the reply queue's BRPOP channel
    # open, and a process forked later (a server's workers, a test's) hangs closing it after the fork.
    with app.connection_for_write() as connection:
        replies = app.control.inspect(timeout=CELERY_PING_TIMEOUT, connection=connection).active_queues() or {}
    return {worker: sorted(q.get("name", "") for q in queues or ()) for worker, queues in replies.items()}


def consumers() -> tuple[list[str], dict[str, list[str]], str]:
    """Return (workers that answered, worker -> the queues it consumes, error or ""); cached."""
    global _cache
    with _lock:
        cached = _cache
        if cached is not None and time.monotonic() - cached[0] < CELERY_CACHE_SECONDS:
            return cached[1], cached[2], cached[3]
        consumed: dict[str, list[str]] = {}
        try:
            consumed, error = _ping_pool.submit(_ping_workers).result(timeout=CELERY_PING_TIMEOUT + 1.0), ""
        except FutureTimeout:
            error = "TimeoutError: no answer from the broker within 1.5 s"
        except Exception as exc:  # broker down: reported, not raised
            error = _describe(exc)
        workers = sorted(consumed)
        _cache = (time.monotonic(), workers, consumed, error)
        return workers, consumed, error


def forget() -> None:
    """Drop this process's cached answer, so the next call asks the workers (tests)."""
    global _cache
    with _lock:
        _cache = None


_broker_client = None


def _broker_redis():
    global _broker_client
    from django.conf import settings
    from django_redis import get_redis_connection
    from redis import Redis
    from redis.cluster import RedisCluster

    state = get_redis_connection("state")
    if not isinstance(state, RedisCluster):
        return state
    if _broker_client is None:
        timeout = settings.CACHES["state"]["OPTIONS"]["SOCKET_TIMEOUT"]
        _broker_client = Redis.from_url(
            settings.CELERY_BROKER_URL, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return _broker_client


def depths() -> dict[str, int]:
    """Messages waiting per queue (lists on the broker Redis: the state Redis, or CELERY_BROKER_URL's
    single Redis when the state Redis is a cluster, which cannot be a broker)."""
    pipe = _broker_redis().pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(queue)
    return dict(zip(QUEUES, pipe.execute(), strict=True))


def warnings(depths: dict[str, int], consumed: dict[str, list[str]]) -> list[str]:
    """ "queue webhooks: 3 waiting, no consumer" for each queue with messages that no worker that
    answered consumes. Asked only when the workers answered (else the ping error says why)."""
    consuming = {queue for queues in consumed.values() for queue in queues}
    return [
        f"queue {queue}: {depth} waiting, no consumer"
        for queue, depth in depths.items()
        if depth and queue not in consuming
    ]


def current_warnings() -> list[str]:
    """The warnings now (depths read fresh, consumers from the cache); none when the workers or the
    broker did not answer: the check cannot tell, and the broker's own health entry says it is down."""
    waiting = depths()
    _workers, consumed, error = consumers()
    return [] if error else warnings(waiting, consumed)
