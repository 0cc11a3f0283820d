"""Flush the write-behind buffer: claim -> apply per shard in one statement -> acknowledge.

Exactly-once effect, whatever dies when:
- claim.lua moves the buffer into a batch atomically; nothing is deleted before the database has it;
- each shard applies its part of a batch in ONE transaction that also inserts the batch id into the
  shard's ledger (users_writebehindbatch). A batch applied before (a redelivered task, a second beat,
  an overlapping flush, a flusher killed after commit) hits the ledger and changes nothing;
- the batch is acknowledged (deleted) only after every shard committed. A batch whose flusher died
  or whose shard was down stays claimed and is re-claimed after WRITE_BEHIND_RECLAIM_AFTER seconds.
"""

import logging
import os
import signal
import time
import uuid
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError, connections, transaction

from users import cache
from users.sharding.access import ShardUnavailable, group_for_user_id, write_on
from users.sharding.ids import logical_shard_of_id

from .buffer import BATCHES, SEEN, SINCE, STATS, VIEWS, redis_state, script

logger = logging.getLogger(__name__)

# One statement: the ledger rows of the logical shards not yet applied for this batch, and the
# update of exactly those users. A logical shard applied before (by a retry, a redelivered task,
# an overlapping flush, or on another database before a move) is skipped.
APPLY_SQL = """
WITH fresh AS (
  INSERT INTO users_writebehindbatch (batch_id, logical_shard, applied_at)
  SELECT %s, ls, now() FROM unnest(%s::smallint[]) AS ls
  ON CONFLICT DO NOTHING
  RETURNING logical_shard
)
UPDATE users_user u
   SET view_count = u.view_count + d.n,
       last_seen_at = CASE WHEN d.seen IS NULL THEN u.last_seen_at
                           ELSE GREATEST(COALESCE(u.last_seen_at, d.seen), d.seen) END,
       rev = u.rev + 1
  FROM unnest(%s::bigint[], %s::bigint[], %s::timestamptz[]) AS d(id, n, seen)
 WHERE u.id = d.id AND u.logical_shard IN (SELECT logical_shard FROM fresh)
RETURNING u.id, u.rev
"""


def _fault(point: str) -> None:
    """Fault injection for the crash tests: SIGKILL this process at `point` once, when
    WRITE_BEHIND_FAULT names it (unset in every real deployment; the marker file makes it fire once)."""
    if settings.WRITE_BEHIND_FAULT != point:
        return
    if not settings.WRITE_BEHIND_FAULT_MARKER:
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        os.close(os.open(settings.WRITE_BEHIND_FAULT_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _apply_on_shard(group: str, batch_id: str, items: dict[int, tuple[int, int | None]]) -> list[tuple[int, int]]:
    """Apply one shard's part of a batch. Return the updated (id, rev) pairs (none for logical shards
    the ledger says were applied before). Raise ShardUnavailable / DatabaseError on failure (nothing
    committed)."""
    ids = list(items)
    counts = [items[i][0] for i in ids]
    seen = [datetime.fromtimestamp(items[i][1] / 1000, tz=UTC) if items[i][1] else None for i in ids]

    logical_shards = sorted({logical_shard_of_id(i) for i in ids})

    def apply(alias):
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(APPLY_SQL, [batch_id, logical_shards, ids, counts, seen])
            _fault("before_commit")
            return cursor.fetchall()

    return write_on(group, apply)


def _apply_batch(batch_id: str) -> tuple[int, bool]:
    """Apply a claimed batch; acknowledge it if every shard committed. Return (rows, acknowledged)."""
    r = redis_state()
    views_key, seen_key = f"wb:batch:{batch_id}:views", f"wb:batch:{batch_id}:seen"
    views, seen = r.hgetall(views_key), r.hgetall(seen_key)
    by_group: dict[str, dict[int, list]] = {}
    for raw_id, n in views.items():
        uid = int(raw_id)
        by_group.setdefault(group_for_user_id(uid), {}).setdefault(uid, [0, None])[0] = int(n)
    for raw_id, ms in seen.items():
        uid = int(raw_id)
        by_group.setdefault(group_for_user_id(uid), {}).setdefault(uid, [0, None])[1] = int(ms)
    rows, complete = 0, True
    for group, items in by_group.items():
        try:
            updated = _apply_on_shard(group, batch_id, {k: tuple(v) for k, v in items.items()})
        except (ShardUnavailable, DatabaseError) as exc:
            complete = False
            logger.warning("write-behind batch %s: shard %s failed (%s); it stays claimed", batch_id, group, exc)
            continue
        _fault("after_commit")
        rows += len(updated)
        cache.invalidate_many([(cache.user_key(uid), rev) for uid, rev in updated])
    if complete:
        _fault("before_ack")
        pipe = r.pipeline(transaction=True)
        pipe.delete(views_key, seen_key)
        pipe.zrem(BATCHES, batch_id)
        pipe.execute()
    return rows, complete


def flush() -> dict:
    """Claim what is buffered (and any abandoned batch) and apply it. Return a summary."""
    started = time.perf_counter()
    batch_ids = script("claim")(
        keys=[VIEWS, SEEN, SINCE, BATCHES],
        args=[uuid.uuid4().hex, int(time.time() * 1000), int(settings.WRITE_BEHIND_RECLAIM_AFTER * 1000)],
    )
    _fault("after_claim")
    rows = acknowledged = 0
    for raw in batch_ids:
        applied, done = _apply_batch(raw.decode() if isinstance(raw, bytes) else raw)
        rows += applied
        acknowledged += done
    duration_ms = (time.perf_counter() - started) * 1000
    if batch_ids:
        pipe = redis_state().pipeline(transaction=False)
        pipe.hset(
            STATS,
            mapping={
                "last_flush_at": time.time(),
                "last_flush_rows": rows,
                "last_flush_duration_ms": round(duration_ms, 2),
            },
        )
        pipe.hincrby(STATS, "total_rows", rows)
        pipe.execute()
    return {"batches": len(batch_ids), "acknowledged": acknowledged, "rows": rows, "duration_ms": duration_ms}


def prune_ledger(*, older_than_hours: int = 24) -> int:
    """Delete ledger rows far older than any batch could still be re-claimed."""
    deleted = 0
    for group in settings.SHARD_GROUPS:

        def prune(alias):
            with connections[alias].cursor() as cursor:
                cursor.execute(
                    "DELETE FROM users_writebehindbatch WHERE applied_at < now() - %s * interval '1 hour'",
                    [older_than_hours],
                )
                return cursor.rowcount

        deleted += write_on(group, prune)
    return deleted
