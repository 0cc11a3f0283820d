"""The shard map: which physical shard group holds each logical shard.

The map is data (the `users_shardmapentry` table in the default database), not code, so logical
shards can move between databases. Each process keeps a copy for SHARDING_MAP_TTL seconds. The map is
seeded from SHARDING_INITIAL_MAP (or an even split) by `manage.py migrate_all`.
"""

import logging
import threading
import time

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)


def parse_map_spec(spec: str) -> list[tuple[int, int, str]]:
    """Parse "0-511:shard_0 512-1023:shard_1" into [(0, 511, "shard_0"), ...]. Raise ValueError."""
    ranges = []
    for item in spec.split():
        span, sep, group = item.partition(":")
        start, dash, end = span.partition("-")
        if not sep or not dash or not group:
            raise ValueError(f"{item!r} is not of the form START-END:GROUP")
        ranges.append((int(start), int(end), group))
    return ranges


def even_ranges(logical_shards: int, groups: list[str]) -> list[tuple[int, int, str]]:
    ranges, n = [], len(groups)
    for i, group in enumerate(groups):
        start, end = i * logical_shards // n, (i + 1) * logical_shards // n - 1
        ranges.append((start, end, group))
    return ranges


def validate_ranges(ranges, *, logical_shards: int, groups: list[str]) -> list[str]:
    """Return the problems with a map: unknown groups, overlaps, unassigned logical shards."""
    problems, owner = [], {}
    for start, end, group in ranges:
        if group not in groups:
            problems.append(f"range {start}-{end} names unknown shard group {group!r} (known: {', '.join(groups)})")
        if not 0 <= start <= end < logical_shards:
            problems.append(f"range {start}-{end} is outside 0-{logical_shards - 1}")
            continue
        for ls in range(start, end + 1):
            if ls in owner and owner[ls] != (start, end):
                problems.append(f"range {start}-{end} overlaps range {owner[ls][0]}-{owner[ls][1]}")
                break
            owner[ls] = (start, end)
    missing = [ls for ls in range(logical_shards) if ls not in owner]
    if missing:
        problems.append(f"{len(missing)} logical shards are unassigned (first: {missing[0]})")
    return problems


def initial_ranges() -> list[tuple[int, int, str]]:
    spec = settings.SHARDING_INITIAL_MAP
    if spec:
        return parse_map_spec(spec)
    return even_ranges(settings.SHARDING_LOGICAL_SHARDS, settings.SHARD_GROUPS)


class ShardMap:
    """A process-local, TTL-refreshed copy of the map stored in the default database."""

    def __init__(self):
        self._lock = threading.Lock()
        self._table: list[str] | None = None
        self._loaded_at = 0.0
        self._unknown: list[str] = []

    def group_for_logical(self, logical_shard: int) -> str:
        return self._current()[logical_shard]

    def table(self) -> list[str]:
        return list(self._current())

    def invalidate(self) -> None:
        self._loaded_at = 0.0

    def reload(self) -> list[str]:
        """Load the map from the default database now and return it; raise if it cannot be read
        (unlike the TTL refresh, which keeps using the last copy)."""
        with self._lock:
            self._table = self._load()
            self._loaded_at = time.monotonic()
            return list(self._table)

    def _current(self) -> list[str]:
        table = self._table
        if table is not None and time.monotonic() - self._loaded_at < settings.SHARDING_MAP_TTL:
            return table
        with self._lock:
            if self._table is None or time.monotonic() - self._loaded_at >= settings.SHARDING_MAP_TTL:
                try:
                    self._table = self._load()
                except Exception:
                    if self._table is None:
                        raise
                    # The default database is down: keep using the last map we had.
                self._loaded_at = time.monotonic()
            return self._table

    def _load(self) -> list[str]:
        from project.db import routing
        from users.models import ShardMapEntry

        n = settings.SHARDING_LOGICAL_SHARDS
        rows = list(ShardMapEntry.objects.using(routing.primary_alias("default")).values_list("logical_shard", "group"))
        table = [""] * n
        for ls, group in rows:
            if 0 <= ls < n:
                table[ls] = group
        # Only coverage is checked here. A group this process has no settings for (added after it
        # started) must not make the whole map unreadable: the process would keep its old copy
        # forever and answer "not found" for every user moved since. Lookups of those logical shards
        # refuse instead (users.sharding.access.ShardNotConfigured: 503 + Retry-After).
        problems = validate_ranges([(ls, ls, g) for ls, g in rows], logical_shards=n, groups=sorted(set(table)))
        if problems:
            raise ImproperlyConfigured(
                "The stored shard map is invalid: "
                + "; ".join(problems[:3])
                + ". Run `manage.py migrate_all` to seed it."
            )
        unknown = sorted(set(table) - set(settings.SHARD_GROUPS))
        if unknown and unknown != self._unknown:
            logger.error(
                "configuration error: the shard map names %s, which this process was not configured with "
                "(it knows %s); their users get 503 here until the process restarts with them",
                ", ".join(unknown),
                ", ".join(settings.SHARD_GROUPS),
            )
        self._unknown = unknown
        return table


shard_map = ShardMap()
