"""One circuit breaker per database alias: each primary and each replica (resilience/breaker).

- A primary's breaker (`db:<alias>`, e.g. `db:shard_0`, `db:default`) guards every read and write that
  goes to it (users/sharding/access.py): connection failures open it, and while it is open the
  group's calls answer ShardUnavailable (503 `shard_unavailable`) at once instead of each waiting for
  its connect timeout.
- A replica's breaker (`db:shard_0_r0`) is the routing's "skip" switch (routing.py): the replica
  monitor reports each probe's verdict to it (lagging, cut off or unreachable is a failure, one opens
  it; the first good probe after the open period closes it) and so does a query that fails there.
  Requests never probe a replica: they read it only while its breaker is CLOSED.

Their state is shared through the state Redis (forced from the admin, it reaches every process within
RESILIENCE_BREAKER_SYNC_SECONDS); each process falls back to its own while the state Redis is down.
"""

from django.conf import settings

from resilience.breaker import Guard, declare, guard

GROUP = "Databases"
# A replica is skipped on its first bad verdict (as before breakers) and probed again after a second.
REPLICA_OPTIONS = {
    "consecutive_failures": 1,
    "open_seconds": 1.0,
    "half_open_max_calls": 1,
    "success_threshold": 1,
}
PRIMARY_OPTIONS = {"consecutive_failures": 3, "open_seconds": 2.0, "half_open_max_calls": 2, "success_threshold": 1}


def breaker_name(alias: str) -> str:
    return f"db:{alias}"


def alias_guard(alias: str) -> Guard:
    return guard(breaker_name(alias))


def declare_databases() -> None:
    """Declare a breaker for every alias of settings.DATABASE_GROUPS (called by an AppConfig.ready)."""
    for group, spec in settings.DATABASE_GROUPS.items():
        declare(breaker_name(spec["primary"]), group=GROUP, description=f"{group} primary", options=PRIMARY_OPTIONS)
        for alias in spec["replicas"]:
            kind = "synchronous standby" if alias in spec.get("sync_replicas", ()) else "replica"
            declare(breaker_name(alias), group=GROUP, description=f"{group} {kind}", options=REPLICA_OPTIONS)
