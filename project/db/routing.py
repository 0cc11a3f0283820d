"""The one place that decides which database alias serves a read or a write.

Pure functions of the group topology (settings.DATABASE_GROUPS), the context's pinning state and the
replica monitor's verdicts. Writes always go to the group's primary; reads go to a usable replica
unless the context must read its own writes, is inside a transaction on the primary, or no replica
is usable.
"""

import itertools
import logging
import time

from django.conf import settings
from django.db import DatabaseError, connections

from . import pinning
from .replicas import monitor

logger = logging.getLogger(__name__)
_round_robin = itertools.count()


def primary_alias(group: str) -> str:
    return settings.DATABASE_GROUPS[group]["primary"]


def write_alias(group: str, *, synced: bool = False) -> str:
    """Return the primary of `group` and record the write for read-your-writes (`synced`: it commits
    with remote_apply, so the group's synchronous standbys will have applied it)."""
    pinning.note_write(group, synced=synced)
    return primary_alias(group)


def sync_apply(group: str) -> bool:
    """Whether writes on `group` should commit with `synchronous_commit = remote_apply` now: the group
    has a synchronous standby and the monitor last saw it usable. A standby that is down would make
    those commits wait for it; asking only while it answers keeps that wait to an outage's first
    moments (docs/operations.md)."""
    spec = settings.DATABASE_GROUPS[group]
    return bool(
        settings.READ_YOUR_WRITES_SYNC_APPLY and spec.get("sync_replicas") and monitor.usable(spec["sync_replicas"])
    )


def read_alias(group: str) -> str:
    """Return the alias a read on `group` should use now.

    After this context's own write on `group` only replicas that hold it qualify, each judged on its
    own (GitLab's bug 413203 ended stickiness when *any* replica caught up, then read another one):
    a synchronous standby for a remote_apply write, or a replica whose replayed LSN (last probe) is at
    least the write's. Otherwise the primary."""
    spec = settings.DATABASE_GROUPS[group]
    primary = spec["primary"]
    if not spec["replicas"] or connections[primary].in_atomic_block:
        return primary
    need = pinning.requirement(group)
    if need == "primary":
        return primary
    usable = monitor.usable(spec["replicas"])
    if need is not None:
        lsn, synced = need
        sync = spec.get("sync_replicas", ())
        usable = [a for a in usable if (synced and a in sync) or monitor.replayed(a) >= lsn]
    if not usable:
        return primary
    return usable[next(_round_robin) % len(usable)]


def commit_lsn(group: str) -> int:
    """The primary's current WAL position (an integer): read after a write committed, it is at or past
    that commit, so a replica that has replayed it shows the write."""
    with connections[primary_alias(group)].cursor() as cursor:
        cursor.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        return int(cursor.fetchone()[0])


NO_REPLICA_LSN = 2**63 - 1  # no replica reaches it: reads go to the primary (or a synced standby)


def record_commit_lsns(groups: list[str] | None = None) -> None:
    """Read the commit LSN of every group this context wrote (or of `groups` among them; one query per
    group, at the end of a request or when a task is queued), so later reads can be judged against it.
    A primary that does not answer now leaves an LSN no replica reaches: the write stands, its reads go
    to the primary."""
    for group in pinning.pending_groups():
        if groups is not None and group not in groups:
            continue
        try:
            lsn = commit_lsn(group)
        except DatabaseError:
            logger.warning("commit LSN of %s not read; its reads stay on the primary", group)
            lsn = NO_REPLICA_LSN
        pinning.record_lsn(group, lsn)


def handoff_lsns() -> dict:
    """The read-your-writes requirements this context hands to work it queues (a Celery task):
    {group: (lsn, synced)}, empty when nothing constrains its reads any more.

    A task queued right after a write may run before any replica has replayed it, so it must read
    like its author. Writes already committed get their commit LSN now (and the context keeps it,
    sparing the middleware the query). A write whose transaction is still open (the task was queued
    inside it) has no position yet: the task is handed one no replica reaches, so it reads that
    group from the primary, or a synchronous standby for a remote_apply write."""
    if pinning.pinned_until() <= time.time():
        return {}
    record_commit_lsns([g for g in pinning.pending_groups() if not connections[primary_alias(g)].in_atomic_block])
    return {
        group: (NO_REPLICA_LSN if lsn == pinning.UNKNOWN else lsn, synced)
        for group, (lsn, synced) in pinning.lsns().items()
    }


def group_of_alias(alias: str) -> str:
    for name, spec in settings.DATABASE_GROUPS.items():
        if alias == spec["primary"] or alias in spec["replicas"]:
            return name
    raise KeyError(alias)
