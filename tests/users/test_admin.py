"""The sharded users in the admin: lists per shard, search by id, username or email, edits through the
services."""

import re

from django.conf import settings as django_settings
from django.contrib.admin.models import LogEntry

from users import selectors
from users.models import User
from users.sharding.access import group_for_user_id

from ..factories import UserFactory
from ..staff import caught_up


# --- sharded users ---
def make_users():
    return [UserFactory(username=f"user{i}", display_name=f"User {i}") for i in range(6)]


def test_user_list_per_shard_and_find_by_id_username_and_email(admin_client):
    rows = make_users()
    caught_up()
    by_shard = {}
    for row in rows:
        by_shard.setdefault(group_for_user_id(row["id"]), []).append(row)

    for group in django_settings.SHARD_GROUPS:
        body = admin_client.get("/admin/users/user/", {"shard": group}).content.decode()
        listed = body[body.index('id="shard-users"') :] if 'id="shard-users"' in body else ""
        for row in rows:
            assert (f">{row['username']}<" in listed) == (row in by_shard.get(group, [])), (group, row["username"])
    assert admin_client.get("/admin/users/user/", {"shard": "nope"}).status_code == 404

    target = rows[3]
    for query in (str(target["id"]), "USER3", "User3@Example.com"):
        body = admin_client.get("/admin/users/user/", {"q": query}).content.decode()
        found = body[body.index('id="search-results"') : body.index('id="user-list"')]
        assert f'href="/admin/users/user/{target["id"]}/change/"' in found, query
        assert "user2" not in found
    assert "No user matches" in admin_client.get("/admin/users/user/", {"q": "nobody"}).content.decode()


def test_user_list_is_paginated(admin_client, monkeypatch):
    from users import admin as users_admin

    monkeypatch.setattr(users_admin, "PER_PAGE", 1)
    rows = make_users()
    caught_up()
    group = group_for_user_id(rows[0]["id"])
    on_group = sorted(r["id"] for r in rows if group_for_user_id(r["id"]) == group)
    seen = []
    for page in range(1, len(on_group) + 1):
        body = admin_client.get("/admin/users/user/", {"shard": group, "page": page}).content.decode()
        seen += [int(m) for m in re.findall(r'href="/admin/users/user/(\d+)/change/"', body)]
        assert ("next</a>" in body) == (page < len(on_group))
    assert seen == on_group


def test_user_edit_goes_through_the_service_and_shows_a_taken_email_as_a_form_error(admin_client, staff):
    alice, bob = make_users()[:2]
    caught_up()
    url = f"/admin/users/user/{alice['id']}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200 and alice["email"].encode() in page.content

    response = admin_client.post(
        url,
        {"display_name": "Alice A.", "bio": "hello", "email": "alice@new.example.com", "version": alice["version"]},
        follow=True,
    )

    assert response.status_code == 200 and b"saved" in response.content
    row = selectors.user_get_by_id(user_id=alice["id"])
    assert (row["display_name"], row["bio"], row["email"]) == ("Alice A.", "hello", "alice@new.example.com")
    assert selectors.user_get_by_email(email="alice@new.example.com")["id"] == alice["id"]
    assert selectors.user_get_by_email(email=alice["email"]) is None  # the old claim was released
    entry = LogEntry.objects.get()
    assert (entry.user_id, entry.object_id, entry.get_admin_url()) == (staff.pk, str(alice["id"]), url)
    assert entry.change_message == "Changed display_name, bio, email."

    taken = admin_client.post(url, {"display_name": "x", "bio": "", "email": bob["email"], "version": row["version"]})
    assert taken.status_code == 200 and b"This email is already taken" in taken.content
    assert selectors.user_get_by_id(user_id=alice["id"])["display_name"] == "Alice A."

    stale = admin_client.post(url, {"display_name": "y", "bio": "", "email": row["email"], "version": 1})
    assert b"Someone else changed this user" in stale.content
    assert LogEntry.objects.count() == 1
    assert admin_client.get("/admin/users/user/123/change/").status_code == 404
    assert admin_client.get("/admin/users/user/not-an-id/change/").status_code == 404


def test_the_user_admin_never_queries_the_unsharded_manager(admin_client):
    from django.contrib import admin

    assert list(admin.site._registry[User].get_queryset(None)) == []
