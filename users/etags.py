"""The one ETag scheme of the users API: every response carrying a profile tags it here.

The private profile's tag (register, GET and PATCH /users/me/) is `"<version>.<rev>.<pending>"`, strong:
- `rev` changes with every write of the row (edits and write-behind flushes), `pending` with every
  buffered view, so (rev, pending) names the bytes of a public or private profile: If-None-Match on
  GET /users/{id}/ answers 304 exactly while they are the same;
- `version` changes with profile edits only, and is what If-Match on PATCH /users/me/ checks: a view
  flushed or a last-seen written between a client's read and its edit does not refuse the edit (the
  lost update If-Match guards against is another edit).
The public profile's tag (GET /users/{id}/) is `"<version>.<views>"`: the version and the view count it
shows. The public body changes only with an edit or a view, and its tag only then: a write it does not
show (a last-seen written on each of the owner's requests, a flush moving views from the buffer into
the row) must not change it, or anyone polling it learns when the owner is active (found by the
black-box pass: the middle number rose every 2 s while the owner only read /me) and readers lose
their 304s.
Clients treat the tag as opaque; If-Match reads the version from either, and from the older
`"v<version>"` form.

Preconditions are evaluated on every method of the users API that has a tag (RFC 9110 13.2.2: If-Match
first, then If-None-Match), before the method is performed: a false If-Match is a 412 on GET, PATCH,
DELETE and POST .../views/ alike, a false If-None-Match a 304 on GET and a 412 on the others. If-Match
checks the profile version (the one rule, above, for every method); If-None-Match compares the whole tag
the resource's GET gives, and `*` is always false: the caller's profile exists.
"""

from resilience.errors import ApiError


def profile_etag(row: dict, *, pending_views: int = 0) -> str:
    """The ETag of the profile rendered from `row` (a selectors row) plus `pending_views`."""
    return f'"{row["version"]}.{row["rev"]}.{pending_views}"'


def public_etag(row: dict, *, pending_views: int = 0) -> str:
    """The ETag of the public profile rendered from `row` plus `pending_views` (see above)."""
    return f'"{row["version"]}.{row["view_count"] + pending_views}"'


def none_match(etag: str, if_none_match: str) -> bool:
    """Whether an If-None-Match header names `etag`, by the weak comparison (RFC 9110 13.1.2): W/ is
    ignored, and * matches any current representation."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def if_match_holds(version: int, header: str | None) -> None:
    """Raise ApiError 412 unless If-Match `header` holds for a profile at `version` (None: no header)."""
    wanted = if_match_version(header)
    if wanted is not None and wanted != version:
        raise ApiError(412, IF_MATCH_FAILED, "precondition_failed")


def if_none_match_refuses(etag: str, header: str | None) -> bool:
    """Whether If-None-Match `header` is false for a resource tagged `etag` (None: no header): `*`, or
    a tag naming it. A GET answers 304 then, any other method 412."""
    return header is not None and none_match(etag, header)


IF_MATCH_FAILED = "The resource changed since the version you sent (If-Match)."
IF_NONE_MATCH_FAILED = "The resource is in a state If-None-Match excludes (`*`: it exists)."


def if_match_version(header: str | None) -> int | None:
    """The profile version an If-Match header names (None without the header, or for `*`). Raise
    ApiError 412 for anything that is not one strong tag of this scheme (a list of tags is refused: the
    client re-reads and sends the one it holds); numbers stay bounded before they reach SQL."""
    if header is None or header.strip() == "*":
        return None  # `*`: any current representation, and the caller's account exists
    if header.strip().startswith("W/"):  # If-Match compares strongly (RFC 9110 13.1.1): a weak tag never matches
        raise ApiError(412, "If-Match takes a strong ETag from this resource.", "precondition_failed")
    parts = header.strip().strip('"').split(".")
    if len(parts) == 1:  # `"v<version>"`, as tagged before this scheme, or a bare version
        parts[0] = parts[0].removeprefix("v")
    elif len(parts) not in (2, 3):  # the public and the private tag
        parts = [""]
    if not all(part.isascii() and part.isdigit() and len(part) <= 19 for part in parts) or len(parts[0]) > 10:
        raise ApiError(412, "If-Match must be an ETag from this resource.", "precondition_failed")
    return int(parts[0])
