"""Staff-side test helpers: admin reads are routed to replicas, so a test waits for them to replay
what it wrote before it looks at a page."""

from django.conf import settings
from django.db import connections

from .stack import wait_for


def replicas_caught_up() -> bool:
    """True once every replica has replayed what the primary cluster has written so far (every database
    of the local stack streams through one WAL), so admin reads routed to a replica see it."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()")
        lsn = cursor.fetchone()[0]
    for spec in settings.DATABASE_GROUPS.values():
        for alias in spec["replicas"]:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn])
                if not cursor.fetchone()[0]:
                    return False
    return True


def caught_up() -> None:
    wait_for(replicas_caught_up, timeout=20, interval=0.05, message="replicas to replay the test's writes")
