"""The staff dashboards in the admin: every page and action through Django's test client, against the
real databases and Redis."""

import json
import re

from django.conf import settings as django_settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.contrib.auth.models import User as StaffUser
from django.test import Client

from ops.dashboard import history, panels
from resilience.breaker import State, all_breakers, get_breaker
from resilience.ratelimit import check, peek
from users import services

from ..stack import wait_for
from ..staff import caught_up
from .conftest import failing_breaker

PAGES = [
    "/admin/bulwark/overview/",
    "/admin/bulwark/overview.json",
    "/admin/bulwark/breakers/",
    "/admin/bulwark/breakers/action/?name=payments&action=force_open",
    "/admin/bulwark/ratelimits/",
    "/admin/bulwark/ratelimits/reset/?policy=auth.token&key=ip:10.0.0.1",
    "/admin/users/user/",
]


# --- access ---
def test_every_page_redirects_anonymous_and_non_staff_users_to_the_login(real_db):
    member = StaffUser.objects.create_user("member", "member@example.com", "pw-member-0123456789")
    signed_in = Client()
    signed_in.force_login(member)
    caught_up()
    for client in (Client(), signed_in):
        for page in PAGES:
            response = client.get(page)
            assert response.status_code == 302, page
            assert response["Location"].startswith("/admin/login/?next="), page


def test_admin_index_links_every_dashboard(admin_client):
    body = admin_client.get("/admin/").content.decode()
    for url in (
        "/admin/bulwark/overview/",
        "/admin/bulwark/breakers/",
        "/admin/bulwark/ratelimits/",
        "/admin/users/user/",
        "/admin/webhooks/webhooksubscriber/",
    ):
        assert f'href="{url}"' in body, url


# --- overview ---
def test_overview_shows_databases_shards_redis_celery_write_behind_breakers_and_limits(admin_client, daily):
    services.user_create(username="alice", email="alice@example.com", password="pw-alice-0123456789")
    failing_breaker("payments")
    for _ in range(6):
        check(daily, "ip:10.0.0.1|username:alice")
    caught_up()

    response = admin_client.get("/admin/bulwark/overview/")

    assert response.status_code == 200
    body = response.content.decode()
    for text in (
        "Databases",
        "Shard map",
        "Redis",
        "Celery",
        "Write-behind",
        "Open circuits",
        "Top rate-limited keys",
        "Webhook subscribers",
        'data-series="replica_lag"',
    ):
        assert text in body, text
    for group in django_settings.SHARD_GROUPS:
        assert group in body
    for spec in django_settings.DATABASE_GROUPS.values():
        for alias in spec["replicas"]:
            assert alias in body
    assert "payments" in body and "bw-red" in body  # the open breaker, in red
    assert "ip:10.0.0.1|username:alice" in body
    assert "unavailable:" not in body


def test_overview_json_reports_every_panel_and_keeps_a_short_history(admin_client):
    services.user_create(username="bob", email="bob@example.com", password="pw-bob-0123456789")
    caught_up()

    data = admin_client.get("/admin/bulwark/overview.json").json()

    assert set(data["panels"]) == set(panels.PANELS)
    assert all(panel["ok"] for panel in data["panels"].values()), data["panels"]
    groups = {g["group"]: g for g in data["panels"]["databases"]["data"]["groups"]}
    assert sum(groups[g]["users"] for g in django_settings.SHARD_GROUPS) == 1
    assert all(g["primary"]["reachable"] for g in groups.values())
    shard_map = data["panels"]["shard_map"]["data"]
    assert sum(g["logical_shards"] for g in shard_map["groups"]) == django_settings.SHARDING_LOGICAL_SHARDS
    assert {"hit_ratio", "ops_per_sec", "used_memory_human"} <= set(data["panels"]["redis_state"]["data"])
    assert set(data["panels"]["celery"]["data"]["queues"]) == {"bulwark", "webhooks"}
    assert "pending_views_users" in data["panels"]["write_behind"]["data"]
    assert 'id="panel-databases"' in data["html"]
    assert len(data["history"]) == 1 and data["history"][0]["open_breakers"] == 0

    # One sample per SAMPLE_EVERY seconds, whoever polls: a second poll soon after adds none...
    assert len(admin_client.get("/admin/bulwark/overview.json").json()["history"]) <= 2
    # ...and later polls do, up to the cap.
    wait_for(
        lambda: len(admin_client.get("/admin/bulwark/overview.json").json()["history"]) >= 3,
        timeout=30,
        interval=0.5,
        message="more samples",
    )
    for _ in range(history.HISTORY_LENGTH + 5):
        history.get_redis_connection("state").delete(history.LOCK_KEY)
        history.record({"t": 0})
    assert len(history.read()) == history.HISTORY_LENGTH


