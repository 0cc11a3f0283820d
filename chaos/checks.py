"""What the suite measures against the databases (always the primaries) and the state Redis: the
backlog (write-behind buffer, lost cache invalidations, undelivered webhooks) and, after a scenario,
whether every acknowledged write is there exactly once."""

import time
from collections import Counter
from datetime import datetime

from django.conf import settings
from django.db import connections
from django_redis import get_redis_connection

from users import cache
from users.writebehind import buffer
from webhooks.models import WebhookDelivery

from .load import Http, Ledger
from .receiver import Receiver

WEBHOOK_SETTLE = 2.0  # seconds an event may take from its commit to the receiver when all is well


def _rows(sql: str, params: list) -> list[tuple]:
    """Run `sql` on every shard group's primary and return all rows."""
    rows = []
    for group in settings.SHARD_GROUPS:
        with connections[settings.DATABASE_GROUPS[group]["primary"]].cursor() as cursor:
            cursor.execute(sql, params)
            rows += cursor.fetchall()
    return rows


def close_connections() -> None:
    """Drop this thread's database connections (after a failure, so the next query reconnects)."""
    for conn in connections.all():
        try:
            conn.close()
        except Exception:  # noqa: S110 (a connection to a database that is down cannot be closed cleanly)
            pass


def outbox_events(since: datetime, *, settled: bool) -> dict[str, tuple[str, int]]:
    """Event id -> (event, user id) of the outbox events recorded since `since` (if `settled`, only
    those older than WEBHOOK_SETTLE seconds)."""
    sql = "SELECT event_id::text, event, user_id FROM users_outboxevent WHERE created_at >= %s"
    if settled:
        sql += f" AND created_at < now() - interval '{WEBHOOK_SETTLE} seconds'"
    return {event_id: (event, user_id) for event_id, event, user_id in _rows(sql, [since])}


def backlog(since: datetime, receiver: Receiver, *, settled: bool = True) -> dict:
    """The work still owed: raises if a store it needs is down (the backlog is then unknown). Under
    load (`settled`), events younger than WEBHOOK_SETTLE seconds are not yet owed."""
    stats = buffer.stats()
    invalidations = get_redis_connection("state").scard(cache.PENDING_INVALIDATIONS)
    undelivered = set(outbox_events(since, settled=settled)) - receiver.received()
    return {
        "pending_views_users": stats["pending_views_users"],
        "pending_seen_users": stats["pending_seen_users"],
        "claimed_batches": stats["claimed_batches"],
        "oldest_pending_age_s": stats["oldest_pending_age_s"],
        "invalidations": invalidations,
        "webhooks_undelivered": len(undelivered),
    }


def backlog_steady(b: dict) -> bool:
    """The backlog is what steady load leaves: no batch left claimed, nothing pending for longer than
    two flush intervals, no invalidation waiting, every event older than WEBHOOK_SETTLE delivered."""
    oldest = b["oldest_pending_age_s"] or 0.0
    return (
        b["claimed_batches"] == 0
        and oldest <= 2 * settings.WRITE_BEHIND_INTERVAL + 2
        and b["invalidations"] == 0
        and b["webhooks_undelivered"] == 0
    )


def backlog_empty(b: dict) -> bool:
    return (
        b["pending_views_users"] == 0
        and b["pending_seen_users"] == 0
        and b["claimed_batches"] == 0
        and b["invalidations"] == 0
        and b["webhooks_undelivered"] == 0
    )


def _seq(bio: str) -> int:
    return int(bio[1:]) if bio.startswith("s") and bio[1:].isdigit() else 0


