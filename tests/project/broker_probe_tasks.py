"""A task for tests only: it buffers views through the worker's own state Redis (behind Sentinel in
the failover test), so that a flush, queued by beat through the same broker, has something to apply."""

from celery import shared_task

from users.writebehind import buffer


@shared_task(name="tests.buffer_views", ignore_result=True)
def buffer_views(user_id: int, count: int) -> None:
    outcome = buffer.views_add(user_id=user_id, count=count)
    if outcome != "buffered":  # "direct" would reach the database without the flush under test
        raise RuntimeError(f"views not buffered: {outcome}")


@shared_task(name="tests.large_result", ignore_result=True)
def large_result(port: int, key: str, size: int) -> str:
    """Mark `key` done on the Redis at `port`, then return `size` bytes: the result travels back to the
    worker's main process through the pool's pipe, read over many turns of its event loop."""
    import redis

    redis.Redis(host="127.0.0.1", port=port).set(key, 1)
    return "x" * size


@shared_task(name="tests.write_after", ignore_result=True)
def write_after(port: int, started_key: str, key: str, delay: float) -> None:
    """Mark `started_key`, wait `delay` seconds, then write `key` on the Redis at `port` with the app's
    socket timeout (5 s): a write that a CLIENT PAUSE WRITE holds longer fails the task, with a result
    larger than a pipe holds (64 KB), as a failed task's was with its traceback (at least 76 KB)."""
    import time

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    client.set(started_key, 1)
    time.sleep(delay)
    try:
        client.set(key, 1)
    except redis.TimeoutError as exc:
        raise RuntimeError(f"{key} not written: {'x' * (128 << 10)}") from exc
