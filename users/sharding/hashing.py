"""Stable placement: the same key maps to the same logical shard in every process, host and restart.

Python's built-in hash is salted per process, so it never decides placement. blake2b does.
"""

import hashlib

from django.conf import settings

from users.identity import identity_key


def stable_hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def logical_shard_for_username(username: str, *, logical_shards: int | None = None) -> int:
    n = logical_shards or settings.SHARDING_LOGICAL_SHARDS
    return stable_hash64(identity_key(username)) % n
