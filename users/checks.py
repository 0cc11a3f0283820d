"""System checks: a bad shard map or topology fails at start-up with a hint, not at the first request."""

from django.conf import settings
from django.core import checks

from .sharding.ids import MAX_LOGICAL_SHARDS
from .sharding.shardmap import initial_ranges, validate_ranges


@checks.register()
def check_sharding(app_configs, **kwargs):
    errors = []
    n = settings.SHARDING_LOGICAL_SHARDS
    if not 1 <= n <= MAX_LOGICAL_SHARDS:
        errors.append(
            checks.Error(
                f"SHARDING_LOGICAL_SHARDS={n} is out of range.",
                hint=f"Use 1..{MAX_LOGICAL_SHARDS} (the id has 13 shard bits).",
                id="users.E001",
            )
        )
        return errors
    for group in settings.SHARD_GROUPS:
        if group not in settings.DATABASES:
            errors.append(checks.Error(f"Shard group {group!r} has no database alias.", id="users.E002"))
    try:
        ranges = initial_ranges()
    except ValueError as exc:
        return [
            *errors,
            checks.Error(
                f"SHARDING_INITIAL_MAP cannot be parsed: {exc}",
                hint='Use e.g. "0-511:shard_0 512-1023:shard_1".',
                id="users.E003",
            ),
        ]
    for problem in validate_ranges(ranges, logical_shards=n, groups=settings.SHARD_GROUPS):
        errors.append(
            checks.Error(
                f"SHARDING_INITIAL_MAP: {problem}.",
                hint="Every logical shard 0..N-1 must be assigned to exactly one configured "
                "shard group (SHARD_DATABASE_URLS).",
                id="users.E004",
            )
        )
    return errors


@checks.register()
def check_write_behind(app_configs, **kwargs):
    errors = []
    total, per_shard = settings.WRITE_BEHIND_MAX_PENDING, settings.WRITE_BEHIND_MAX_PENDING_PER_SHARD
    if total and per_shard and per_shard * len(settings.SHARD_GROUPS) > total:
        errors.append(
            checks.Error(
                f"WRITE_BEHIND_MAX_PENDING_PER_SHARD={per_shard} over {len(settings.SHARD_GROUPS)} shard groups "
                f"exceeds WRITE_BEHIND_MAX_PENDING={total}.",
                hint="Each group enforces its own limit; they must add up to at most the total (or set it to 0 "
                "for an even share).",
                id="users.E005",
            )
        )
    # The ledger makes a re-claimed batch's re-application a no-op only while its rows exist. prune_ledger
    # never deletes rows as young as the oldest claimed batch; this keeps the floor well above the
    # re-claim period as well.
    floor_hours = 1.0
    if settings.WRITE_BEHIND_LEDGER_RETENTION < floor_hours or (
        settings.WRITE_BEHIND_LEDGER_RETENTION * 3600 < 100 * settings.WRITE_BEHIND_RECLAIM_AFTER
    ):
        errors.append(
            checks.Error(
                f"WRITE_BEHIND_LEDGER_RETENTION={settings.WRITE_BEHIND_LEDGER_RETENTION} h is too short.",
                hint=f"Keep at least {floor_hours} h and 100 x WRITE_BEHIND_RECLAIM_AFTER.",
                id="users.E006",
            )
        )
    timeout_ms = settings.CACHES["state"]["OPTIONS"].get("SOCKET_TIMEOUT", 0) * 1000
    if settings.WRITE_BEHIND_WAIT_REPLICAS and timeout_ms and settings.WRITE_BEHIND_WAIT_TIMEOUT_MS >= timeout_ms:
        errors.append(
            checks.Error(
                f"WRITE_BEHIND_WAIT_TIMEOUT_MS={settings.WRITE_BEHIND_WAIT_TIMEOUT_MS} is not below the state "
                f"Redis socket timeout ({timeout_ms:.0f} ms).",
                hint="The WAIT would be cut off by the socket timeout (an uncertain outcome for every view).",
                id="users.E007",
            )
        )
    return errors


@checks.register()
def check_local_cache(app_configs, **kwargs):
    entries, size = settings.USERS_LOCAL_CACHE_ENTRIES, settings.USERS_LOCAL_CACHE_BYTES
    if entries < 0 or (entries > 0 and size <= 0):
        return [
            checks.Error(
                f"USERS_LOCAL_CACHE_ENTRIES={entries}, USERS_LOCAL_CACHE_BYTES={size}: the local cache needs "
                "a positive bound on both.",
                hint="Set USERS_LOCAL_CACHE_ENTRIES=0 to turn the local cache off.",
                id="users.E008",
            )
        ]
    return []
