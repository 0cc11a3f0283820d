"""Flush the write-behind buffer: per shard group, claim -> apply in one statement -> acknowledge.

Exactly-once effect, whatever dies when:
- each shard group has its own buffer and at most one claimed batch (claim.lua): a group's views are
  applied and acknowledged whatever another group does, so one shard down delays only its own users;
- claim.lua moves the buffer into a batch atomically; nothing is deleted before the database has it;
- a batch is applied in ONE transaction per shard group that also inserts the batch id into the
  shard's ledger (users_writebehindbatch) per logical shard. A batch applied before (a redelivered
  task, a second beat, an overlapping flush, a flusher killed after commit) hits the ledger and changes
  nothing;
- before that transaction commits, each updated user's new row version is written into the batch
  (its rev mark): a reader holding a row at least that new does not count the batch again, so reads
  never exceed acknowledged views, even between the commit and the acknowledgement;
- the batch is acknowledged (deleted) only after its rows committed. A batch whose shard failed is
  released at once (the next flush retries it); one whose flusher died is re-claimed after
  WRITE_BEHIND_RECLAIM_AFTER seconds;
- an UPDATE that finds no row for users whose logical shard the ledger took fresh is rolled back: the
  flusher's shard map may be stale (a logical shard moved away). The map is reloaded from the default
  database; users it places elsewhere are applied there, users it still places here no longer exist
  (deleted) and are dropped. If the map cannot be reloaded the batch stays claimed (fenced).
"""

import hashlib
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from project import tracing
from resilience import faults
from resilience.redis_state import run_and_wait
from users import cache
from users.sharding.access import ShardUnavailable, group_for_user_id, write_on
from users.sharding.ids import logical_shard_of_id
from users.sharding.shardmap import shard_map

from .buffer import redis_state, script, take_traces
from .keys import STATS, GroupKeys, group_keys, parse_fields, rev_field

logger = logging.getLogger(__name__)

# One statement: the ledger rows of the logical shards not yet applied for this batch, the update of
# exactly those users, and which logical shards were fresh (so users without a row can be noticed).
# A logical shard applied before (by a retry, a redelivered task, an overlapping flush, or on another
# database before a move) is skipped.
APPLY_SQL = """
WITH fresh AS (
  INSERT INTO users_writebehindbatch (batch_id, logical_shard, applied_at)
  SELECT %s, ls, now() FROM unnest(%s::smallint[]) AS ls
  ON CONFLICT DO NOTHING
  RETURNING logical_shard
), updated AS (
  UPDATE users_user u
     SET view_count = u.view_count + d.n,
         last_seen_at = CASE WHEN d.seen IS NULL THEN u.last_seen_at
                             ELSE GREATEST(COALESCE(u.last_seen_at, d.seen), d.seen) END,
         rev = u.rev + 1
    FROM unnest(%s::bigint[], %s::bigint[], %s::timestamptz[]) AS d(id, n, seen)
   WHERE u.id = d.id AND u.logical_shard IN (SELECT logical_shard FROM fresh)
  RETURNING u.id, u.rev
)
SELECT 'u', id, rev FROM updated
UNION ALL
SELECT 'f', logical_shard, 0 FROM fresh
"""


class RowsMissing(Exception):
    """The UPDATE found no row for some users of logical shards it applied: rolled back."""

    def __init__(self, group: str, user_ids: list[int]):
        super().__init__(f"{len(user_ids)} user(s) have no row on {group}")
        self.group, self.user_ids = group, user_ids


def ledger_id(batch_key: str) -> str:
    """The batch's id in the shards' ledgers (32 characters), derived from its key name."""
    return hashlib.blake2b(batch_key.encode(), digest_size=16).hexdigest()


