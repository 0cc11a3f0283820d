"""The one place the users cache keys are spelled: named, versioned key functions."""


def user_key(user_id: int) -> str:
    return f"users:v1:id:{user_id}"


def username_key(normalized_username: str) -> str:
    return f"users:v1:uname:{normalized_username}"


def token_key(digest: str) -> str:
    return f"users:v2:tok:{digest}"  # v2: {user_id, created, used}, was a bare user id


def lease_key(key: str) -> str:
    """The single-flight lease of the entry at `key` (see get_or_lease.lua)."""
    return f"{key}:lease"
