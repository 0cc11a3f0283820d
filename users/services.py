"""Writes of sharded users. Each spans at most two databases, designed so a crash between steps is
either harmless or repaired:

- create: take the username and email claims (default database) -> insert the user (its shard) ->
  confirm the claims. A claim left behind by a crash is "stale" (its user row does not hold the
  value) and is deleted by whoever it blocks (`_claims_take`), so nothing is orphaned for good.
- email change: claim the new email -> update the row -> release the old claim.
- delete: delete the row (and its tokens) -> release its claims. A crash in between leaves claims
  pointing at no user: stale, repaired the same way.
The cache is written through after each commit (users/cache/).
"""

import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from project.db.pinning import use_primary

from . import cache, selectors
from .etags import if_none_match_refuses, profile_etag
from .identity import display_form, identity_key, password_form, password_matches
from .models import Token, UniqueClaim, User
from .outbox import outbox_record
from .sharding.access import ShardUnavailable, group_for_logical, group_for_user_id, write_on
from .sharding.hashing import logical_shard_for_username
from .tokens import (
    TOKEN_TOUCH_INTERVAL,
    UNKNOWN_CLIENT,
    TokenClient,
    token_digest,
    token_generate,
    token_public_id,
    token_user_id,
)
from .writebehind import buffer

CLAIM_GRACE = timedelta(seconds=30)  # an unconfirmed claim younger than this may be a registration in flight


class Conflict(Exception):
    """The username and/or email is taken. `fields` names which."""

    def __init__(self, fields: list[str]):
        super().__init__(f"already taken: {', '.join(fields)}")
        self.fields = fields


class VersionMismatch(Exception):
    """A precondition is false for the current row: If-Match named a version that is no longer current,
    or If-None-Match named the current tag (or `*`). `header` names which."""

    def __init__(self, header: str = "If-Match"):
        super().__init__(header)
        self.header = header


def _preconditions(user: User, *, if_match: int | None, if_none_match: str | None) -> None:
    """Raise VersionMismatch unless the preconditions hold for `user`, the row locked for the write
    (so no other write slips in between the check and this one)."""
    if if_match is not None and user.version != if_match:
        raise VersionMismatch("If-Match")
    if if_none_match_refuses(profile_etag({"version": user.version, "rev": user.rev}), if_none_match):
        raise VersionMismatch("If-None-Match")


class InvalidCredentials(Exception):
    pass


class UserNotFound(Exception):
    pass


# --- uniqueness claims (default database) ---
def _claim_is_stale(claim: UniqueClaim) -> bool:
    if not claim.confirmed and timezone.now() - claim.created_at < CLAIM_GRACE:
        return False
    with use_primary():
        row = selectors._row_by_id(claim.user_id)
    if row is None:
        return True
    held = identity_key(row["username"] if claim.kind == UniqueClaim.USERNAME else row["email"])
    return held != claim.value


def _claims_take(claims: list[tuple[str, str]], *, user_id: int) -> None:
    """Take every (kind, value) claim for `user_id` atomically, or raise Conflict."""
    for attempt in range(2):
        try:

            def insert(alias):
                with transaction.atomic(using=alias):
                    UniqueClaim.objects.using(alias).bulk_create(
                        [UniqueClaim(kind=kind, value=value, user_id=user_id) for kind, value in claims]
                    )

            write_on("default", insert)
            return
        except IntegrityError:
            query = Q()
            for kind, value in claims:
                query |= Q(kind=kind, value=value)
            taken = list(UniqueClaim.objects.using("default").filter(query).exclude(user_id=user_id))
            stale = [c for c in taken if _claim_is_stale(c)]
            if attempt == 0 and stale:
                for c in stale:  # delete exactly the stale claim we judged, not a newer one
                    UniqueClaim.objects.using("default").filter(pk=c.pk, user_id=c.user_id).delete()
                continue
            raise Conflict(sorted({c.kind for c in taken}) or [k for k, _ in claims]) from None


def _claims_release(*, user_id: int, kind: str | None = None, value: str | None = None) -> None:
    qs = UniqueClaim.objects.using("default").filter(user_id=user_id)
    if kind:
        qs = qs.filter(kind=kind, value=value)
    write_on("default", lambda alias: qs.using(alias).delete())


def _claims_confirm(*, user_id: int) -> None:
    write_on(
        "default",
        lambda alias: UniqueClaim.objects.using(alias).filter(user_id=user_id, confirmed=False).update(confirmed=True),
    )