def _apply_on_shard(group: str, batch_key: str, items: dict[int, tuple[int, int | None]]) -> list[tuple[int, int]]:
    """Apply one shard group's part of a batch and mark the new row versions in the batch before
    committing. Return the updated (id, rev) pairs (none for logical shards the ledger says were
    applied before). Raise RowsMissing, ShardUnavailable, DatabaseError or RedisError (nothing
    committed)."""
    ids = list(items)
    counts = [items[i][0] for i in ids]
    seen = [datetime.fromtimestamp(items[i][1] / 1000, tz=UTC) if items[i][1] else None for i in ids]
    logical_shards = sorted({logical_shard_of_id(i) for i in ids})

    def apply(alias):
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(APPLY_SQL, [ledger_id(batch_key), logical_shards, ids, counts, seen])
            rows = cursor.fetchall()
            updated = [(uid, rev) for kind, uid, rev in rows if kind == "u"]
            fresh = {ls for kind, ls, _ in rows if kind == "f"}
            found = {uid for uid, _ in updated}
            missing = [uid for uid in ids if logical_shard_of_id(uid) in fresh and uid not in found]
            if missing:
                raise RowsMissing(group, missing)
            marks = {rev_field(uid): rev for uid, rev in updated if items[uid][0]}
            if marks:
                # Before the commit: once the rows are visible, readers must already find the marks.
                redis_state().hset(batch_key, mapping=marks)
            faults.point("flush.before_commit")
            return updated

    return write_on(group, apply)


def _apply_batch(k: GroupKeys, batch_key: str) -> tuple[int, bool]:
    """Apply a claimed batch; acknowledge it once every part committed, else release it for the next
    flush. Return (rows, acknowledged)."""
    r = redis_state()
    views, seen = parse_fields(r.hgetall(batch_key))
    items = {uid: (views.get(uid, 0), seen.get(uid)) for uid in views.keys() | seen.keys()}
    rows, complete, dropped = 0, True, set()
    for _ in range(3):
        by_group: dict[str, dict] = {}
        for uid, item in items.items():
            if uid not in dropped:
                by_group.setdefault(group_for_user_id(uid), {})[uid] = item
        complete, missing = True, None
        for group, part in by_group.items():
            try:
                updated = _apply_on_shard(group, batch_key, part)
            except RowsMissing as exc:
                missing = exc
                continue
            except (ShardUnavailable, DatabaseError, RedisError) as exc:
                complete = False
                logger.warning("write-behind batch %s: shard %s failed (%s); it stays claimed", batch_key, group, exc)
                continue
            faults.point("flush.after_commit")
            rows += len(updated)
            cache.invalidate_many([(cache.user_key(uid), rev) for uid, rev in updated])
        if missing is None:
            break
        complete = False
        try:
            table = shard_map.reload()
        except Exception as exc:  # noqa: BLE001 (whatever stops the reload, the map cannot be trusted)
            logger.warning(
                "write-behind batch %s fenced: rows missing on %s, shard map unverifiable (%s)",
                batch_key,
                missing.group,
                exc,
            )
            break
        gone = {uid for uid in missing.user_ids if table[logical_shard_of_id(uid)] == missing.group}
        if gone:
            logger.info("write-behind batch %s: dropping items of %s deleted user(s)", batch_key, len(gone))
        dropped |= gone
    if complete:
        faults.point("flush.before_ack")
        pipe = r.pipeline(transaction=True)
        pipe.delete(batch_key)
        pipe.zrem(k.batches, batch_key)
        pipe.zrem(k.first, batch_key)
        pipe.execute()
    else:
        r.zadd(k.batches, {batch_key: 0}, xx=True)  # released: the next flush retries it
    return rows, complete


