"""The one place the write-behind key and field names are spelled. The Lua scripts receive every name
they touch as KEYS (field names as ARGV), so a key shape is never written twice.

Each shard group has its own buffer and batches, all under the hash tag `{wb:<group>}`: every script
call touches one group's keys, so one cluster slot.

Per group:
- `buffer`   hash of pending items: `v:<user id>` views, `s:<user id>` last-seen epoch ms, and `#views`,
             the number of `v:` fields (kept by ingest.lua; it moves with the hash when claimed)
- `since`    zset user id -> epoch ms of the user's first pending item (the backlog's age)
- `batches`  zset batch key -> epoch ms of its last claim (a claimed batch is a renamed buffer hash,
             which also gets `r:<user id>` fields: the user's row version once the batch is applied)
- `first`    zset batch key -> epoch ms of its first claim (the ledger must outlive it)
- `marker`   one key per idempotent view id: that view was counted (see `views_add(view_id=...)`)
- `traces`   list of the W3C traceparents of the latest requests that buffered views (tracing on only,
             at most TRACE_LINKS), taken by the next flush to link its span to them (project/tracing.py)
"""

from dataclasses import dataclass

STATS = "wb:stats"  # flush figures, shared by all groups (read and written outside the scripts)
COUNT_FIELD = "#views"
TRACE_LINKS = 32  # the most request traces one flush of a group links to


@dataclass(frozen=True)
class GroupKeys:
    group: str
    buffer: str
    since: str
    batches: str
    first: str
    traces: str

    def batch(self, batch_id: str) -> str:
        return f"{_prefix(self.group)}:batch:{batch_id}"

    def marker(self, view_id: str) -> str:
        return f"{_prefix(self.group)}:view:{view_id}"


def _prefix(group: str) -> str:
    return f"wb:{{wb:{group}}}"


def group_keys(group: str) -> GroupKeys:
    prefix = _prefix(group)
    return GroupKeys(
        group=group,
        buffer=f"{prefix}:buffer",
        since=f"{prefix}:since",
        batches=f"{prefix}:batches",
        first=f"{prefix}:first",
        traces=f"{prefix}:traces",
    )


def views_field(user_id: int) -> str:
    return f"v:{user_id}"


def seen_field(user_id: int) -> str:
    return f"s:{user_id}"


def rev_field(user_id: int) -> str:
    return f"r:{user_id}"


def parse_fields(raw: dict) -> tuple[dict[int, int], dict[int, int]]:
    """Split a buffer or batch hash (bytes -> bytes) into ({user id: views}, {user id: last-seen ms})."""
    views, seen = {}, {}
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else field
        kind, _, uid = name.partition(":")
        if kind == "v":
            views[int(uid)] = int(value)
        elif kind == "s":
            seen[int(uid)] = int(value)
    return views, seen
