"""Reads of sharded users: the one place that answers "where does a user read go?".

Each accessor touches exactly one shard: by id (the id names its logical shard), by username (the
username hashes to it). By email, the global uniqueness claim in the default database names the user
first. Reads go through the cache (users/cache/) and are routed to a usable replica of the shard
(project/db/routing.py); a failing replica is retried on the primary; a dead primary raises
ShardUnavailable.
"""

import heapq
import time
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model

from project.db import pinning

from . import cache
from .identity import identity_key
from .models import Token, UniqueClaim, User
from .sharding.access import group_for_user_id, group_for_username, read_on
from .sharding.ids import user_id_parse
from .tokens import token_public_id

FIELDS = (
    "id",
    "username",
    "email",
    "display_name",
    "bio",
    "created_at",
    "updated_at",
    "version",
    "rev",
    "last_seen_at",
    "view_count",
)


def as_row(values: dict | None) -> dict | None:
    """A user row as the cache holds it (JSON types: datetimes as ISO strings), so a cached and a
    freshly loaded row are indistinguishable to callers."""
    if values is None:
        return None
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


def _read_confirming_absence(group: str, fetch):
    """Run `fetch(alias)` on the routed alias; a "not found" from a replica is confirmed on the primary
    (the replica may not have replayed the row yet: a fresh account, a logical shard just moved)."""
    row = read_on(group, fetch)
    if row is None and not pinning.must_use_primary() and settings.DATABASE_GROUPS[group]["replicas"]:
        with pinning.use_primary():
            row = read_on(group, fetch)
    return row


def _row_by_id(user_id: int) -> dict | None:
    if user_id_parse(user_id) is None:
        return None  # no shard can hold it
    return as_row(
        _read_confirming_absence(
            group_for_user_id(user_id),
            lambda alias: User.objects.using(alias).filter(id=user_id).values(*FIELDS).first(),
        )
    )


def user_password_hash(user_id: int) -> str | None:
    """The account's password hash (read where the caller routes: the primary for a check before a
    write), or None when there is no such account."""
    if user_id_parse(user_id) is None:
        return None
    return _read_confirming_absence(
        group_for_user_id(user_id),
        lambda alias: User.objects.using(alias).filter(id=user_id).values_list("password", flat=True).first(),
    )


def _local_ok() -> bool:
    """Whether this read may be answered from the process-local cache, whose copies can trail another
    process's write by the invalidation delay: not for a client that carries read-your-writes state
    (it wrote recently: it must see its write whichever process answers)."""
    return not pinning.lsns() and pinning.pinned_until() <= time.time()


def user_cache_probe(*, user_id: int) -> tuple | None:
    """The cache read `user_get_by_id` starts with, as a call to send ahead with another server's
    (users.cache.probe); None when that read will not use the cache (a strong read)."""
    return None if pinning.strong() else cache.probe(cache.user_key(user_id), local=_local_ok())


def user_read_before_probe_sent(probed) -> bool:
    """Whether the row `user_get_by_id(probed=probed)` returns was read before the calls sent along with
    the probe went out (the pending views read): it came from this process's local cache when the
    probe was built. Otherwise (a cache Redis reply, a load after a miss or a cache failure) the row may
    be newer than what those calls read."""
    return cache.probed_before_sending(probed)


def user_get_by_id(*, user_id: int, probed=None) -> dict | None:
    """Return the user's row as a dict (no password), or None if there is no such user.

    A strong read (Consistency: strong) skips the cache and reads the primary, then refreshes the cache.
    `probed` is the result of the `user_cache_probe` call, when it was sent ahead.
    """
    if pinning.strong():
        row = _row_by_id(user_id)
        if row is not None:
            cache.write_through(cache.user_key(user_id), row, version=row["rev"])
        return row
    return cache.get_or_load(
        cache.user_key(user_id),
        lambda: _row_by_id(user_id),
        version_of=lambda row: row["rev"],
        probed=probed,
        local=_local_ok(),
    )


def user_get_by_username(*, username: str) -> dict | None:
    """Case-insensitive exact lookup; None if absent."""
    key = identity_key(username)

    def load_id():
        row = _read_confirming_absence(
            group_for_username(key),
            lambda alias: User.objects.using(alias).filter(username_key=key).values(*FIELDS).first(),
        )
        if row is None:
            return None
        row = as_row(row)
        cache.write_through(cache.user_key(row["id"]), row, version=row["rev"])
        return row["id"]

    # The id is its own version: a later account with the same name has a larger id and wins.
    user_id = cache.get_or_load(cache.username_key(key), load_id, version_of=lambda uid: uid)
    if user_id is None:
        return None
    row = user_get_by_id(user_id=user_id)
    if row is None or identity_key(row["username"]) != key:
        return None
    return row


def user_get_by_email(*, email: str) -> dict | None:
    claim = (
        UniqueClaim.objects.using("default")
        .filter(kind=UniqueClaim.EMAIL, value=identity_key(email))
        .values_list("user_id", flat=True)
        .first()
    )
    if claim is None:
        return None
    row = user_get_by_id(user_id=claim)
    if row is None or identity_key(row["email"]) != identity_key(email):
        return None
    return row


