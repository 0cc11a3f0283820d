"""One identity for usernames and emails (users/identity.py): the same key for uniqueness, lookups,
login, placement and the admin search; look-alikes from other scripts refused. Real stack."""

import pytest
from django.contrib.auth import get_user_model

from resilience.ratelimit.http import keys_for
from users import selectors
from users.identity import identity_key, mixes_scripts, username_problem
from users.models import User
from users.selectors import user_search
from users.sharding.hashing import logical_shard_for_username

from .conftest import PASSWORD
from .test_api import REGISTER, TOKEN, assert_error


def test_straße_registers_is_found_and_can_log_in(api):
    assert api.register("straße", email="strasse@example.com").status_code == 201
    assert api.get(REGISTER, username="STRASSE").json()["results"][0]["username"] == "straße"
    body = api.login("STRASSE")  # the login lookup uses the same identity as the claim
    assert body["user_id"]
    api.token = None
    assert api.login("straße")["user_id"] == body["user_id"]


def test_the_identity_key_is_stored_and_is_the_shard_backstop(api):
    profile = api.register("Straße", email="s2@example.com").json()
    row = User.objects.using(selectors.group_for_user_id(int(profile["id"]))).get(id=int(profile["id"]))
    assert row.username == "Straße" and row.username_key == "strasse"


def test_case_and_compatibility_forms_are_one_identity(api):
    assert api.register("alice", email="alice@example.com").status_code == 201
    for i, other in enumerate(("ALICE", "ａｌｉｃｅ", "ＡＬＩＣＥ", "ALİCE", "alıce")):  # Turkish İ and ı too
        body = assert_error(api.register(other, email=f"other{i}@example.net"), 409, "conflict")
        assert body["fields"] == {"username": ["This username is already taken."]}
    assert api.get(REGISTER, username="ａｌｉｃｅ").json()["results"][0]["username"] == "alice"
    assert api.post(TOKEN, {"username": "ＡＬＩＣＥ", "password": PASSWORD}).status_code == 200


@pytest.mark.parametrize("name", ["admin", "ＡＤＭＩＮ", "Root", "ops-lead"])
def test_reserved_names_and_staff_names_cannot_be_registered(api, name):
    get_user_model().objects.create_user("ops-lead", password="x-ops-pass-2026", is_staff=True)
    body = assert_error(api.register(name, email="reserved@example.com"), 409, "conflict")
    assert "username" in body["fields"]


def test_a_full_width_name_is_stored_in_its_plain_form(api):
    assert api.register("ｂｅｔｔｙ", email="betty@example.com").json()["username"] == "betty"


@pytest.mark.parametrize("name", ["аdmin", "pаypal", "gοogle", "admin١1"])  # Cyrillic а, Greek ο, two digit systems
def test_mixed_script_usernames_are_refused(api, name):
    body = assert_error(api.register(name, email="mixed@example.com"), 400, "invalid")
    assert "username" in body["fields"]
    assert selectors.user_get_by_username(username=name) is None


@pytest.mark.parametrize("name", ["山田taro", "иван", "ゆうき_太郎", "김민수", "δημήτρης"])
def test_single_script_and_east_asian_mixes_are_allowed(api, name):
    assert username_problem(name) is None
    assert api.register(name, email=f"u{abs(hash(name)) % 10**8}@example.com").status_code == 201


def test_the_admin_search_uses_the_same_identity(api):
    profile = api.register("Ｍüller", email="MUELLER@example.com").json()
    assert [row["id"] for row in user_search(query="MÜLLER")] == [int(profile["id"])]
    assert [row["id"] for row in user_search(query="mueller@EXAMPLE.com")] == [int(profile["id"])]


def test_identity_helpers():
    assert identity_key("  ＳＴＲＡßＥ ") == "strasse"
    assert mixes_scripts("аdmin") and not mixes_scripts("admin") and not mixes_scripts("山田taro")


DECOMPOSED, COMPOSED = "re\u0301mi", "r\u00e9mi"  # "e" + COMBINING ACUTE ACCENT, and "é"


