"""Online resharding: move whole logical shards from one shard group to another while serving.

A move runs through recorded, idempotent steps (users.models.ShardMove), so a killed move resumes or
rolls back with one command (`manage.py reshard`):

  planned  -> copy the rows (users, tokens, undispatched outbox events, write-behind ledger) in
              batches while the service keeps writing to the source, then catch up the changes
  copied   -> fence: freeze the logical shards on the source (triggers refuse writes: 503 + Retry-After),
              wait for in-flight writers (LOCK ... IN SHARE MODE), copy the last changes
  fenced   -> verify counts and checksums per logical shard on both sides
  verified -> check that every live process knows the target (project/db/fleet.py), then switch the
              shard map and record `switched` in one transaction in the default database; every
              process picks it up within SHARDING_MAP_TTL; writers still holding the old map hit the
              fence and retry
  switched -> after the map TTL has passed everywhere, delete the moved rows from the source, unfreeze
  done

Reads never fail: until cleanup the source still holds every row (frozen, so identical to the copy).
"""

import logging
import time

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from project.db import fleet
from resilience import faults
from users.models import ShardMapEntry, ShardMove, Token, User
from users.sharding.ids import logical_shard_sql
from users.sharding.shardmap import shard_map

logger = logging.getLogger(__name__)

# Derived from the models, so a new field is moved with its row instead of silently left behind.
USER_COLUMNS = [field.column for field in User._meta.concrete_fields]
TOKEN_COLUMNS = ", ".join(field.column for field in Token._meta.concrete_fields)
BATCH = 1000
LS_OF_USER_ID = logical_shard_sql("user_id")


class MoveError(Exception):
    pass


# --- planning ---
def plan(*, target: str) -> list[tuple[list[int], str]]:
    """Propose logical shards to move onto `target` so every group holds about the same number.

    Returns [(logical shards, source group)]; adding a third group to two moves about a third.
    """
    table = shard_map.table()
    groups = sorted(set(table) | {target})
    if target not in settings.SHARD_GROUPS:
        raise MoveError(f"{target} is not a configured shard group ({', '.join(settings.SHARD_GROUPS)})")
    desired = len(table) // len(groups)
    owned: dict[str, list[int]] = {g: [] for g in groups}
    for ls, g in enumerate(table):
        owned[g].append(ls)
    need = desired - len(owned[target])
    proposal = []
    for group in sorted(groups, key=lambda g: -len(owned[g])):
        if group == target or need <= 0:
            continue
        surplus = len(owned[group]) - desired
        take = owned[group][len(owned[group]) - min(surplus, need) :] if surplus > 0 else []
        if take:
            proposal.append((take, group))
            need -= len(take)
    return proposal


def move_create(*, logical_shards: list[int], target: str) -> ShardMove:
    """Record a move of `logical_shards` (all on one source group) to `target`, or return the
    unfinished move of exactly these logical shards (running a move twice is harmless)."""
    table = shard_map.table()
    sources = {table[ls] for ls in logical_shards}
    if len(sources) != 1:
        raise MoveError(f"the logical shards live on several groups ({sorted(sources)}); move them separately")
    source = sources.pop()
    if source == target:
        raise MoveError(f"logical shards already on {target}")
    if target not in settings.SHARD_GROUPS:
        raise MoveError(f"{target} is not a configured shard group")
    active = ShardMove.objects.using("default").exclude(state__in=[ShardMove.DONE, ShardMove.ROLLED_BACK])
    for move in active:
        if set(move.logical_shards) == set(logical_shards) and move.target == target:
            return move
        if set(move.logical_shards) & set(logical_shards):
            raise MoveError(f"{move} overlaps; resume or roll it back first")
    return ShardMove.objects.using("default").create(
        logical_shards=sorted(logical_shards), source=source, target=target
    )


# --- helpers ---
def _mover(cursor) -> None:
    cursor.execute("SET LOCAL bulwark.mover = 'on'")  # pass the fence triggers, this transaction only


def _save(move: ShardMove, state: str | None = None, **detail) -> None:
    if state:
        move.state = state
    move.detail = {**move.detail, **detail}
    move.updated_at = timezone.now()
    move.save(using="default", update_fields=["state", "detail", "rows_copied", "longest_fence_ms", "updated_at"])
    logger.info("%s", move)