def verify(ledger: Ledger, users: list[dict], receiver: Receiver, since: datetime, port: int) -> dict:
    """Compare what the service acknowledged with what the primaries hold. Return counts and examples."""
    lost, dup, examples = Counter(), Counter(), []

    # Registrations: every 201 exists, under its id; no username exists twice.
    names = list(ledger.registered)
    found: dict[str, list[int]] = {}
    for uid, username in _rows(
        "SELECT id, lower(username) FROM users_user WHERE lower(username) = ANY(%s)", [[n.lower() for n in names]]
    ):
        found.setdefault(username, []).append(uid)
    unexpected = list(ledger.unexpected)
    for name, outcome in ledger.registered.items():
        ids = found.get(name.lower(), [])
        if len(ids) > 1:
            dup["registrations"] += len(ids) - 1
            examples.append(f"registration {name} exists {len(ids)} times")
        acked = outcome.get("acked")
        if acked is not None and [str(i) for i in ids] != [acked]:
            lost["registrations"] += 1
            examples.append(f"registration {name} answered 201 as {acked}; primaries hold {ids}")
        if outcome["status"] not in (201, None) and not outcome["retried"]:
            unexpected.append({"kind": "register", "name": name, **outcome})

    # Updates and views of the scenario's users, from their shard primaries.
    ids = [u["id"] for u in users]
    rows = {
        uid: (bio, views)
        for uid, bio, views in _rows("SELECT id, bio, view_count FROM users_user WHERE id = ANY(%s)", [ids])
    }
    updated = dict(
        _rows(
            "SELECT event_id::text, user_id FROM users_outboxevent WHERE event = 'user.updated' AND user_id = ANY(%s)",
            [ids],
        )
    )
    # A resharding move copies only undispatched events and deletes the source's rows: a moved user's
    # delivered events are then at the receiver only (its "id" is the outbox event id).
    wanted = set(ids)
    with receiver.lock:
        for event_id, payload in receiver.events.items():
            if payload.get("event") == "user.updated" and (uid := int(payload["data"]["id"])) in wanted:
                updated[event_id] = uid
    updated_events = Counter(updated.values())
    for uid in ids:
        bio, views = rows.get(uid, ("", 0))
        acked_seq = ledger.patch_acked.get(uid)
        if acked_seq is not None and _seq(bio) < acked_seq:
            lost["updates"] += 1
            examples.append(f"user {uid}: last acknowledged bio s{acked_seq}, primary holds {bio!r}")
        if _seq(bio) > ledger.patch_last_sent.get(uid, 0):
            dup["updates"] += 1
            examples.append(f"user {uid}: bio {bio!r} was never sent")
        if updated_events[uid] < ledger.patch_acked_count[uid]:
            lost["outbox events"] += ledger.patch_acked_count[uid] - updated_events[uid]
            examples.append(
                f"user {uid}: {ledger.patch_acked_count[uid]} updates acknowledged, "
                f"{updated_events[uid]} user.updated events"
            )
        if updated_events[uid] > ledger.patch_sent[uid]:
            dup["outbox events"] += updated_events[uid] - ledger.patch_sent[uid]
        acked, unsure = ledger.views_acked[uid], ledger.views_unsure[uid]
        if views < acked:
            lost["views"] += acked - views
            examples.append(f"user {uid}: {acked} views acknowledged, view_count {views}")
        if views > acked + unsure:
            dup["views"] += views - acked - unsure
            examples.append(f"user {uid}: view_count {views} > {acked} acknowledged + {unsure} unconfirmed")

    # Webhooks: every event committed since the start reached the receiver; one delivery row per event.
    events = outbox_events(since, settled=False)
    received = receiver.received()
    missing = set(events) - received
    lost["webhook events"] += len(missing)
    examples += [f"webhook {events[e][0]} {e} of user {events[e][1]} never delivered" for e in sorted(missing)[:3]]
    deliveries = WebhookDelivery.objects.using("default").filter(created_at__gte=since)
    dead = deliveries.filter(status=WebhookDelivery.Status.DEAD).count()
    if dead:
        examples.append(f"{dead} webhook deliveries dead-lettered")
    per_event = Counter(deliveries.values_list("subscriber_id", "event_id"))
    dup["webhook delivery rows"] += sum(n - 1 for n in per_event.values() if n > 1)
    redelivered = sum(receiver.accepted[e] - 1 for e in events if receiver.accepted[e] > 1)

    # Once quiet, what clients read equals the primaries (cache and replicas caught up).
    stale = _stale_reads(port, {uid: rows[uid] for uid in ids if uid in rows})
    examples += [f"user {uid}: API shows {shown}, primary holds {held}" for uid, shown, held in stale[:3]]
    return {
        "reads_above_acknowledged": len(ledger.reads_over),
        "reads_above_examples": ledger.reads_over[:5],
        "reads_stale": len(ledger.reads_stale),
        "reads_stale_examples": ledger.reads_stale[:5],
        "lost": dict(lost),
        "duplicates": dict(dup),
        "redelivered": redelivered,
        "dead_letters": dead,
        "ryw_violations": len(ledger.ryw_violations),
        "stale_reads": len(stale),
        "bad_signatures": receiver.bad_signatures,
        "unexpected": unexpected[:10],
        "examples": examples[:12],
    }


def _stale_reads(port: int, held: dict[int, tuple[str, int]], *, attempts: int = 5) -> list:
    """Users whose public profile differs from the primary after `attempts` reads a second apart."""
    client, differing = Http(port), dict(held)
    shown = {}
    for attempt in range(attempts):
        for uid in list(differing):
            status, _, data = client.request("GET", f"/api/v1/users/{uid}/")
            shown[uid] = (data or {}).get("bio"), (data or {}).get("view_count")
            if status == 200 and shown[uid] == differing[uid]:
                del differing[uid]
        if not differing or attempt == attempts - 1:
            break
        time.sleep(1.0)
    return [(uid, shown.get(uid), value) for uid, value in differing.items()]