def _cache_row(row: dict) -> None:
    cache.write_through(cache.user_key(row["id"]), row, version=row["rev"])


def _row(user: User) -> dict:
    return selectors.as_row({f: getattr(user, f) for f in selectors.FIELDS})


# --- users ---
def user_create(*, username: str, email: str, password: str, display_name: str = "") -> dict:
    """Create a user on the shard its username hashes to. Raise Conflict (a reserved username is
    "taken" too), ShardUnavailable."""
    username_n, email_n = identity_key(username), identity_key(email)
    if selectors.username_reserved(username_key=username_n):
        raise Conflict(["username"])
    logical = logical_shard_for_username(username_n)
    group = group_for_logical(logical)

    def next_id(alias):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT users_next_id(%s)", [logical])
            return cursor.fetchone()[0]

    user_id = write_on(group, next_id)
    _claims_take([(UniqueClaim.USERNAME, username_n), (UniqueClaim.EMAIL, email_n)], user_id=user_id)
    now = timezone.now()
    user = User(
        id=user_id,
        logical_shard=logical,
        username=display_form(username),
        username_key=username_n,
        email=display_form(email),
        password=make_password(password_form(password)),
        display_name=display_name,
        created_at=now,
        updated_at=now,
    )
    try:

        def insert(alias):
            with transaction.atomic(using=alias):
                user.save(using=alias, force_insert=True)
                outbox_record(alias=alias, event="user.created", user_id=user_id, data=_public(user))

        write_on(group, insert)
    except BaseException:
        _claims_release(user_id=user_id)  # compensate; if this fails too the claims are stale and repaired later
        raise
    _claims_confirm(user_id=user_id)
    row = _row(user)
    _cache_row(row)
    # Replaces a cached "not found" or a deleted namesake's tombstone (older ids, smaller versions).
    cache.write_through(cache.username_key(username_n), user_id, version=user_id)
    return row


def _public(user: User) -> dict:
    return {"id": user.id, "username": user.username, "display_name": user.display_name}


def user_update(
    *,
    user_id: int,
    changes: dict,
    if_match: int | None = None,
    if_none_match: str | None = None,
    current_password: str | None = None,
    new_token: TokenClient | None = None,
) -> dict:
    """Apply profile changes (display_name, bio, email, password) and return the row. Raise UserNotFound,
    VersionMismatch (`if_match`, a version, is not the row's; or If-None-Match `if_none_match` names the
    row's tag), InvalidCredentials (a wrong current password), Conflict (email taken).

    A credential change (password or email) needs `current_password` when the caller is the user (the
    API passes it; the admin acting as staff does not) and revokes every token of the user in the same
    transaction, so a stolen token dies with the old password. With `new_token`, one fresh token is
    issued in that transaction and returned in the row's "token" key (the caller's own session goes on).
    The email the row already holds (in its stored form) is no change; the same address in another
    letter case is one (the stored form is where mail goes), under the claim the account already holds.
    """
    group = group_for_user_id(user_id)
    new_email = changes.get("email")
    old_claim = new_claim = None
    if new_email is not None:
        with use_primary():
            current = selectors._row_by_id(user_id)
        if current is None:
            raise UserNotFound
        if display_form(new_email) == current["email"]:
            new_email = None  # the address it has: no change
        elif identity_key(current["email"]) != identity_key(new_email):
            if current_password is not None:
                # Before the claim, not only in the transaction below: a wrong password must not hold
                # the new address even for a moment (anyone could keep an address from registering),
                # nor learn that it is taken.
                with use_primary():
                    password_hash = selectors.user_password_hash(user_id)
                if not current_password or not password_matches(current_password, password_hash or ""):
                    raise InvalidCredentials
            old_claim, new_claim = identity_key(current["email"]), identity_key(new_email)
            _claims_take([(UniqueClaim.EMAIL, new_claim)], user_id=user_id)
        # else the same identity in another letter case: a change of the stored address (mail goes to
        # it) under the claim the account already holds.
    credentials_change = "password" in changes or new_email is not None

    def update(alias):
        with transaction.atomic(using=alias):
            user = User.objects.using(alias).select_for_update().filter(id=user_id).first()
            if user is None:
                raise UserNotFound
            _preconditions(user, if_match=if_match, if_none_match=if_none_match)
            if current_password is not None or "password" in changes:
                if not current_password or not password_matches(current_password, user.password):
                    raise InvalidCredentials
            edited = [
                field
                for field in ("display_name", "bio")
                if field in changes and changes[field] != getattr(user, field)
            ]
            if not edited and not credentials_change:
                # Nothing changes (an empty PATCH, or the values it already has): no new version, ETag
                # or user.updated event, so a client repeating an edit does not look like a new one.
                return user, [], None
            if "password" in changes:
                user.password = make_password(password_form(changes["password"]))
            for field in edited:
                setattr(user, field, changes[field])
            if new_email is not None:
                user.email = display_form(new_email)
            user.version += 1
            user.rev += 1
            user.updated_at = timezone.now()
            user.save(
                using=alias, update_fields=["password", "display_name", "bio", "email", "version", "rev", "updated_at"]
            )
            outbox_record(alias=alias, event="user.updated", user_id=user_id, data=_public(user))
            revoked, token = [], None
            if credentials_change:
                revoked = _tokens_delete(alias, user_id=user_id)
                if new_token is not None:
                    token = _token_insert(alias, user_id=user_id, client=new_token)
            return user, revoked, token

    try:
        user, revoked, token = write_on(group, update)
    except BaseException:
        if new_claim is not None:
            _claims_release(user_id=user_id, kind=UniqueClaim.EMAIL, value=new_claim)
        raise
    _tokens_forget(revoked)
    if old_claim is not None:
        _claims_release(user_id=user_id, kind=UniqueClaim.EMAIL, value=old_claim)
        _claims_confirm(user_id=user_id)
    row = _row(user)
    _cache_row(row)
    return row if token is None else {**row, "token": token}


