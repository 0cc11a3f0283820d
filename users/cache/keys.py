"""The one place the users cache keys are spelled: named, versioned key functions."""

USER_PREFIX = "users:v1:id:"
TOKEN_PREFIX = "users:v2:tok:"  # noqa: S105 (a key prefix, not a secret); v2: {user_id, created, used}, was a bare user id
# Hot entries kept in each process's tracked local cache (store.local_cache): rows by id, tokens.
LOCAL_PREFIXES = (USER_PREFIX, TOKEN_PREFIX)


def user_key(user_id: int) -> str:
    return f"{USER_PREFIX}{user_id}"


def username_key(normalized_username: str) -> str:
    return f"users:v1:uname:{normalized_username}"


def token_key(digest: str) -> str:
    return f"{TOKEN_PREFIX}{digest}"


def lease_key(key: str) -> str:
    """The single-flight lease of the entry at `key` (see get_or_lease.lua)."""
    return f"{key}:lease"