def test_overview_degrades_panel_by_panel_when_the_cache_redis_is_unreachable(admin_client, settings):
    caches = json.loads(json.dumps(settings.CACHES))
    caches["default"]["LOCATION"] = "redis://127.0.0.1:1/0"  # nothing listens there: connection refused
    settings.CACHES = caches

    page = admin_client.get("/admin/bulwark/overview/")
    data = admin_client.get("/admin/bulwark/overview.json").json()

    assert page.status_code == 200
    assert "unavailable: ConnectionError" in page.content.decode()
    assert data["panels"]["redis_cache"]["ok"] is False
    assert data["panels"]["redis_cache"]["error"].startswith("ConnectionError")
    assert data["panels"]["redis_state"]["ok"] and data["panels"]["databases"]["ok"]


def test_a_failing_panel_becomes_unavailable_with_its_error():
    def broken():
        raise TimeoutError("Timeout reading from 127.0.0.1:56380")

    assert panels.safe(broken) == {"ok": False, "error": "TimeoutError: Timeout reading from 127.0.0.1:56380"}
    assert panels.safe(lambda: 3) == {"ok": True, "data": 3}


# --- circuit breakers ---
def test_breakers_page_shows_each_breaker_with_state_counts_last_error_and_transitions(admin_client):
    failing_breaker("payments")
    get_breaker("search").call(lambda: None)

    body = admin_client.get("/admin/bulwark/breakers/").content.decode()

    assert re.search(r'data-breaker="payments" data-state="OPEN"', body)
    assert re.search(r'data-breaker="search" data-state="CLOSED"', body)
    assert "ConnectionError: refused by the test" in body
    assert "CLOSED → OPEN (5 consecutive failures)" in body
    assert "bw-red" in body and "bw-green" in body


def test_an_action_on_a_breaker_nobody_uses_is_a_404_and_creates_no_phantom(admin_client):
    """A typo must not look like a success while the real breaker stays as it was."""
    url = "/admin/bulwark/breakers/action/"
    assert admin_client.get(url, {"name": "paymnets", "action": "force_open"}).status_code == 404
    response = admin_client.post(url, {"name": "paymnets", "action": "force_open", "reason": "typo"})
    assert response.status_code == 404 and b"There is no circuit breaker" in response.content
    assert "paymnets" not in all_breakers()
    assert not LogEntry.objects.exists()


def test_force_open_force_close_and_reset_are_confirmed_posted_and_logged(admin_client, staff):
    breaker = get_breaker("payments")
    breaker.call(lambda: None)
    url = "/admin/bulwark/breakers/action/"

    confirm = admin_client.get(url, {"name": "payments", "action": "force_open"})
    assert confirm.status_code == 200 and b"Yes, force open" in confirm.content
    assert breaker.state == State.CLOSED  # the confirmation page changes nothing

    refused = Client(enforce_csrf_checks=True)
    refused.force_login(staff)
    caught_up()
    assert refused.post(url, {"name": "payments", "action": "force_open"}).status_code == 403
    assert breaker.state == State.CLOSED

    response = admin_client.post(
        url, {"name": "payments", "action": "force_open", "reason": "maintenance"}, follow=True
    )
    assert response.status_code == 200
    assert breaker.state == State.FORCED_OPEN
    assert b'data-breaker="payments" data-state="FORCED_OPEN"' in response.content
    assert b"Circuit breaker payments: CLOSED -&gt; FORCED_OPEN." in response.content
    assert breaker.snapshot().transitions[0]["reason"] == "maintenance"

    admin_client.post(url, {"name": "payments", "action": "force_close"})
    assert breaker.state == State.FORCED_CLOSED
    admin_client.post(url, {"name": "payments", "action": "reset"})
    assert breaker.state == State.CLOSED

    entries = list(LogEntry.objects.order_by("id"))
    assert [e.object_id for e in entries] == ["payments"] * 3
    assert all(
        e.user_id == staff.pk and e.content_type.app_label == "resilience" and e.content_type.model == "circuitbreaker"
        for e in entries
    )
    assert [e.change_message for e in entries] == [
        "Force open: CLOSED -> FORCED_OPEN (maintenance)",
        "Force close: FORCED_OPEN -> FORCED_CLOSED (force close by ops in the admin)",
        "Reset: FORCED_CLOSED -> CLOSED (reset by ops in the admin)",
    ]
    assert admin_client.get(url, {"name": "payments", "action": "explode"}).status_code == 400


