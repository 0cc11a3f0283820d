"""One identity for usernames and emails (users/identity.py): the same key for uniqueness, lookups,
login, placement and the admin search; look-alikes from other scripts refused. Real stack."""

import pytest
from django.contrib.auth import get_user_model

from users import selectors
from users.identity import identity_key, mixes_scripts, username_problem
from users.models import User
from users.selectors import user_search

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