def user_delete(
    *,
    user_id: int,
    current_password: str | None = None,
    if_match: int | None = None,
    if_none_match: str | None = None,
) -> None:
    """Delete the user, its tokens and its claims; tombstone its cache entries. Raise UserNotFound,
    VersionMismatch (the preconditions, as in user_update: checked first, on the locked row), and
    InvalidCredentials when `current_password` (required when the user deletes itself: a stolen token
    alone must not end an account) is given and wrong."""
    group = group_for_user_id(user_id)

    def delete(alias):
        with transaction.atomic(using=alias):
            user = User.objects.using(alias).select_for_update().filter(id=user_id).first()
            if user is None:
                raise UserNotFound
            _preconditions(user, if_match=if_match, if_none_match=if_none_match)
            if current_password is not None and not password_matches(current_password, user.password):
                raise InvalidCredentials
            digests = list(Token.objects.using(alias).filter(user_id=user_id).values_list("digest", flat=True))
            outbox_record(alias=alias, event="user.deleted", user_id=user_id, data=_public(user))
            user.delete(using=alias)
            return user, digests

    user, digests = write_on(group, delete)
    _claims_release(user_id=user_id)
    cache.tombstone(cache.user_key(user_id))
    cache.tombstone(cache.username_key(identity_key(user.username)), version=user_id + 1)
    for digest in digests:
        cache.tombstone(cache.token_key(digest))


def user_view_record(*, user_id: int, view_id: str | None = None) -> str:
    """Record one view of the user's profile: buffered (write-behind, flushed by the worker) or, with
    the state Redis refusing connections, written at once. Return "buffered" or "direct". Raise
    buffer.BufferFull (that shard's backlog is over its limit) or buffer.BufferUncertain (the outcome is
    unknown: the client retries with the same Idempotency-Key, and `view_id` keeps it counted once)."""
    return buffer.views_add(user_id=user_id, view_id=view_id)


def user_record_views_direct(*, user_id: int, count: int = 1) -> bool:
    """Add views straight to the database (the write-behind fallback). Return False if no such user."""
    group = group_for_user_id(user_id)

    def add(alias):
        with connections[alias].cursor() as cursor:
            cursor.execute(
                "UPDATE users_user SET view_count = view_count + %s, rev = rev + 1 WHERE id = %s RETURNING rev",
                [count, user_id],
            )
            return cursor.fetchone()

    updated = write_on(group, add)
    if updated:
        cache.invalidate_many([(cache.user_key(user_id), updated[0])])
    return updated is not None


# --- tokens ---
def _token_insert(alias: str, *, user_id: int, client: TokenClient) -> str:
    token = token_generate(user_id)
    Token.objects.using(alias).create(
        digest=token_digest(token), user_id=user_id, client_ip=client.ip, user_agent=client.user_agent
    )
    return token


def _tokens_delete(alias: str, *, user_id: int, digests: list[str] | None = None) -> list[str]:
    """Delete the user's tokens (all, or those in `digests`) and return the digests deleted."""
    tokens = Token.objects.using(alias).filter(user_id=user_id)
    if digests is not None:
        tokens = tokens.filter(digest__in=digests)
    deleted = list(tokens.values_list("digest", flat=True))
    Token.objects.using(alias).filter(digest__in=deleted).delete()
    return deleted


