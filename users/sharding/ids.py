"""64-bit, time-ordered ids that carry their logical shard (Instagram's scheme).

    | 41 bits: ms since EPOCH | 13 bits: logical shard | 10 bits: sequence |

PostgreSQL's bigint is signed, so the top time bit must stay 0: ids are valid for 2**40 ms after
EPOCH, until 2059 (Instagram's layout has the same bound).

Ids are generated on the shard by the SQL function `users_next_id(shard)` (migration 0002), so no
central coordinator is needed; id -> logical shard is a bit shift, no lookup.
"""

from django.conf import settings

EPOCH_MS = 1735689600000  # 2025-01-01T00:00:00Z
TIME_BITS, SHARD_BITS, SEQ_BITS = 41, 13, 10
MAX_LOGICAL_SHARDS = 1 << SHARD_BITS
MAX_ID = (1 << 63) - 1

NEXT_ID_SQL = f"""
CREATE SEQUENCE IF NOT EXISTS users_id_seq;
CREATE OR REPLACE FUNCTION users_next_id(logical_shard integer) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
  SELECT ((floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - {EPOCH_MS}) << {SHARD_BITS + SEQ_BITS})
       | ((logical_shard::bigint & {MAX_LOGICAL_SHARDS - 1}) << {SEQ_BITS})
       | (nextval('users_id_seq') % {1 << SEQ_BITS})
$$;
"""


def make_id(*, ms: int, logical_shard: int, seq: int) -> int:
    """Compose an id (the SQL function's twin, for tests and tools)."""
    return ((ms - EPOCH_MS) << (SHARD_BITS + SEQ_BITS)) | (logical_shard << SEQ_BITS) | (seq % (1 << SEQ_BITS))


def logical_shard_of_id(user_id: int) -> int:
    return (user_id >> SEQ_BITS) & (MAX_LOGICAL_SHARDS - 1)


def logical_shard_sql(column: str) -> str:
    """`logical_shard_of_id` as a SQL expression over a bigint column (fence triggers, resharding)."""
    return f"(({column} >> {SEQ_BITS}) & {MAX_LOGICAL_SHARDS - 1})"


def parse_id(raw) -> int | None:
    """Return the id in `raw` (str or int) or None when it is not a valid positive 64-bit id. A string
    is an id only as the API writes it: no leading zero, so one user has one URL (a black-box pass found
    `/users/0<id>/` served as an alias)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19 and raw[0] != "0":
        value = int(raw)
    else:
        return None
    return value if 0 < value <= MAX_ID else None


def user_id_parse(raw) -> int | None:
    """A valid user id from a URL, a token or a search box, or None: malformed ids, ids outside
    64 bits and ids naming a logical shard beyond the configured ones are simply unknown users."""
    user_id = parse_id(raw)
    if user_id is None or logical_shard_of_id(user_id) >= settings.SHARDING_LOGICAL_SHARDS:
        return None
    return user_id
