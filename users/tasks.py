"""Celery tasks: thin wrappers that own their retry policy and call a service."""

from celery import shared_task

from . import cache
from .writebehind import flush as wb_flush


@shared_task(name="users.writebehind_flush", ignore_result=True)
def writebehind_flush():
    # Idempotent by the batch ledger, so late ack + redelivery after a worker dies is safe.
    return wb_flush.flush()


@shared_task(name="users.writebehind_prune_ledger", ignore_result=True)
def writebehind_prune_ledger():
    return wb_flush.prune_ledger()


@shared_task(name="users.cache_replay_invalidations", ignore_result=True)
def cache_replay_invalidations():
    try:
        return cache.replay_invalidations()
    except cache.CacheUnavailable:
        return 0  # still down; the keys stay queued
