"""A task for tests only: it buffers views through the worker's own state Redis (behind Sentinel in
the failover test), so that a flush, queued by beat through the same broker, has something to apply."""

from celery import shared_task

from users.writebehind import buffer


@shared_task(name="tests.buffer_views", ignore_result=True)
def buffer_views(user_id: int, count: int) -> None:
    outcome = buffer.views_add(user_id=user_id, count=count)
    if outcome != "buffered":  # "direct" would reach the database without the flush under test
        raise RuntimeError(f"views not buffered: {outcome}")