def _tokens_forget(digests: list[str]) -> None:
    """Tombstone revoked tokens in the cache: every process rejects them from now on."""
    for digest in digests:
        cache.tombstone(cache.token_key(digest))


def token_create(*, username: str, password: str, client: TokenClient = UNKNOWN_CLIENT) -> tuple[str, int]:
    """Check credentials and issue a token. Raise InvalidCredentials (same for unknown user and bad
    password; the hasher runs either way so timing does not tell them apart)."""
    found = selectors.user_get_credentials(username=username)
    if found is None:
        make_password(password)  # equalise timing
        raise InvalidCredentials
    user_id, password_hash = found
    if not password_matches(password, password_hash):
        raise InvalidCredentials
    token = write_on(group_for_user_id(user_id), lambda alias: _token_insert(alias, user_id=user_id, client=client))
    return token, user_id


def token_authenticate(
    *, token: str, client: TokenClient = UNKNOWN_CLIENT, before_lookup: Callable[[], None] | None = None
) -> int | None:
    """Return the user id a valid, unexpired token belongs to, else None. Warm: one cache round trip.

    `before_lookup()` runs before a lookup that would reach the shard (a cache miss), so a caller can
    refuse a client that keeps presenting unknown tokens. A token past USERS_TOKEN_MAX_AGE since it
    was issued, or USERS_TOKEN_IDLE_TIMEOUT since it was last used, is deleted and refused. The last use
    (time, address, user agent) is written at most once per TOKEN_TOUCH_INTERVAL seconds.
    """
    user_id = token_user_id(token)
    if user_id is None:
        return None
    digest = token_digest(token)
    entry = selectors.token_entry_get(user_id=user_id, digest=digest, before_lookup=before_lookup)
    if entry is None:
        return None
    now = time.time()
    last = entry["used"] or entry["created"]
    if now - entry["created"] > settings.USERS_TOKEN_MAX_AGE or now - last > settings.USERS_TOKEN_IDLE_TIMEOUT:
        _token_revoke_digest(user_id=user_id, digest=digest)
        return None
    if entry["used"] is None or now - entry["used"] > TOKEN_TOUCH_INTERVAL:
        _token_touch(user_id=user_id, digest=digest, entry=entry, client=client)
    return user_id


def _token_touch(*, user_id: int, digest: str, entry: dict, client: TokenClient) -> None:
    """Record a token's use. Best effort: a shard that cannot take it must not fail the request."""
    now = timezone.now()
    try:
        updated = write_on(
            group_for_user_id(user_id),
            lambda alias: (
                Token.objects.using(alias)
                .filter(digest=digest, user_id=user_id)
                .update(last_used_at=now, client_ip=client.ip, user_agent=client.user_agent)
            ),
            pin=False,  # bookkeeping: a GET must not pin its client to the primary for it
        )
    except ShardUnavailable:
        return
    if updated:
        entry = {**entry, "used": now.timestamp()}
        cache.write_through(cache.token_key(digest), entry, version=selectors.token_entry_version(entry))


def _token_revoke_digest(*, user_id: int, digest: str) -> None:
    deleted = write_on(
        group_for_user_id(user_id), lambda alias: _tokens_delete(alias, user_id=user_id, digests=[digest])
    )
    _tokens_forget(deleted or [digest])


def token_revoke(*, token: str) -> None:
    user_id = token_user_id(token)
    if user_id is None:
        return
    _token_revoke_digest(user_id=user_id, digest=token_digest(token))


def token_revoke_by_id(*, user_id: int, token_id: str) -> bool:
    """Revoke the user's token whose public id (see selectors.token_list) is `token_id`; False when the
    user has no such token."""
    digests = [d for d in selectors.token_digests(user_id=user_id) if token_public_id(d) == token_id]
    if not digests:
        return False
    group = group_for_user_id(user_id)
    deleted = write_on(group, lambda alias: _tokens_delete(alias, user_id=user_id, digests=digests))
    _tokens_forget(deleted)
    return bool(deleted)


def tokens_revoke_all(*, user_id: int) -> int:
    """Revoke every token of the user (the caller's own included); return how many there were."""
    deleted = write_on(group_for_user_id(user_id), lambda alias: _tokens_delete(alias, user_id=user_id))
    _tokens_forget(deleted)
    return len(deleted)
