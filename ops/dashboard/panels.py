"""The figures of the system overview, one function per panel.

Every panel is gathered by `collect`, which never raises: a panel whose dependency is down (a
database, a Redis, the broker) becomes {"ok": False, "error": "<class>: <message>"} and the page
shows "unavailable: <error>" for it while the other panels still render. Every call here has a short
timeout of its own (Redis sockets 0.25 s, database connects 2 s, the Celery ping 0.5 s), so a hung
dependency slows the page by about that much, never indefinitely.
"""

import math
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connections
from django_redis import get_redis_connection

from project import queues
from resilience.redis_state import masters

REDIS_ROLES = ("default", "state")


def describe(exc: BaseException) -> str:
    """Return "<ExceptionClass>: <message>" on one line, at most 300 characters."""
    message = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {message}"[:300] if message else exc.__class__.__name__


def safe(fn: Callable[[], Any]) -> dict:
    """Call `fn` and return {"ok": True, "data": result}, or {"ok": False, "error": ...} if it raised."""
    try:
        return {"ok": True, "data": fn()}
    except Exception as exc:  # the dashboard reports a failing dependency, it must never fail with it
        return {"ok": False, "error": describe(exc)}


# --- databases ---
def _ping(alias: str) -> dict:
    started = time.perf_counter()
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # a dead primary is a finding
        try:
            connections[alias].close()
        except Exception:  # noqa: S110  (the connection is broken either way)
            pass
        return {"reachable": False, "error": describe(exc), "latency_ms": None}
    return {"reachable": True, "error": "", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def replica_states() -> dict[str, dict]:
    """Return alias -> the replica monitor's verdict (lag None when unknown)."""
    from project.db.replicas import monitor

    result = {}
    for state in monitor.states():
        result[state.alias] = {
            "alias": state.alias,
            "server": state.server,
            "lag": None if math.isinf(state.lag) else round(state.lag, 3),
            "reachable": state.reachable,
            "usable": state.usable,
            "checked_at": state.checked_at or None,
            "error": state.error,
        }
    return result


def databases() -> dict:
    """Each database group: its primary (reachable, latency), its replicas (lag), users per shard."""
    from users import selectors

    counts = safe(selectors.user_count_per_shard)
    replicas = replica_states()
    groups = []
    for name, spec in settings.DATABASE_GROUPS.items():
        shard = name in settings.SHARD_GROUPS
        entry = {
            "group": name,
            "shard": shard,
            "primary": {"alias": spec["primary"], **_ping(spec["primary"])},
            "replicas": [
                replicas.get(
                    alias,
                    {
                        "alias": alias,
                        "server": "",
                        "lag": None,
                        "reachable": False,
                        "usable": False,
                        "checked_at": None,
                        "error": "not probed yet",
                    },
                )
                for alias in spec["replicas"]
            ],
            "users": None,
            "users_error": "",
        }
        if shard:
            if counts["ok"]:
                entry["users"] = counts["data"].get(name)
            else:
                entry["users_error"] = counts["error"]
        groups.append(entry)
    return {"groups": groups, "max_replica_lag": settings.MAX_REPLICA_LAG}


def shard_map_summary() -> dict:
    """The shard map as contiguous ranges of logical shards per group."""
    from users.sharding.shardmap import shard_map

    table = shard_map.table()
    ranges: list[dict] = []
    for logical, group in enumerate(table):
        if ranges and ranges[-1]["group"] == group and ranges[-1]["end"] == logical - 1:
            ranges[-1]["end"] = logical
        else:
            ranges.append({"group": group, "start": logical, "end": logical})
    per_group: dict[str, dict] = {
        group: {"group": group, "logical_shards": 0, "ranges": []} for group in settings.SHARD_GROUPS
    }  # a new, still empty group shows too
    for r in ranges:
        g = per_group.setdefault(r["group"], {"group": r["group"], "logical_shards": 0, "ranges": []})
        g["logical_shards"] += r["end"] - r["start"] + 1
        g["ranges"].append(f"{r['start']}-{r['end']}" if r["end"] != r["start"] else str(r["start"]))
    return {"logical_shards": len(table), "groups": list(per_group.values())}


# --- Redis ---
def redis_role(alias: str) -> dict:
    """INFO memory and stats of one Redis role ("default" = cache, "state"); on a Redis Cluster the
    counters are summed over its masters and the memory is listed per master."""
    infos = []
    for client in masters(get_redis_connection(alias)):
        info = client.info("memory")
        info.update(client.info("stats"))
        infos.append(info)

    def total(field):
        return sum(int(info.get(field, 0)) for info in infos)

    hits, misses = total("keyspace_hits"), total("keyspace_misses")
    return {
        "role": "cache" if alias == "default" else alias,
        "used_memory_human": " + ".join(str(info.get("used_memory_human")) for info in infos),
        "maxmemory_policy": infos[0].get("maxmemory_policy"),
        "keyspace_hits": hits,
        "keyspace_misses": misses,
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "ops_per_sec": total("instantaneous_ops_per_sec"),
        "evicted_keys": total("evicted_keys"),
    }


# --- Celery ---
# The consumer check is shared with /health/ready (project/queues.py): one cache per process.
celery_consumers = queues.consumers
queue_warnings = queues.warnings


def celery_workers() -> tuple[list[str], str]:
    """Return (names of workers that answered a ping, error or ""); cached for a few seconds."""
    workers, _consumed, error = celery_consumers()
    return workers, error


def celery() -> dict:
    """Workers alive, queue depths (lists on the state Redis) and the last write-behind flush (beat)."""
    from users.writebehind import buffer

    depths = queues.depths()
    workers, consumed, error = celery_consumers()  # only asked once the broker (the state Redis) answered
    last = safe(lambda: buffer.stats()["last_flush_at"])
    return {
        "workers": workers,
        "workers_error": error,
        "queues": depths,
        "queue_warnings": [] if error else queue_warnings(depths, consumed),
        "last_beat_at": last.get("data"),
        "last_beat_error": last.get("error", ""),
    }


# --- write-behind, breakers, rate limits ---
def write_behind() -> dict:
    from users.writebehind import buffer

    return buffer.stats()


BREAKER_GROUPS = ("Databases", "Redis", "Webhooks")  # the page's order; any other group comes after


def breakers(*, only_not_closed: bool = False) -> list[dict]:
    """A snapshot per known breaker (as dicts, with its dependency group and description), ordered by
    group then name, optionally only those not CLOSED. Declared dependencies are listed before use."""
    from dataclasses import asdict

    from resilience.breaker import State, all_breakers, describe, get_breaker

    result = []
    for name in all_breakers():
        snap = get_breaker(name).snapshot()
        if only_not_closed and snap.state == State.CLOSED:
            continue
        entry = asdict(snap)
        entry["state"] = str(snap.state)
        entry["colour"] = state_colour(snap.state)
        entry["group"], entry["description"] = describe(name)
        result.append(entry)
    order = {group: i for i, group in enumerate(BREAKER_GROUPS)}
    result.sort(key=lambda e: (order.get(e["group"], len(order)), e["group"], e["name"]))
    return result


def state_colour(state) -> str:
    """green for CLOSED, amber for HALF_OPEN and FORCED_CLOSED, red for OPEN and FORCED_OPEN."""
    return {"CLOSED": "green", "HALF_OPEN": "amber", "FORCED_CLOSED": "amber"}.get(str(state), "red")


def top_limited(*, minutes: int = 5, count: int = 10) -> dict:
    from resilience.ratelimit import denied_counts, top_denied

    return {
        "minutes": minutes,
        "top": [{"policy": p, "key": k, "denials": n} for p, k, n in top_denied(minutes=minutes, count=count)],
        "by_policy": denied_counts(minutes=minutes),
    }


def adaptive_limits() -> dict:
    """The adaptive concurrency limit of each endpoint group in the process serving this page (each
    process learns its own; /metrics has every process's): limit, min RTT, in flight, the share each
    class may fill, and refusals (and shadow-mode "would have refused") per class since it started."""
    from resilience import overload

    settings_now = overload.options()
    return {
        "enabled": settings_now.enabled,
        "shadow": settings_now.shadow,
        "floor": settings_now.floor,
        "ceiling": settings_now.ceiling,
        "groups": [limiter.snapshot() for limiter in overload.limiters().values()],
    }


PANELS: dict[str, Callable[[], Any]] = {
    "databases": databases,
    "shard_map": shard_map_summary,
    "redis_cache": lambda: redis_role("default"),
    "redis_state": lambda: redis_role("state"),
    "celery": celery,
    "write_behind": write_behind,
    "breakers": lambda: breakers(only_not_closed=True),
    "rate_limits": top_limited,
    "adaptive": adaptive_limits,
}


def collect() -> dict[str, dict]:
    """Every panel of the overview, each either {"ok": True, "data": ...} or {"ok": False, "error": ...}."""
    return {name: safe(fn) for name, fn in PANELS.items()}