# --- rate limits ---
def test_rate_limits_page_lists_policies_429_counts_and_most_limited_keys(admin_client, daily):
    key = "ip:10.0.0.1|username:alice"
    decisions = [check(daily, key) for _ in range(7)]
    assert [d.allowed for d in decisions].count(False) == 2

    body = admin_client.get("/admin/bulwark/ratelimits/").content.decode()

    for name in ("auth.token", "users.register", "api.read", "api.write", "users.views", "admin.login", daily):
        assert f"<b>{name}</b>" in body
    assert "5 per 86400 s" in body and "ip+username" in body and "fail closed" in body
    row = body[body.index(f"<b>{daily}</b>") :]
    per_minute = json.loads(re.search(r'data-values="([^"]*)"', row).group(1).replace("&quot;", '"'))
    assert len(per_minute) == 15 and sum(per_minute) == 2  # 429s per minute, oldest first
    top = body[body.index('id="top-keys"') :]
    assert key in top and "5 / 5" in top and "limited" in top


def test_lookup_finds_the_keys_of_an_ip_a_user_and_a_username(admin_client):
    check("api.write", "user:123", cost=100)
    check("auth.token", "ip:10.0.0.1|username:alice")
    check("users.register", "ip:2001:db8::/64")

    by_user = admin_client.get("/admin/bulwark/ratelimits/", {"user_id": 123}).content.decode()
    results = by_user[by_user.index('id="lookup-results"') :]
    used = re.search(r'data-policy="api.write" data-key="user:123">.*?class="bw-used">(\d+) / 120<', results, re.S)
    assert used and 0 < int(used.group(1)) <= 100  # a token bucket: it refills while the test runs
    assert 'data-policy="api.read" data-key="user:123"' in results

    by_ip = admin_client.get("/admin/bulwark/ratelimits/", {"ip": "10.0.0.1", "username": "Alice"}).content.decode()
    assert 'data-policy="auth.token" data-key="ip:10.0.0.1|username:alice"' in by_ip
    assert 'data-policy="users.register" data-key="ip:10.0.0.1"' in by_ip

    v6 = admin_client.get("/admin/bulwark/ratelimits/", {"ip": "2001:db8::7"}).content.decode()
    assert 'data-policy="users.register" data-key="ip:2001:db8::/64"' in v6

    raw = admin_client.get("/admin/bulwark/ratelimits/", {"key": "user:123"}).content.decode()
    assert 'data-policy="api.write" data-key="user:123"' in raw


def test_reset_key_is_confirmed_posted_and_logged(admin_client, staff, daily):
    key = "ip:10.0.0.1|username:alice"
    for _ in range(6):
        check(daily, key)
    assert not peek(daily, key).allowed
    url = "/admin/bulwark/ratelimits/reset/"

    confirm = admin_client.get(url, {"policy": daily, "key": key})
    assert confirm.status_code == 200 and b"Yes, reset" in confirm.content and b"5 of 5 used" in confirm.content
    assert not peek(daily, key).allowed

    response = admin_client.post(url, {"policy": daily, "key": key}, follow=True)

    assert response.status_code == 200
    assert peek(daily, key).remaining == 5
    assert b"Counters of ip:10.0.0.1|username:alice under test.daily reset." in response.content
    entry = LogEntry.objects.get()
    assert (entry.user_id, entry.object_id, entry.content_type.model) == (staff.pk, f"{daily}|{key}", "ratelimitkey")
    assert entry.change_message == "Reset rate-limit key (had counters)"
    assert admin_client.post(url, {"policy": "no.such.policy", "key": key}).status_code == 400


# --- permissions of the actions ---
BREAKER_ACTION_URL = "/admin/bulwark/breakers/action/"
RESET_KEY_URL = "/admin/bulwark/ratelimits/reset/"


def staff_client(username: str, *codenames: str) -> Client:
    """A logged-in client of a staff user (not a superuser) holding only the resilience permissions named."""
    user = StaffUser.objects.create_user(username, f"{username}@example.com", "pw-staff-0123456789", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="resilience", codename__in=codenames))
    assert user.user_permissions.count() == len(codenames)
    client = Client()
    client.force_login(user)
    caught_up()  # the admin reads the session's user and its permissions from a replica
    return client


