"""The users REST API contract, every error path included, against the real stack."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from users import selectors
from users.models import OutboxEvent, UniqueClaim, User
from users.sharding.access import group_for_user_id

from .conftest import PASSWORD

REGISTER = "/api/v1/users/"
TOKEN = "/api/v1/auth/token/"
ME = "/api/v1/users/me/"


def detail(user_id):
    return f"/api/v1/users/{user_id}/"


def assert_error(response, status, code=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) <= {"detail", "code", "fields", "request_id"}
    assert isinstance(body["detail"], str) and body["detail"]
    if code:
        assert body["code"] == code
    return body


# --- registration ---
def test_register_returns_the_user_without_any_password(api):
    response = api.register("Bob", display_name="Bobby")
    assert response.status_code == 201
    body = response.json()
    assert body["username"] == "Bob" and body["display_name"] == "Bobby"
    assert body["email"] == "Bob@example.com"
    assert "password" not in response.content.decode().lower()
    assert isinstance(body["id"], str) and int(body["id"]) > 0
    assert User.objects.using(selectors.group_for_user_id(int(body["id"]))).filter(id=int(body["id"])).exists()


def test_register_validates_fields_and_password_strength(api):
    body = assert_error(api.register("x", email="not-an-email", password="123"), 400, "invalid")
    assert {"username", "email"} <= set(body["fields"])
    body = assert_error(api.register("carol", password="password"), 400, "invalid")
    assert "password" in body["fields"]
    body = assert_error(api.register("carol", password="carol-example"), 400)  # too similar / too short
    assert "password" in body["fields"]


def test_register_conflicts_on_username_or_email_in_any_case(api):
    assert api.register("dave").status_code == 201
    body = assert_error(api.register("DAVE", email="other@example.com"), 409, "conflict")
    assert set(body["fields"]) == {"username"}
    body = assert_error(api.register("dave2", email="DAVE@EXAMPLE.COM"), 409, "conflict")
    assert set(body["fields"]) == {"email"}


@pytest.mark.parametrize("field", ["id", "is_staff", "version", "view_count", "password_hash"])
def test_register_rejects_unknown_and_read_only_fields(api, field):
    body = assert_error(api.register("mallory", **{field: 1}), 400, "invalid")
    assert field in body["fields"]
    assert selectors.user_get_by_username(username="mallory") is None


def test_bad_bodies_get_clear_4xx(api):
    client = Client()
    assert_error(client.post(REGISTER, "{not json", content_type="application/json"), 400, "parse_error")
    assert_error(client.post(REGISTER, "a=1", content_type="application/x-www-form-urlencoded"), 415)
    assert_error(client.post(REGISTER, "[1, 2]", content_type="application/json"), 400)
    big = '{"username": "big", "email": "big@example.com", "password": "' + "x" * 70_000 + '"}'
    assert_error(client.post(REGISTER, big, content_type="application/json"), 413, "request_too_large")
    assert_error(client.get("/api/v1/no/such/path"), 404, "not_found")


# --- tokens ---
def test_token_login_and_the_same_401_for_unknown_user_and_wrong_password(api):
    api.register("erin")
    body = api.login("erin")
    assert body["token"].startswith(body["user_id"] + ".")
    wrong = assert_error(api.post(TOKEN, {"username": "erin", "password": "nope-nope-nope"}), 401)
    unknown = assert_error(api.post(TOKEN, {"username": "nobody", "password": "nope-nope-nope"}), 401)
    wrong.pop("request_id"), unknown.pop("request_id")  # each request has its own
    assert wrong == unknown


def test_a_revoked_token_fails_at_once(user):
    api, _ = user
    assert api.get(ME).status_code == 200
    assert api.delete(TOKEN).status_code == 204
    assert_error(api.get(ME), 401)


def test_tokens_are_stored_only_as_digests(user):
    api, profile = user
    from users.models import Token

    group = selectors.group_for_user_id(int(profile["id"]))
    digests = list(Token.objects.using(group).values_list("digest", flat=True))
    assert len(digests) == 1
    assert api.token not in digests[0] and api.token.split(".")[1] not in digests[0]


def test_malformed_tokens_are_401_not_500(api):
    headers = ["Token", "Token a b", "Token not-a-token", "Token 123.short", "Token 99999999999999999999." + "y" * 40]
    for header in headers:
        assert_error(api.get(ME, headers={"Authorization": header}), 401)


# --- me ---
def test_me_requires_a_token(api):
    assert_error(api.get(ME), 401, "not_authenticated")


def test_me_shows_the_own_email_and_the_etag_of_the_registration(make_api):
    api = make_api()
    registered = api.register("alice")
    api.login("alice")
    response = api.get(ME)
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"
    assert response["ETag"] == registered["ETag"] == '"1.1.0"'  # users/etags.py: version.rev.pending


def test_patch_me_updates_and_honours_if_match(user):
    api, _ = user
    first = api.get(ME)["ETag"]
    response = api.patch(ME, {"display_name": "Al", "bio": "hi"}, headers={"If-Match": first})
    assert response.status_code == 200
    assert response.json()["version"] == 2 and response["ETag"] not in (first, None)
    assert_error(api.patch(ME, {"bio": "stale"}, headers={"If-Match": first}), 412, "precondition_failed")
    assert_error(api.patch(ME, {"bio": "stale"}, headers={"If-Match": '"v1"'}), 412)  # an older scheme's tag
    assert api.get(ME).json()["bio"] == "hi"
    assert api.patch(ME, {"bio": "again"}, headers={"If-Match": response["ETag"]}).status_code == 200


def test_a_patch_that_changes_nothing_is_not_a_new_version(user):
    """Found by the black-box pass: `PATCH {}` bumped the version and the ETag (and told webhook
    subscribers the user was updated) although nothing changed."""
    api, profile = user
    user_id = int(profile["id"])
    edited = api.patch(ME, {"display_name": "Same", "bio": "same"})
    events = OutboxEvent.objects.using(group_for_user_id(user_id)).filter(user_id=user_id).count()
    for unchanged in ({}, {"display_name": "Same"}, {"bio": "same", "display_name": "Same"}):
        response = api.patch(ME, unchanged, headers={"If-Match": edited["ETag"]})
        assert response.status_code == 200 and response["ETag"] == edited["ETag"], unchanged
        assert response.json()["version"] == edited.json()["version"]
    assert OutboxEvent.objects.using(group_for_user_id(user_id)).filter(user_id=user_id).count() == events
    # A stale If-Match is still refused, change or not.
    assert_error(api.patch(ME, {}, headers={"If-Match": '"1.1.0"'}), 412, "precondition_failed")


def test_a_patch_sending_the_current_email_needs_no_password_and_is_no_new_version(user):
    """Found by the black-box pass: a client sending its profile back with the email it already has
    got a 400 asking for the password, as if it changed the address."""
    api, _ = user
    before = api.get(ME)
    for same in ("alice@example.com", " alice@example.com "):  # trimmed, it is the stored form
        response = api.patch(ME, {"email": same, "bio": ""}, headers={"If-Match": before["ETag"]})
        assert response.status_code == 200, (same, response.content)
        assert response["ETag"] == before["ETag"] and "token" not in response.json()
    response = api.patch(ME, {"email": "alice@example.com", "bio": "edited"})
    assert response.status_code == 200 and response.json()["version"] == 2
    assert "token" not in response.json()  # not a credential change: the session's tokens live on
    assert api.get(ME).status_code == 200


def test_the_current_email_in_another_letter_case_is_a_change_that_needs_the_password(user, make_api):
    """The stored address is the one mail goes to, and a local part may be case-sensitive: a new letter
    case is an email change (password, new version, tokens revoked), under the claim the account holds."""
    api, profile = user
    body = assert_error(api.patch(ME, {"email": "Alice@Example.com"}), 400, "invalid")
    assert "current_password" in body["fields"]
    response = api.patch(ME, {"email": "Alice@Example.com", "current_password": PASSWORD})
    assert response.status_code == 200, response.content
    changed = response.json()
    assert changed["email"] == "Alice@Example.com" and changed["version"] == 2 and changed["token"]
    assert selectors.user_get_by_email(email="alice@example.com")["id"] == int(profile["id"])
    claims = UniqueClaim.objects.using("default").filter(kind=UniqueClaim.EMAIL, user_id=int(profile["id"]))
    assert list(claims.values_list("value", flat=True)) == ["alice@example.com"]
    assert_error(make_api().register("alice2", email="ALICE@example.com"), 409, "conflict")


def test_if_match_star_passes_and_a_weak_tag_never_matches(user):
    """RFC 9110 13.1.1: `*` holds for an existing resource; If-Match compares strongly."""
    api, _ = user
    tag = api.get(ME)["ETag"]
    assert_error(api.patch(ME, {"bio": "weak"}, headers={"If-Match": f"W/{tag}"}), 412, "precondition_failed")
    assert api.patch(ME, {"bio": "star"}, headers={"If-Match": "*"}).status_code == 200


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "drf"])
def test_get_me_answers_304_to_if_none_match_on_both_paths(user, settings, fast):
    settings.USERS_FAST_READ = fast
    api, _ = user
    tag = api.get(ME)["ETag"]
    unchanged = api.get(ME, headers={"If-None-Match": tag})
    assert unchanged.status_code == 304 and unchanged["ETag"] == tag and not unchanged.content
    assert api.get(ME, headers={"If-None-Match": "*"}).status_code == 304
    assert api.get(ME, headers={"If-None-Match": '"0.0.0"'}).status_code == 200
    api.patch(ME, {"bio": "changed"})
    assert api.get(ME, headers={"If-None-Match": tag}).status_code == 200  # the tag moved with the edit


def test_if_match_is_not_refused_by_views_flushed_after_the_read(user):
    """If-Match guards against another edit: views counted into the row since the client's read change
    the tag (rev) but not the version it names."""
    from users.writebehind import flush

    api, profile = user
    tag = api.get(ME)["ETag"]
    assert Client().post(f"{detail(profile['id'])}views/").status_code == 202
    flush.flush()
    assert api.get(ME)["ETag"] != tag
    assert api.patch(ME, {"bio": "after views"}, headers={"If-Match": tag}).status_code == 200


def test_the_public_tag_changes_with_what_the_public_profile_shows_only(user):
    """users/etags.py: the public tag follows the public body (an edit, a view), not writes it does not
    show. Found by the black-box pass: the owner's own reads wrote last-seen, the shared tag moved
    every 2 s, and anyone polling it learnt when the owner was active."""
    from users.writebehind import flush

    api, profile = user
    public = Client().get(detail(profile["id"]))["ETag"]
    private = api.get(ME)["ETag"]  # the owner's request: its last-seen is buffered
    flush.flush()  # and written to the row (a new rev)
    assert api.get(ME)["ETag"] != private  # the private profile shows last-seen: its tag moves
    assert Client().get(detail(profile["id"]))["ETag"] == public  # the public one does not show it
    assert Client().get(detail(profile["id"]), headers={"If-None-Match": public}).status_code == 304
    assert Client().post(f"{detail(profile['id'])}views/").status_code == 202
    viewed = Client().get(detail(profile["id"]))
    assert viewed.json()["view_count"] == 1 and viewed["ETag"] != public
    flush.flush()  # the view moves from the buffer into the row: the body, and so the tag, stay
    assert Client().get(detail(profile["id"]))["ETag"] == viewed["ETag"]
    edited = api.patch(ME, {"bio": "new"}, headers={"If-Match": viewed["ETag"]})  # If-Match reads either tag
    assert edited.status_code == 200
    assert Client().get(detail(profile["id"]))["ETag"] != viewed["ETag"]


@pytest.mark.parametrize("field", ["id", "username", "is_staff", "version", "view_count", "last_seen_at"])
def test_patch_me_rejects_mass_assignment(user, field):
    api, _ = user
    body = assert_error(api.patch(ME, {field: "1"}), 400, "invalid")
    assert field in body["fields"]


def test_a_wrong_password_neither_holds_a_new_email_nor_learns_it_is_taken(user, make_api):
    """Found by the black-box pass: the new address was claimed before the password was checked, so a
    loop of PATCHes with a wrong password kept anyone from registering it, and answered 409 for a
    taken one."""
    api, _ = user
    other = make_api()
    other.register("bob")
    for email in ("victim@example.com", "BOB@example.com"):
        body = assert_error(api.patch(ME, {"email": email, "current_password": "wrong-one"}), 400, "invalid")
        assert "current_password" in body["fields"], email
    claims = UniqueClaim.objects.using("default").filter(kind=UniqueClaim.EMAIL, value="victim@example.com")
    assert not claims.exists()
    assert make_api().register("victim", email="victim@example.com").status_code == 201


def test_patch_me_email_change_moves_the_uniqueness_claim(user, make_api):
    api, _ = user
    other = make_api()
    other.register("bob")
    assert_error(api.patch(ME, {"email": "BOB@example.com", "current_password": PASSWORD}), 409, "conflict")
    assert api.patch(ME, {"email": "alice2@example.com", "current_password": PASSWORD}).status_code == 200
    assert other.register("carol", email="alice@example.com").status_code == 201  # the old email is free
    assert_error(other.register("dave", email="ALICE2@example.com"), 409)


def test_patch_me_password_needs_the_current_one(user):
    api, _ = user
    assert_error(api.patch(ME, {"password": "Brand-New-Pass-2026"}), 400)
    assert_error(api.patch(ME, {"password": "Brand-New-Pass-2026", "current_password": "wrong"}), 400)
    assert api.patch(ME, {"password": "Brand-New-Pass-2026", "current_password": PASSWORD}).status_code == 200
    api.token = None  # revoked by the change (tests/users/test_tokens.py)
    api.login("alice", "Brand-New-Pass-2026")


def test_delete_me_removes_the_account_everywhere(user, make_api):
    api, profile = user
    assert_error(api.delete(ME), 400, "invalid")  # a token alone cannot end the account ...
    assert_error(api.delete(ME, {"current_password": "wrong-wrong"}), 400, "invalid")
    assert Client().get(detail(profile["id"])).status_code == 200
    assert api.delete(ME, {"current_password": PASSWORD}).status_code == 204  # ... its password can
    assert_error(Client().get(detail(profile["id"])), 404)
    assert_error(api.get(ME), 401)
    again = make_api().register("ALICE", email="alice@example.com")
    assert again.status_code == 201
    assert again.json()["id"] != profile["id"]


# --- public profiles ---
def test_public_profile_has_no_private_fields_and_an_etag(user):
    api, profile = user
    response = Client().get(detail(profile["id"]))
    assert response.status_code == 200
    assert set(response.json()) == {"id", "username", "display_name", "bio", "created_at", "view_count"}
    assert Client().get(detail(profile["id"]), headers={"If-None-Match": response["ETag"]}).status_code == 304
    assert Client().get(detail(profile["id"]), headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize("raw", ["0", "abc", "-5", "1.5", "99999999999999999999", "9223372036854775807", "１２３"])
def test_unknown_and_malformed_ids_are_404(api, raw):
    assert_error(api.get(detail(raw)), 404, "not_found")


def test_lookup_by_username_is_exact_and_case_insensitive(user):
    api, profile = user
    body = Client().get(REGISTER, {"username": "ALICE"}).json()
    assert [r["id"] for r in body["results"]] == [profile["id"]]
    assert Client().get(REGISTER, {"username": "alic"}).json()["results"] == []


# --- staff listing ---
def test_listing_all_users_is_for_staff_only(user):
    api, _ = user
    assert_error(api.get(REGISTER, limit=10), 403)
    assert_error(Client().get(REGISTER, {"limit": 10}), 401)
    # A blank ?username= is no lookup (the serializer drops it): still the staff-only list.
    assert_error(api.get(REGISTER, username=""), 403, "permission_denied")
    assert_error(Client().get(REGISTER, {"username": "", "limit": 10}), 401, "not_authenticated")


def test_staff_list_all_users_across_shards_with_a_cursor(user, make_api):
    for i in range(9):
        make_api().register(f"member{i}")
    get_user_model().objects.create_user("staff", password="x-staff-pass-2026", is_staff=True)
    staff = Client()
    staff.login(username="staff", password="x-staff-pass-2026")
    ids, cursor = [], None
    while True:
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        body = staff.get(REGISTER, params).json()
        ids += [int(r["id"]) for r in body["results"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert len(ids) == 10 and ids == sorted(ids)
    assert_error(staff.get(REGISTER, {"limit": 0}), 400)
    assert_error(staff.get(REGISTER, {"cursor": "junk"}), 400)
    assert len(staff.get(REGISTER, {"limit": 1000}).json()["results"]) == 10  # capped at 100, 10 exist


# --- idempotency ---
def test_idempotency_key_replays_the_first_response_and_creates_nothing_new(api):
    headers = {"Idempotency-Key": "reg-1"}
    body = {"username": "ivan", "email": "ivan@example.com", "password": PASSWORD}
    first = api.post(REGISTER, body, headers=headers)
    second = api.post(REGISTER, body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second["Idempotent-Replayed"] == "true"
    assert_error(api.post(REGISTER, {**body, "username": "ivan2"}, headers=headers), 422, "idempotency_key_reused")
    assert sum(selectors.user_count_per_shard().values()) == 1


def test_behind_a_trusted_proxy_anonymous_idempotency_keys_are_scoped_by_the_real_client(api, settings):
    settings.RESILIENCE_TRUSTED_PROXIES = ["127.0.0.1"]  # the test client's REMOTE_ADDR is the proxy
    body = {"password": PASSWORD}
    for n, client_address in enumerate(["203.0.113.7", "203.0.113.8"]):
        headers = {"Idempotency-Key": "same-key", "X-Forwarded-For": client_address}
        response = api.post(
            REGISTER, {**body, "username": f"proxied{n}", "email": f"p{n}@example.com"}, headers=headers
        )
        assert response.status_code == 201, response.content  # not 422: two clients, two key spaces
    assert sum(selectors.user_count_per_shard().values()) == 2


# --- consistency headers ---
def test_strong_reads_and_echoed_pins_go_to_the_primary(api):
    from django.db import connections

    with connections["default_r0"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    try:
        created = api.register("fresh")
        until = created["Bulwark-Read-Primary-Until"]
        assert float(until) > 0
        from django_redis import get_redis_connection

        get_redis_connection("default").flushdb()  # the database decides, not the cache
        assert api.get(detail(created.json()["id"])).status_code == 200  # same client: cookie
        assert Client().get(detail(created.json()["id"]), headers={"Consistency": "strong"}).status_code == 200
        echoed = Client().get(detail(created.json()["id"]), headers={"Bulwark-Read-Primary-Until": until})
        assert echoed.status_code == 200
    finally:
        with connections["default_r0"].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")


def test_a_shard_primary_whose_breaker_is_forced_open_answers_503_without_connecting(make_api):
    from django.db import connections

    from project.db.breakers import alias_guard, breaker_name
    from resilience.breaker import get_breaker
    from users.sharding.access import group_for_user_id, group_for_username

    from ..stack import wait_for

    api = make_api()
    user_id = int(api.register("fenced").json()["id"])
    api.login("fenced")
    group = group_for_user_id(user_id)
    get_breaker(breaker_name(group)).force_open("drill")
    wait_for(lambda: not alias_guard(group).allows(), timeout=5, message="this process to see it")
    connections[group].close()

    response = api.patch("/api/v1/users/me/", {"bio": "refused"})
    assert response.status_code == 503 and response.json()["code"] == "shard_unavailable"
    assert response["Retry-After"]
    assert connections[group].connection is None  # refused before any connection attempt
    # Other shards are judged on their own: a user hashed elsewhere registers.
    elsewhere = next(f"elsewhere{i}" for i in range(1000) if group_for_username(f"elsewhere{i}") != group)
    assert make_api().register(elsewhere).status_code == 201

    get_breaker(breaker_name(group)).reset("drill over")
    wait_for(lambda: alias_guard(group).allows(), timeout=5, message="this process to see the reset")
    assert api.patch("/api/v1/users/me/", {"bio": "accepted"}).status_code == 200
