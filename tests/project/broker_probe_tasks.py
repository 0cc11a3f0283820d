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
