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
