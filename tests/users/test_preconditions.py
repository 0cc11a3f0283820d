"""Conditional requests (RFC 9110 13): If-Match and If-None-Match are evaluated before the method is
performed, on every method of the users API that has a tag (users/etags.py). Found by the black-box
pass: DELETE /users/me/ with a stale If-Match deleted the account, PATCH with `If-None-Match: *` was
applied, POST .../views/ and GET ignored a false If-Match. Through HTTP, on the real stack."""

import pytest
from django.test import Client

from users import selectors
from users.models import User

from .conftest import PASSWORD
from .test_api import ME, assert_error, detail

STALE = '"999.1.0"'


def _views(user_id) -> int:
    return Client().get(detail(user_id)).json()["view_count"]


def test_delete_me_with_a_false_precondition_is_a_412_and_keeps_the_account(user):
    api, profile = user
    tag = api.get(ME)["ETag"]
    password = {"current_password": PASSWORD}
    for headers in (
        {"If-Match": STALE},
        {"If-Match": '"nope"'},
        {"If-Match": f"W/{tag}"},  # If-Match compares strongly
        {"If-None-Match": "*"},  # the account exists
        {"If-None-Match": tag},
    ):
        assert_error(api.delete(ME, password, headers=headers), 412, "precondition_failed")
        assert api.get(ME).status_code == 200, headers
    user_id = int(profile["id"])
    assert User.objects.using(selectors.group_for_user_id(user_id)).filter(id=user_id).exists()
    assert api.delete(ME, password, headers={"If-Match": tag, "If-None-Match": STALE}).status_code == 204
    assert_error(api.get(ME), 401)


def test_patch_me_with_if_none_match_naming_the_profile_is_a_412_and_changes_nothing(user):
    api, _ = user
    before = api.get(ME)
    for if_none_match in ("*", before["ETag"], f'"0.0.0", W/{before["ETag"]}'):
        response = api.patch(ME, {"bio": "applied anyway"}, headers={"If-None-Match": if_none_match})
        assert_error(response, 412, "precondition_failed")
    after = api.get(ME)
    assert after.json()["bio"] == "" and after.json()["version"] == before.json()["version"]
    assert api.patch(ME, {"bio": "now"}, headers={"If-None-Match": STALE}).status_code == 200


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "drf"])
def test_a_false_if_match_on_get_is_a_412_before_if_none_match(user, settings, fast):
    settings.USERS_FAST_READ = fast
    api, profile = user
    private = api.get(ME)["ETag"]
    public = Client().get(detail(profile["id"]))["ETag"]
    for path, get, tag in ((ME, api.get, private), (detail(profile["id"]), Client().get, public)):
        for false in ('"nope"', STALE, f"W/{tag}"):
            assert_error(get(path, headers={"If-Match": false}), 412, "precondition_failed")
        # If-Match first (RFC 9110 13.2.2): a false one is a 412 even where If-None-Match would be a 304.
        assert_error(get(path, headers={"If-Match": STALE, "If-None-Match": tag}), 412, "precondition_failed")
        for true in (tag, "*"):
            assert get(path, headers={"If-Match": true}).status_code == 200
        assert get(path, headers={"If-Match": tag, "If-None-Match": tag}).status_code == 304


def test_a_false_precondition_on_a_view_is_a_412_and_counts_nothing(user):
    api, profile = user
    views = detail(profile["id"]) + "views/"
    public = Client().get(detail(profile["id"]))["ETag"]
    for headers in ({"If-Match": '"nope"'}, {"If-Match": STALE}, {"If-None-Match": "*"}, {"If-None-Match": public}):
        assert_error(Client().post(views, headers=headers), 412, "precondition_failed")
    assert _views(profile["id"]) == 0
    # If-Match names the profile's version, from either tag: views counted meanwhile do not refuse it.
    for true in (public, public, api.get(ME)["ETag"], "*"):
        assert Client().post(views, headers={"If-Match": true}).status_code == 202
    assert _views(profile["id"]) == 4


def test_an_idempotent_view_replays_its_answer_and_a_412_is_judged_anew(user):
    """The preconditions are evaluated inside the idempotent call: a retry of a counted view replays
    its 202 though an edit made its tag stale since; a 412 is not stored, so a retry of the same key
    with a fresh tag is counted."""
    api, profile = user
    views = detail(profile["id"]) + "views/"
    tag = Client().get(detail(profile["id"]))["ETag"]
    anonymous = Client(REMOTE_ADDR="10.7.0.1")
    first = anonymous.post(views, headers={"If-Match": tag, "Idempotency-Key": "k1"})
    assert first.status_code == 202
    api.patch(ME, {"bio": "edited"})  # the tag the view was sent with is stale now
    replayed = anonymous.post(views, headers={"If-Match": tag, "Idempotency-Key": "k1"})
    assert (replayed.status_code, replayed["Idempotent-Replayed"]) == (202, "true")
    assert_error(anonymous.post(views, headers={"If-Match": tag, "Idempotency-Key": "k2"}), 412, "precondition_failed")
    fresh = Client().get(detail(profile["id"]))["ETag"]
    retried = anonymous.post(views, headers={"If-Match": fresh, "Idempotency-Key": "k2"})
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried
    assert _views(profile["id"]) == 2