def _claim(k: GroupKeys) -> tuple[list[str], str]:
    """Claim the group's buffer and its abandoned or released batches: (batch keys, the new batch's key).

    With WRITE_BEHIND_WAIT_REPLICAS, a claim no replica has confirmed is not applied (no keys are
    returned; the batch stays claimed on the master and is re-claimed later). Applied, it could be
    applied twice: after a failover to a replica that never saw the claim, the views are still in that
    replica's buffer, and its next flush applies them again under a new batch id (the ledger cannot
    tell). Found by `make sentinel-demo` (1-4 views counted twice after a SENTINEL FAILOVER)."""
    new = k.batch(uuid.uuid4().hex)
    keys = [k.buffer, k.since, k.batches, k.first, new]
    args = [int(time.time() * 1000), int(settings.WRITE_BEHIND_RECLAIM_AFTER * 1000)]
    replicas = settings.WRITE_BEHIND_WAIT_REPLICAS
    if replicas:
        try:
            claimed, confirmed = run_and_wait(
                redis_state(),
                script("claim"),
                keys=keys,
                args=args,
                replicas=replicas,
                timeout_ms=settings.WRITE_BEHIND_WAIT_TIMEOUT_MS,
            )
        except RedisTimeoutError:  # the claim may exist on the master: it stays there, re-claimed later
            confirmed = 0
        if confirmed < replicas:
            logger.warning("write-behind claim %s not confirmed by %s replica(s); not applied yet", new, replicas)
            return [], new
    else:
        claimed = script("claim")(keys=keys, args=args)
    return [raw.decode() if isinstance(raw, bytes) else raw for raw in claimed], new


def flush() -> dict:
    """Claim each shard group's buffer (and any abandoned batch) and apply it. Return a summary."""
    started = time.perf_counter()
    batches = rows = acknowledged = 0
    for group in settings.SHARD_GROUPS:
        k = group_keys(group)
        # With tracing on, this group's flush is a span linked to the requests that buffered its views.
        with tracing.span_linked_to(f"write-behind flush {group}", take_traces(k)):
            # A second round when the first only finished an old batch: the buffer that accumulated
            # behind it (a shard back from an outage) goes out now, not one interval later.
            for _ in range(2):
                claimed, new = _claim(k)
                faults.point("flush.after_claim")
                done = True
                for batch_key in claimed:
                    applied, ok = _apply_batch(k, batch_key)
                    batches += 1
                    rows += applied
                    acknowledged += ok
                    done = done and ok
                if not claimed or not done or new in claimed:
                    break
    duration_ms = (time.perf_counter() - started) * 1000
    if batches:
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
    return {"batches": batches, "acknowledged": acknowledged, "rows": rows, "duration_ms": duration_ms}


def prune_ledger(*, older_than_hours: float | None = None) -> int:
    """Delete ledger rows older than WRITE_BEHIND_LEDGER_RETENTION hours, and never a row as young as
    the oldest batch still claimed (its ledger rows are what make its re-application a no-op). If the
    state Redis cannot say which batches are claimed, delete nothing."""
    hours = settings.WRITE_BEHIND_LEDGER_RETENTION if older_than_hours is None else older_than_hours
    cutoff = datetime.now(tz=UTC) - timedelta(hours=hours)
    try:
        pipe = redis_state().pipeline(transaction=False)
        for group in settings.SHARD_GROUPS:
            pipe.zrange(group_keys(group).first, 0, 0, withscores=True)
        firsts = [score for reply in pipe.execute() for _, score in reply]
    except RedisError as exc:
        logger.warning("ledger not pruned: claimed batches unknown (state Redis: %s)", exc)
        return 0
    if firsts:
        # An hour of margin for clocks: ledger rows are stamped by the shard, claims by the flusher.
        cutoff = min(cutoff, datetime.fromtimestamp(min(firsts) / 1000, tz=UTC) - timedelta(hours=1))
    deleted = 0
    for group in settings.SHARD_GROUPS:

        def prune(alias):
            with connections[alias].cursor() as cursor:
                cursor.execute("DELETE FROM users_writebehindbatch WHERE applied_at < %s", [cutoff])
                return cursor.rowcount

        deleted += write_on(group, prune)
    return deleted