def recent_actions(body: str) -> list[tuple[str, str, str]]:
    """(user, object id, change message) of each row of the page's "Recent actions" table."""
    section = body[body.index('id="recent-actions"') :]
    return re.findall(r'<tr data-user="([^"]*)" data-object="([^"]*)">.*?class="bw-change">([^<]*)</td>', section, re.S)


def test_staff_without_breaker_permissions_sees_the_page_read_only_and_every_action_is_refused(real_db):
    breaker = get_breaker("payments")
    breaker.call(lambda: None)
    viewer = staff_client("viewer")

    page = viewer.get("/admin/bulwark/breakers/")

    assert page.status_code == 200
    body = page.content.decode()
    assert 'data-breaker="payments" data-state="CLOSED"' in body
    assert "data-action=" not in body and 'id="read-only"' in body
    for action in ("force_open", "force_close", "reset"):
        assert viewer.get(BREAKER_ACTION_URL, {"name": "payments", "action": action}).status_code == 403, action
        posted = viewer.post(BREAKER_ACTION_URL, {"name": "payments", "action": action, "reason": "x"})
        assert posted.status_code == 403, action
    assert breaker.state == State.CLOSED
    assert not LogEntry.objects.exists()


def test_each_breaker_action_needs_its_own_permission_and_the_page_shows_who_took_it(real_db):
    breaker = get_breaker("payments")
    breaker.call(lambda: None)
    forcer = staff_client("forcer", "change_breaker")

    body = forcer.get("/admin/bulwark/breakers/").content.decode()
    assert 'data-action="force_open"' in body and 'data-action="force_close"' in body
    assert 'data-action="reset"' not in body and 'id="read-only"' not in body

    response = forcer.post(BREAKER_ACTION_URL, {"name": "payments", "action": "force_open", "reason": "drill"})
    assert response.status_code == 302
    assert breaker.state == State.FORCED_OPEN
    assert forcer.post(BREAKER_ACTION_URL, {"name": "payments", "action": "reset"}).status_code == 403
    assert breaker.state == State.FORCED_OPEN

    resetter = staff_client("resetter", "reset_breaker")
    assert resetter.post(BREAKER_ACTION_URL, {"name": "payments", "action": "force_close"}).status_code == 403
    assert resetter.post(BREAKER_ACTION_URL, {"name": "payments", "action": "reset"}).status_code == 302
    assert breaker.state == State.CLOSED

    entries = list(LogEntry.objects.order_by("id").values_list("user__username", "object_id", "change_message"))
    assert entries == [
        ("forcer", "payments", "Force open: CLOSED -> FORCED_OPEN (drill)"),
        ("resetter", "payments", "Reset: FORCED_OPEN -> CLOSED (reset by resetter in the admin)"),
    ]
    page = forcer.get("/admin/bulwark/breakers/").content.decode()
    assert recent_actions(page) == [
        ("resetter", "payments", "Reset: FORCED_OPEN -&gt; CLOSED (reset by resetter in the admin)"),
        ("forcer", "payments", "Force open: CLOSED -&gt; FORCED_OPEN (drill)"),
    ]


def test_resetting_a_rate_limit_key_needs_its_permission_and_the_page_shows_who_did_it(real_db, daily):
    key = "ip:10.0.0.1|username:alice"
    for _ in range(6):
        check(daily, key)
    viewer = staff_client("viewer")

    page = viewer.get("/admin/bulwark/ratelimits/", {"key": key}).content.decode()

    results = page[page.index('id="lookup-results"') :]
    assert f'data-policy="{daily}" data-key="{key}"' in results
    assert RESET_KEY_URL not in page and 'id="read-only"' in page
    assert viewer.get(RESET_KEY_URL, {"policy": daily, "key": key}).status_code == 403
    assert viewer.post(RESET_KEY_URL, {"policy": daily, "key": key}).status_code == 403
    assert not peek(daily, key).allowed
    assert not LogEntry.objects.exists()

    resetter = staff_client("resetter", "reset_ratelimit")
    page = resetter.get("/admin/bulwark/ratelimits/", {"key": key}).content.decode()
    assert RESET_KEY_URL in page and 'id="read-only"' not in page
    assert resetter.post(RESET_KEY_URL, {"policy": daily, "key": key}).status_code == 302
    assert peek(daily, key).remaining == 5
    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.object_id) == ("resetter", f"{daily}|{key}")
    assert recent_actions(viewer.get("/admin/bulwark/ratelimits/").content.decode()) == [
        ("resetter", f"{daily}|{key}", "Reset rate-limit key (had counters)")
    ]
