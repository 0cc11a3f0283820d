"""Writes of sharded users. Each spans at most two databases, designed so a crash between steps is
either harmless or repaired:

- create: take the username and email claims (default database) -> insert the user (its shard) ->
  confirm the claims. A claim left behind by a crash is "stale" (its user row does not hold the
  value) and is deleted by whoever it blocks (`_claims_take`), so nothing is orphaned for good.
- email change: claim the new email -> update the row -> release the old claim.
- delete: delete the row (and its tokens) -> release its claims. A crash in between leaves claims
  pointing at no user: stale, repaired the same way.
The cache is written through after each commit (users/cache.py).
"""

from datetime import timedelta

from django.contrib.auth.hashers import check_password, make_password
from django.db import IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from project.db.pinning import use_primary

from . import cache, selectors
from .models import Token, UniqueClaim, User
from .outbox import outbox_record
from .sharding.access import group_for_user_id, write_on
from .sharding.hashing import logical_shard_for_username, normalize
from .sharding.shardmap import shard_map
from .tokens import token_digest, token_generate, token_user_id

CLAIM_GRACE = timedelta(seconds=30)  # an unconfirmed claim younger than this may be a registration in flight


class Conflict(Exception):
    """The username and/or email is taken. `fields` names which."""

    def __init__(self, fields: list[str]):
        super().__init__(f"already taken: {', '.join(fields)}")
        self.fields = fields


class VersionMismatch(Exception):
    """If-Match named a version that is no longer current."""


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
    held = normalize(row["username"] if claim.kind == UniqueClaim.USERNAME else row["email"])
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
    """Create a user on the shard its username hashes to. Raise Conflict, ShardUnavailable."""
    username_n, email_n = normalize(username), normalize(email)
    logical = logical_shard_for_username(username_n)
    group = shard_map.group_for_logical(logical)

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
        username=username.strip(),
        email=email.strip(),
        password=make_password(password),
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
    *, user_id: int, changes: dict, if_match: int | None = None, current_password: str | None = None
) -> dict:
    """Apply profile changes (display_name, bio, email, password). Raise UserNotFound, VersionMismatch,
    InvalidCredentials (password change with a wrong current password), Conflict (email taken)."""
    group = group_for_user_id(user_id)
    new_email = changes.get("email")
    old_email = None
    if new_email is not None:
        with use_primary():
            current = selectors._row_by_id(user_id)
        if current is None:
            raise UserNotFound
        if normalize(current["email"]) != normalize(new_email):
            old_email = normalize(current["email"])
            _claims_take([(UniqueClaim.EMAIL, normalize(new_email))], user_id=user_id)
        else:
            new_email = None

    def update(alias):
        with transaction.atomic(using=alias):
            user = User.objects.using(alias).select_for_update().filter(id=user_id).first()
            if user is None:
                raise UserNotFound
            if if_match is not None and user.version != if_match:
                raise VersionMismatch
            if "password" in changes:
                if not current_password or not check_password(current_password, user.password):
                    raise InvalidCredentials
                user.password = make_password(changes["password"])
            for field in ("display_name", "bio"):
                if field in changes:
                    setattr(user, field, changes[field])
            if new_email is not None:
                user.email = new_email.strip()
            user.version += 1
            user.rev += 1
            user.updated_at = timezone.now()
            user.save(
                using=alias, update_fields=["password", "display_name", "bio", "email", "version", "rev", "updated_at"]
            )
            outbox_record(alias=alias, event="user.updated", user_id=user_id, data=_public(user))
            return user

    try:
        user = write_on(group, update)
    except BaseException:
        if new_email is not None:
            _claims_release(user_id=user_id, kind=UniqueClaim.EMAIL, value=normalize(new_email))
        raise
    if old_email is not None:
        _claims_release(user_id=user_id, kind=UniqueClaim.EMAIL, value=old_email)
        _claims_confirm(user_id=user_id)
    row = _row(user)
    _cache_row(row)
    return row


def user_delete(*, user_id: int) -> None:
    """Delete the user, its tokens and its claims; tombstone its cache entries. Raise UserNotFound."""
    group = group_for_user_id(user_id)

    def delete(alias):
        with transaction.atomic(using=alias):
            user = User.objects.using(alias).select_for_update().filter(id=user_id).first()
            if user is None:
                raise UserNotFound
            digests = list(Token.objects.using(alias).filter(user_id=user_id).values_list("digest", flat=True))
            outbox_record(alias=alias, event="user.deleted", user_id=user_id, data=_public(user))
            user.delete(using=alias)
            return user, digests

    user, digests = write_on(group, delete)
    _claims_release(user_id=user_id)
    cache.tombstone(cache.user_key(user_id))
    cache.tombstone(cache.username_key(normalize(user.username)), version=user_id + 1)
    for digest in digests:
        cache.tombstone(cache.token_key(digest))


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
def token_create(*, username: str, password: str) -> tuple[str, int]:
    """Check credentials and issue a token. Raise InvalidCredentials (same for unknown user and bad
    password; the hasher runs either way so timing does not tell them apart)."""
    found = selectors.user_get_credentials(username=username)
    if found is None:
        make_password(password)  # equalise timing
        raise InvalidCredentials
    user_id, password_hash = found
    if not check_password(password, password_hash):
        raise InvalidCredentials
    token = token_generate(user_id)
    digest = token_digest(token)
    write_on(
        group_for_user_id(user_id), lambda alias: Token.objects.using(alias).create(digest=digest, user_id=user_id)
    )
    return token, user_id


def token_authenticate(*, token: str) -> int | None:
    """Return the user id a valid token belongs to, else None. Warm: one cache round trip."""
    user_id = token_user_id(token)
    if user_id is None:
        return None
    digest = token_digest(token)

    def load():
        with use_primary():  # a token must work at once after issue and fail at once after revocation
            exists = Token.objects.using(group_for_user_id(user_id)).filter(digest=digest, user_id=user_id).exists()
        return user_id if exists else None

    return cache.get_or_load(cache.token_key(digest), load, version_of=lambda _: 1)


def token_revoke(*, token: str) -> None:
    user_id = token_user_id(token)
    if user_id is None:
        return
    digest = token_digest(token)
    write_on(
        group_for_user_id(user_id),
        lambda alias: Token.objects.using(alias).filter(digest=digest, user_id=user_id).delete(),
    )
    cache.tombstone(cache.token_key(digest))