def _fetch(alias: str, sql: str, params) -> list[tuple]:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _sync(move: ShardMove) -> int:
    """Make the target's copy of the moving logical shards equal to the source's. Return rows written."""
    src, dst, lss = move.source, move.target, move.logical_shards
    written = 0
    # users: compare (id, rev) — every write bumps rev — then copy what differs, delete what is gone
    source_revs = dict(_fetch(src, "SELECT id, rev FROM users_user WHERE logical_shard = ANY(%s)", [lss]))
    target_revs = dict(_fetch(dst, "SELECT id, rev FROM users_user WHERE logical_shard = ANY(%s)", [lss]))
    changed = [i for i, rev in source_revs.items() if target_revs.get(i) != rev]
    gone = [i for i in target_revs if i not in source_revs]
    cols = ", ".join(USER_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in USER_COLUMNS if c != "id")
    for start in range(0, len(changed), BATCH):
        rows = _fetch(src, f"SELECT {cols} FROM users_user WHERE id = ANY(%s)", [changed[start : start + BATCH]])
        with transaction.atomic(using=dst), connections[dst].cursor() as cursor:
            _mover(cursor)
            cursor.executemany(
                f"INSERT INTO users_user ({cols}) VALUES ({', '.join(['%s'] * len(USER_COLUMNS))}) "
                f"ON CONFLICT (id) DO UPDATE SET {updates}",
                rows,
            )
        written += len(rows)
    # tokens and the ledger: sets; the outbox: undispatched events by their unique event id
    specs = [
        ("users_token", "digest", TOKEN_COLUMNS, f"{LS_OF_USER_ID} = ANY(%s)", True),
        (
            "users_outboxevent",
            "event_id",
            "event_id, event, user_id, data, created_at",
            f"{LS_OF_USER_ID} = ANY(%s) AND dispatched_at IS NULL",
            False,
        ),
        (
            "users_writebehindbatch",
            "batch_id || '/' || logical_shard",
            "batch_id, logical_shard, applied_at",
            "logical_shard = ANY(%s)",
            False,
        ),
    ]
    for table, key, columns, where, delete_gone in specs:
        source_rows = {r[0]: r[1:] for r in _fetch(src, f"SELECT {key}, {columns} FROM {table} WHERE {where}", [lss])}
        target_keys = {r[0] for r in _fetch(dst, f"SELECT {key} FROM {table} WHERE {where.split(' AND ')[0]}", [lss])}
        missing = [row for k, row in source_rows.items() if k not in target_keys]
        with transaction.atomic(using=dst), connections[dst].cursor() as cursor:
            _mover(cursor)
            if missing:
                n = len(columns.split(","))
                cursor.executemany(
                    f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * n)}) ON CONFLICT DO NOTHING", missing
                )
            if delete_gone:
                stale = [k for k in target_keys if k not in source_rows]
                if stale:
                    cursor.execute(f"DELETE FROM {table} WHERE {key} = ANY(%s)", [stale])
        written += len(missing)
    if gone:
        with transaction.atomic(using=dst), connections[dst].cursor() as cursor:
            _mover(cursor)
            cursor.execute("DELETE FROM users_user WHERE id = ANY(%s)", [gone])  # tokens cascade
        written += len(gone)
    return written


CHECKSUM_SQL = """
SELECT logical_shard, count(*),
       md5(string_agg(id::text || ':' || rev::text || ':' || username || ':' || email || ':' || view_count::text,
                      ',' ORDER BY id))
  FROM users_user WHERE logical_shard = ANY(%s) GROUP BY logical_shard
"""


def checksums(alias: str, logical_shards: list[int]) -> dict[int, tuple[int, str]]:
    """Per logical shard: (row count, checksum of the users' ids, revs and key fields)."""
    return {ls: (n, digest) for ls, n, digest in _fetch(alias, CHECKSUM_SQL, [logical_shards])}


# --- steps ---
def _copy(move: ShardMove) -> None:
    for _ in range(5):  # copy, then catch up while the service keeps writing, until little changes
        written = _sync(move)
        move.rows_copied += written
        if written < 50:
            break
    _save(move, ShardMove.COPIED)


def _fence(move: ShardMove) -> None:
    started = time.perf_counter()
    with transaction.atomic(using=move.source), connections[move.source].cursor() as cursor:
        _mover(cursor)
        cursor.executemany(
            "INSERT INTO users_frozenlogicalshard (logical_shard, frozen_at) VALUES (%s, now()) ON CONFLICT DO NOTHING",
            [[ls] for ls in move.logical_shards],
        )
    # Writers that passed the trigger before the freeze committed may still be in flight: a SHARE
    # lock waits for them (and briefly blocks other writers of the shard), then the last changes copy.
    with transaction.atomic(using=move.source), connections[move.source].cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '10s'")
        cursor.execute("LOCK TABLE users_user, users_token, users_outboxevent, users_writebehindbatch IN SHARE MODE")
    move.rows_copied += _sync(move)
    _save(move, ShardMove.FENCED, fenced_at=time.time(), fence_sync_ms=round((time.perf_counter() - started) * 1000))


def _verify(move: ShardMove) -> None:
    source, target = checksums(move.source, move.logical_shards), checksums(move.target, move.logical_shards)
    if source != target:
        bad = sorted(ls for ls in set(source) | set(target) if source.get(ls) != target.get(ls))
        raise MoveError(f"{move}: copies differ on logical shards {bad[:10]}; resume to re-sync or roll back")
    _save(move, ShardMove.VERIFIED, users=sum(n for n, _ in source.values()))


