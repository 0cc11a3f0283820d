"""Runtime overrides over the real stack: made in the admin (the Django test client, a real staff
session), stored in the real state Redis, read by a real server process, written to the admin log."""

import time
import urllib.error
import urllib.request

import pytest
from django.contrib.admin.models import LogEntry

from resilience import overrides
from resilience.breaker import get_breaker, options_for
from resilience.ratelimit import all_policies, get_policy
from tests.processes import web_server
from tests.stack import free_port, stack, wait_for

from .test_dashboard import staff_client

URL = "/admin/bulwark/overrides/"
CLEAR_URL = "/admin/bulwark/overrides/clear/"


def form(**fields) -> dict:
    return {"kind": "ratelimit", "name": "api.read", "reason": "incident 42", "minutes": "60", **fields}


def served_policy(port: int) -> str:
    """The RateLimit-Policy header a server process answers GET /api/v1/users/?username= with (api.read)."""
    url = f"http://127.0.0.1:{port}/api/v1/users/?username=nobody"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (a local test server)
            return response.headers["RateLimit-Policy"]
    except urllib.error.HTTPError as exc:  # 404: nobody is not a user; the limiter's headers are there
        return exc.headers["RateLimit-Policy"]


def test_an_override_made_in_the_admin_reaches_another_server_process_within_2_s_then_expires(
    admin_client, staff, tmp_path
):
    port = free_port()
    with web_server(port=port, log_path=tmp_path / "server.log"):
        assert served_policy(port) == "600;w=60"  # the server has read the (empty) overrides once

        response = admin_client.post(URL, form(rate="7/m"))
        assert response.status_code == 302
        stored_at = time.monotonic()
        wait_for(lambda: served_policy(port) == "7;w=60", timeout=2.0, interval=0.02, message="the server to apply it")
        assert time.monotonic() - stored_at <= 2.0
        assert get_policy("api.read").limit == 7  # this process too, at once

        # An override expires on its own; the settings apply again.
        overrides.override_set(
            target="ratelimit:api.read", values={"rate": "9/m"}, reason="short", user="ops", seconds=1.5
        )
        wait_for(lambda: served_policy(port) == "9;w=60", timeout=3, interval=0.02, message="the short override")
        wait_for(lambda: served_policy(port) == "600;w=60", timeout=5, interval=0.05, message="it to expire")
    assert overrides.override_list() == {}

    entry = LogEntry.objects.get(content_type__model="runtimeoverride")
    assert (entry.user_id, entry.object_id) == (staff.pk, "ratelimit:api.read")
    assert entry.change_message == "Override rate=7/m for 60 min (incident 42)"


def test_shadow_and_off_from_the_admin_and_clearing_restores_the_settings(admin_client):
    assert admin_client.post(URL, form(name="api.concurrent", limit="3", mode="shadow")).status_code == 302
    policy = get_policy("api.concurrent")
    assert (policy.limit, policy.mode) == (3, "shadow")
    page = admin_client.get("/admin/bulwark/ratelimits/").content.decode()
    assert 'data-policy="api.concurrent" data-mode="shadow"' in page and "(runtime override)" in page

    assert admin_client.post(URL, form(mode="off")).status_code == 302
    assert get_policy("api.read").mode == "off"
    listed = admin_client.get(URL).content.decode()
    assert 'data-target="ratelimit:api.read"' in listed and 'data-target="ratelimit:api.concurrent"' in listed

    assert admin_client.post(CLEAR_URL, {"target": "ratelimit:api.read"}).status_code == 302
    assert get_policy("api.read").mode == "enforce"
    assert set(overrides.override_list()) == {"ratelimit:api.concurrent"}
    messages = list(LogEntry.objects.order_by("id").values_list("object_id", "change_message"))
    assert messages[-1] == ("ratelimit:api.read", "Cleared the override")