def username_reserved(*, username_key: str) -> bool:
    """Whether a username (by its identity key) is kept from product accounts: a name in
    USERS_RESERVED_USERNAMES, or the name of a staff account (the admin's users live apart from product
    users, so nothing else would stop "ＡＤＭＩＮ" from showing up as "ADMIN" beside the superuser)."""
    if username_key in {identity_key(name) for name in settings.USERS_RESERVED_USERNAMES}:
        return True
    staff = get_user_model().objects.using("default").filter(is_staff=True).values_list("username", flat=True)
    return any(identity_key(name) == username_key for name in staff)


def user_get_credentials(*, username: str) -> tuple[int, str] | None:
    """Return (id, password hash) from the shard primary: credentials are never checked on a replica."""
    from project.db.pinning import use_primary

    key = identity_key(username)
    with use_primary():
        return read_on(
            group_for_username(key),
            lambda alias: User.objects.using(alias).filter(username_key=key).values_list("id", "password").first(),
        )


def token_list(*, user_id: int) -> list[dict]:
    """The user's tokens, newest first, from the shard primary (a token just issued or revoked must
    show as such): public id, issue time, last use, and the address and user agent of the last use."""
    with pinning.use_primary():
        rows = read_on(
            group_for_user_id(user_id),
            lambda alias: list(
                Token.objects.using(alias)
                .filter(user_id=user_id)
                .order_by("-created_at")
                .values("digest", "created_at", "last_used_at", "client_ip", "user_agent")
            ),
        )
    return [{"id": token_public_id(row.pop("digest")), **row} for row in rows]


def _token_entry(user_id: int, created_at, last_used_at) -> dict:
    return {
        "user_id": user_id,
        "created": created_at.timestamp(),
        "used": None if last_used_at is None else last_used_at.timestamp(),
    }


def token_entry_version(entry: dict) -> int:
    """The cache version of a token entry (see token_entry_get)."""
    # A newer last use replaces an older one in the cache; revocation's tombstone beats them all.
    return int((entry["used"] or entry["created"]) * 1000)


def token_entry_get(*, user_id: int, digest: str, before_lookup: Callable[[], None] | None = None) -> dict | None:
    """The cached entry {user_id, created, used} (timestamps) of the token with `digest` issued to
    `user_id`, or None when there is no such token. Warm: one cache round trip. Expiry is the caller's
    (services.token_authenticate) decision.

    `before_lookup()` runs before a lookup that would reach the shard (a cache miss), so a caller can
    refuse a client that keeps presenting unknown tokens. Raise ShardUnavailable when the shard's
    primary cannot be read on a miss.
    """

    def load():
        if before_lookup is not None:
            before_lookup()
        # On the primary: a token must work at once after issue and fail at once after revocation. Through
        # read_on, so the primary's breaker guards it (an open one answers 503 without connecting).
        with pinning.use_primary():
            found = read_on(
                group_for_user_id(user_id),
                lambda alias: (
                    Token.objects.using(alias)
                    .filter(digest=digest, user_id=user_id)
                    .values_list("created_at", "last_used_at")
                    .first()
                ),
            )
        return None if found is None else _token_entry(user_id, *found)

    return cache.get_or_load(cache.token_key(digest), load, version_of=token_entry_version, local=_local_ok())


def token_digests(*, user_id: int) -> list[str]:
    with pinning.use_primary():
        return read_on(
            group_for_user_id(user_id),
            lambda alias: list(Token.objects.using(alias).filter(user_id=user_id).values_list("digest", flat=True)),
        )


def user_list(*, limit: int, after_id: int = 0) -> tuple[list[dict], int | None]:
    """Users across all shards ordered by id: a k-way merge of per-shard keyset pages (no OFFSET).

    Returns (rows, next_after_id or None).
    """
    pages = []
    for group in settings.SHARD_GROUPS:
        pages.append(
            read_on(
                group,
                lambda alias: list(
                    User.objects.using(alias).filter(id__gt=after_id).order_by("id").values(*FIELDS)[:limit]
                ),
            )
        )
    rows = [as_row(r) for r in heapq.merge(*pages, key=lambda r: r["id"])][:limit]
    next_id = rows[-1]["id"] if len(rows) == limit else None
    return rows, next_id


def user_count_per_shard() -> dict[str, int]:
    return {group: read_on(group, lambda alias: User.objects.using(alias).count()) for group in settings.SHARD_GROUPS}


def user_search(*, query: str) -> list[dict]:
    """Rows matching `query` exactly: an id, a username or an email (case-insensitive); for the admin."""
    query = query.strip()
    if not query:
        return []
    found: list[dict | None] = []
    if "@" in query:
        found.append(user_get_by_email(email=query))
    else:
        user_id = user_id_parse(query)
        if user_id is not None:
            found.append(user_get_by_id(user_id=user_id))
        found.append(user_get_by_username(username=query))
    rows, seen = [], set()
    for row in found:
        if row is not None and row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    return rows


def user_page_on_shard(*, group: str, page: int, per_page: int) -> tuple[list[dict], bool]:
    """One page (numbered from 1) of the users of shard group `group` ordered by id, from a usable
    replica (or the primary), and whether there is a next page; for the admin. Raise ShardUnavailable
    when the shard cannot be read."""
    start = (page - 1) * per_page
    rows = read_on(
        group,
        lambda alias: list(User.objects.using(alias).order_by("id").values(*FIELDS)[start : start + per_page + 1]),
    )
    return [as_row(r) for r in rows[:per_page]], len(rows) > per_page