def check_fleet(target: str) -> None:
    """Raise MoveError unless every live process (web, worker, beat: project/db/fleet.py) knows `target`.

    A process started before the target group was configured has no connection for it: once the map
    points there, the moved users would get 503s from it until it restarts. The state Redis down means
    we cannot know, so the move refuses then too."""
    try:
        lacking = fleet.processes_lacking(target)
    except Exception as exc:  # any failure to read the heartbeats: refuse, never guess
        raise MoveError(f"cannot check that every running process knows {target}: {exc}") from exc
    if lacking:
        names = "; ".join(str(p) for p in lacking[:10])
        raise MoveError(
            f"{len(lacking)} running process(es) do not know {target}: {names}. Restart them with {target} "
            "configured (e.g. SHARD_COUNT), then `reshard resume`."
        )


def _switch(move: ShardMove) -> None:
    check_fleet(move.target)
    # The map entries and the move's `switched` state commit together (both live in the default
    # database): a crash can leave the move `verified` with the old map or `switched` with the new
    # one, never `verified` with the new map, where a rollback would delete the live target rows.
    move.longest_fence_ms = round(
        (time.time() - move.detail.get("fenced_at", time.time())) * 1000 + settings.SHARDING_MAP_TTL * 1000
    )
    try:
        with transaction.atomic(using="default"):
            ShardMapEntry.objects.using("default").filter(logical_shard__in=move.logical_shards).update(
                group=move.target
            )
            faults.point("reshard.map_switched")  # inside the switch transaction, before its commit
            _save(move, ShardMove.SWITCHED, switched_at=time.time())
    except BaseException:
        move.state = ShardMove.VERIFIED  # nothing committed: the object must say so too
        raise
    shard_map.invalidate()


def _map_points_at_target(move: ShardMove) -> bool:
    """Read the stored map (not this process's copy) for any of the move's logical shards on its target."""
    return (
        ShardMapEntry.objects.using("default").filter(logical_shard__in=move.logical_shards, group=move.target).exists()
    )


def _delete_logical_shards(alias: str, lss: list[int], *, unfreeze: bool = False) -> None:
    """Delete every row of the logical shards from one database (the source after a move, the
    target after a rollback), in one transaction that passes the fence."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        _mover(cursor)
        cursor.execute(f"DELETE FROM users_outboxevent WHERE {LS_OF_USER_ID} = ANY(%s)", [lss])
        cursor.execute(f"DELETE FROM users_token WHERE {LS_OF_USER_ID} = ANY(%s)", [lss])
        cursor.execute("DELETE FROM users_user WHERE logical_shard = ANY(%s)", [lss])
        cursor.execute("DELETE FROM users_writebehindbatch WHERE logical_shard = ANY(%s)", [lss])
        if unfreeze:
            cursor.execute("DELETE FROM users_frozenlogicalshard WHERE logical_shard = ANY(%s)", [lss])


def _cleanup(move: ShardMove) -> None:
    # Every process reloads the map within SHARDING_MAP_TTL; until then a stale reader still finds
    # the (frozen, identical) source rows, and a stale writer is refused by the fence and retries.
    wait = move.detail.get("switched_at", 0) + settings.SHARDING_MAP_TTL + 1 - time.time()
    if wait > 0:
        time.sleep(wait)
    _delete_logical_shards(move.source, move.logical_shards, unfreeze=True)
    _save(move, ShardMove.DONE)


STEPS = {
    ShardMove.PLANNED: _copy,
    ShardMove.COPIED: _fence,
    ShardMove.FENCED: _verify,
    ShardMove.VERIFIED: _switch,
    ShardMove.SWITCHED: _cleanup,
}


def move_run(move: ShardMove, *, until: str = ShardMove.DONE) -> ShardMove:
    """Run (or resume) `move` step by step until it reaches `until`. Each step is idempotent."""
    order = ShardMove.STATES
    if move.state in (ShardMove.PLANNED, ShardMove.COPIED, ShardMove.FENCED, ShardMove.VERIFIED):
        check_fleet(move.target)  # before copying or freezing anything; checked again at the switch
    while move.state in STEPS and order.index(move.state) < order.index(until):
        STEPS[move.state](move)
        faults.point(f"reshard.{move.state}")  # right after the step was recorded
    return move


def move_rollback(move: ShardMove) -> ShardMove:
    """Undo a move that has not switched: delete the target's copies and unfreeze the source."""
    if move.state in (ShardMove.SWITCHED, ShardMove.DONE):
        raise MoveError(f"{move} has switched the map; move the logical shards back with a new move instead")
    if move.state == ShardMove.ROLLED_BACK:
        return move
    # Whatever the recorded state says, rows the map serves from the target are live: never delete them.
    if _map_points_at_target(move):
        raise MoveError(f"{move}: the shard map already points at {move.target}; resume the move instead")
    _delete_logical_shards(move.target, move.logical_shards)
    with transaction.atomic(using=move.source), connections[move.source].cursor() as cursor:
        cursor.execute("DELETE FROM users_frozenlogicalshard WHERE logical_shard = ANY(%s)", [move.logical_shards])
    _save(move, ShardMove.ROLLED_BACK)
    return move