def test_a_breaker_threshold_override_applies_and_is_logged(admin_client):
    get_breaker("payments").call(lambda: None)  # a known breaker
    response = admin_client.post(
        URL, form(kind="breaker", name="payments", failure_rate_threshold="10", open_seconds="2.5")
    )
    assert response.status_code == 302
    options = options_for("payments")
    assert (options.failure_rate_threshold, options.open_seconds) == (10.0, 2.5)
    assert LogEntry.objects.get().object_id == "breaker:payments"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"rate": "lots"}, "is not of the form"),
        ({"rate": "0/m"}, "the count must be 1 to"),  # would refuse every request for good
        ({"rate": "99999999999999999999/s"}, "the count must be 1 to"),  # overflowed the headers to -2**63
        ({"rate": "5/99999999d"}, "at most a year"),
        ({"limit": "5"}, "is a rate policy"),
        ({"name": "api.concurrent", "rate": "5/m"}, "is a concurrency policy"),
        ({"name": "no.such.policy", "rate": "5/m"}, "There is no rate-limit policy"),
        ({"mode": "bogus"}, "Select a valid choice"),
        ({}, "Change at least one value"),
        ({"rate": "5/m", "minutes": "0"}, "greater than or equal to 1"),
        ({"rate": "5/m", "minutes": "999999999"}, "less than or equal to"),
        ({"rate": "5/m", "reason": ""}, "This field is required"),
        ({"rate": "5/m", "open_seconds": "3"}, "do not apply to a ratelimit override"),
        ({"kind": "breaker", "name": "payments", "minimum_calls": "50"}, "minimum_calls must be between"),
        ({"kind": "breaker", "name": "payments", "failure_rate_threshold": "nan"}, "Enter a number"),
        ({"kind": "breaker", "name": "no-such-breaker", "open_seconds": "1"}, "There is no circuit breaker"),
        ({"kind": "nonsense", "rate": "5/m"}, "Select a valid choice"),
    ],
)
def test_invalid_overrides_are_refused_with_a_form_error_and_nothing_is_stored(admin_client, fields, error):
    get_breaker("payments").call(lambda: None)
    response = admin_client.post(URL, form(**fields))
    assert response.status_code == 400
    assert error in response.content.decode()
    assert overrides.override_list() == {}
    assert not LogEntry.objects.exists()


def test_staff_without_the_permission_read_the_page_but_cannot_override(real_db):
    viewer = staff_client("viewer")
    page = viewer.get(URL)
    assert page.status_code == 200 and 'id="read-only"' in page.content.decode()
    assert viewer.post(URL, form(rate="1/m")).status_code == 403
    assert viewer.post(CLEAR_URL, {"target": "ratelimit:api.read"}).status_code == 403
    assert overrides.override_list() == {}

    allowed = staff_client("operator", "change_override")
    assert allowed.post(URL, form(rate="1/m")).status_code == 302


def test_the_hot_path_reads_overrides_from_a_snapshot_not_from_redis_per_request(state_redis_db, settings):
    """Policies are looked up several times per request: with a fresh snapshot, no Redis command runs."""
    overrides.override_set(target="ratelimit:api.read", values={"rate": "5/m"}, reason="r", user="u", seconds=60)
    settings.RESILIENCE_OVERRIDES_REFRESH_SECONDS = 60.0
    overrides.forget()
    assert get_policy("api.read").limit == 5
    before = state_redis_db.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    for _ in range(1000):
        all_policies()
        options_for("payments")
    after = state_redis_db.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    assert after == before


def test_state_redis_down_processes_keep_the_overrides_they_read_and_the_admin_stores_nothing(
    admin_client, settings, state_down
):
    state_down()  # the fixture stopped it; start it to make the override first
    overrides.override_set(target="ratelimit:api.read", values={"rate": "5/m"}, reason="r", user="u", seconds=600)
    overrides.forget()
    assert get_policy("api.read").limit == 5
    settings.RESILIENCE_OVERRIDES_REFRESH_SECONDS = 0.01
    settings.RESILIENCE_STATE_RETRY_SECONDS = 0.01
    stack("stop", "state")
    time.sleep(0.05)  # the snapshot is stale: the next lookup tries Redis, fails, keeps what it had
    assert get_policy("api.read").limit == 5
    assert overrides.outage.down

    response = admin_client.post(URL, form(rate="9/m"))
    assert response.status_code == 503
    assert "Not stored: unavailable" in response.content.decode()
    assert not LogEntry.objects.exists()