def test_a_decomposed_accent_registers_and_is_one_account_with_the_composed_spelling(api):
    """Found by the black-box pass: the pattern refused "e" + U+0301 while "é" passed, so an accent
    typed on a system that sends decomposed text could not sign up. Both spellings are one name."""
    response = api.register(DECOMPOSED, email="remi@example.com")
    assert response.status_code == 201, response.content
    profile = response.json()
    assert profile["username"] == COMPOSED  # stored in its NFKC form
    for other in (COMPOSED, "RE\u0301MI", "R\u00c9MI"):
        body = assert_error(api.register(other, email="other@example.com"), 409, "conflict")
        assert body["fields"] == {"username": ["This username is already taken."]}
    for spelling in (COMPOSED, DECOMPOSED, "RE\u0301MI"):
        assert api.get(REGISTER, username=spelling).json()["results"][0]["id"] == profile["id"]
        assert api.post(TOKEN, {"username": spelling, "password": PASSWORD}).json()["user_id"] == profile["id"]
        assert [row["id"] for row in user_search(query=spelling)] == [int(profile["id"])]
    assert logical_shard_for_username(DECOMPOSED) == logical_shard_for_username(COMPOSED)


def test_length_limits_apply_to_the_stored_form_of_a_username(api):
    name = "e\u0301" * 150  # 300 characters as sent, 150 once composed
    response = api.register(name, email="long-accent@example.com")
    assert response.status_code == 201, response.content
    assert api.post(TOKEN, {"username": name, "password": PASSWORD}).status_code == 200
    assert api.get(REGISTER, username=name).json()["results"][0]["id"] == response.json()["id"]
    body = assert_error(api.register("e\u0301" * 151, email="longer@example.com"), 400, "invalid")
    assert "username" in body["fields"]


@pytest.mark.parametrize("spelling", [DECOMPOSED, "RE\u0301MI", "R\u00c9MI", "ＲÉＭＩ"])
def test_every_spelling_of_a_username_is_one_login_limit_and_one_dashboard_key(api, settings, spelling):
    """The limiter counts log-ins under the identity the log-in uses; the dashboard's look-up of a
    username's keys (resilience/ratelimit/http.py keys_for) finds that same counter."""
    assert keys_for("auth.token.username", ip=None, username=spelling) == [f"username:{COMPOSED}"]
    assert keys_for("auth.token.username", ip=None, username="ALİCE") == ["username:alice"]  # Turkish İ
    settings.RESILIENCE_RATELIMIT_POLICIES = {"auth.token.username": {"rate": "2/h"}}
    answers = [api.post(TOKEN, {"username": name, "password": "wrong"}).status_code for name in (COMPOSED, spelling)]
    assert answers == [401, 401]
    assert_error(api.post(TOKEN, {"username": DECOMPOSED, "password": "wrong"}), 429)


PASSWORD_COMPOSED, PASSWORD_DECOMPOSED = "Sup3r-jos\u00e9-pass", "Sup3r-jose\u0301-pass"  # one password, two keyboards


@pytest.mark.parametrize(
    ("registered", "typed"), [(PASSWORD_COMPOSED, PASSWORD_DECOMPOSED), (PASSWORD_DECOMPOSED, PASSWORD_COMPOSED)]
)
def test_a_password_typed_in_another_unicode_form_logs_in(api, registered, typed):
    """Found by the black-box pass: registered with "é", the account could not log in from a keyboard
    sending "e" + U+0301 (macOS input can). Passwords are hashed in NFKC (NIST SP 800-63B)."""
    assert api.register("josé", email="jose@example.com", password=registered).status_code == 201
    assert api.login("josé", password=typed)["user_id"]
    response = api.patch("/api/v1/users/me/", {"bio": "x", "current_password": typed})
    assert response.status_code == 200, response.content
    assert api.post(TOKEN, {"username": "josé", "password": "Sup3r-jose-pass"}).status_code == 401


def test_a_password_hashed_as_typed_before_normalisation_still_logs_in(api):
    from django.contrib.auth.hashers import make_password

    profile = api.register("legacy", email="legacy@example.com", password=PASSWORD_COMPOSED).json()
    alias = selectors.group_for_user_id(int(profile["id"]))
    User.objects.using(alias).filter(id=int(profile["id"])).update(password=make_password(PASSWORD_DECOMPOSED))
    assert api.login("legacy", password=PASSWORD_DECOMPOSED)["user_id"]  # as it was set, before this change
