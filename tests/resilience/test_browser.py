"""The dashboards in a real browser: the app runs as a real server process, headless Chromium (Debian's
`chromium` package, driven by Playwright without its own browser download) logs into the admin, opens
every page, force-opens a breaker, resets a rate-limit key, edits a sharded user, and overrides a policy at
runtime (the live server applies it). Screenshots go to artifacts/screenshots/.
"""

import os
import re
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.models import User as StaffUser

from resilience import overrides
from resilience.breaker import State, get_breaker
from resilience.ratelimit import check, peek
from users import selectors, services

from ..processes import web_server
from ..stack import ROOT, free_port, wait_for
from ..staff import caught_up

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
PASSWORD = "pw-ops-0123456789"
TIMEOUT_MS = 30_000  # the machine is small and busy: generous deadlines, never timings


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a loopback URL we built)
        return response.status == 200


@pytest.fixture
def server(real_db):
    """`manage.py runserver` on a free port with this run's databases and Redis DBs; static files are
    served by runserver --insecure (the test settings keep DEBUG off)."""
    port = free_port()
    # Not DJANGO_ALLOW_ASYNC_UNSAFE: the browser fixture sets it for this process only.
    env = {"DJANGO_DEBUG": "true", "PYTHONUNBUFFERED": "1", "DJANGO_ALLOW_ASYNC_UNSAFE": None}
    log_path = ROOT / "artifacts" / "browser-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with web_server(port=port, env=env, log_path=log_path, insecure=True):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def browser(monkeypatch):
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium) "
            "to run the browser tests."
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: pip install -r requirements-dev.txt "
            "(never `playwright install`: the tests use /usr/bin/chromium)."
        )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # Playwright's sync API runs an event loop in this thread; the test's own database calls are plain
    # synchronous code all the same (pytest-django documents this for Playwright).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def test_staff_steers_breakers_limits_and_users_in_a_real_browser(server, browser):
    from playwright.sync_api import expect

    StaffUser.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    alice = services.user_create(username="alice", email="alice@example.com", password="pw-alice-0123456789")
    for i in range(3):
        services.user_create(username=f"user{i}", email=f"user{i}@example.com", password="pw-user-0123456789")
    get_breaker("payments").call(lambda: None)
    check("api.write", "user:42", cost=120)
    assert not check("api.write", "user:42").allowed
    caught_up()

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    # Every page, script, stylesheet and poll must load (browsers ask for /favicon.ico on their own).
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}") if r.status >= 400 and not r.url.endswith("/favicon.ico") else None
        ),
    )

    # log in through the real login form
    page.goto(f"{server}/admin/login/?next=/admin/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server}/admin/")
    expect(page.locator("#bulwark-operations")).to_contain_text("System overview")
    page.screenshot(path=SCREENSHOTS / "admin-index.png", full_page=True)

    # the overview refreshes itself and draws sparklines from the samples it keeps
    page.click("#bulwark-operations >> text=System overview")
    page.wait_for_url(re.compile(r".*/admin/bulwark/overview/$"))
    expect(page.locator("#panel-databases")).to_contain_text("shard_0")
    expect(page.locator("#panel-shard-map")).to_contain_text("logical")
    expect(page.locator("#bw-updated")).to_have_attribute("data-generated-at", re.compile(r"^\d"))
    page.wait_for_function(
        "Number(document.querySelector('svg[data-series=\"queued\"]').getAttribute('data-points')) >= 2",
        timeout=TIMEOUT_MS,
    )
    expect(page.locator(".bw-panel .bw-unavailable")).to_have_count(0)
    page.screenshot(path=SCREENSHOTS / "overview.png", full_page=True)

    # force-open a breaker behind the confirmation page
    page.click("text=Circuit breakers")
    row = page.locator('tr[data-breaker="payments"]')
    expect(row).to_have_attribute("data-state", "CLOSED")
    row.locator('a[data-action="force_open"]').click()
    expect(page.locator("h1")).to_contain_text("Force open circuit breaker payments?")
    page.fill("#id_reason", "browser test")
    page.click("#confirm")
    page.wait_for_url(re.compile(r".*/admin/bulwark/breakers/$"))
    expect(page.locator(".messagelist")).to_contain_text("CLOSED -> FORCED_OPEN")
    expect(row).to_have_attribute("data-state", "FORCED_OPEN")
    expect(row.locator(".bw-state")).to_have_class(re.compile(r"bw-red"))
    assert get_breaker("payments").state == State.FORCED_OPEN
    page.screenshot(path=SCREENSHOTS / "breakers.png", full_page=True)

    # the overview's next refresh lists it among the open circuits
    page.goto(f"{server}/admin/bulwark/overview/")
    expect(page.locator("#panel-breakers")).to_contain_text("FORCED_OPEN")

    # look up a limited user and reset its key
    page.goto(f"{server}/admin/bulwark/ratelimits/")
    expect(page.locator("#top-keys")).to_contain_text("user:42")
    page.fill("#id_user_id", "42")
    page.click("#lookup input[type=submit]")
    limited = page.locator('#lookup-results tr[data-policy="api.write"][data-key="user:42"]')
    expect(limited.locator(".bw-used")).to_have_text(re.compile(r"^\d+ / 120$"))  # a token bucket refills
    page.screenshot(path=SCREENSHOTS / "ratelimits.png", full_page=True)
    limited.locator("a.button").click()
    expect(page.locator("h1")).to_contain_text("Reset rate-limit key user:42 (api.write)?")
    page.click("#confirm")
    expect(page.locator(".messagelist")).to_contain_text("Counters of user:42 under api.write reset.")
    expect(page.locator('#lookup-results tr[data-policy="api.write"][data-key="user:42"] .bw-used')).to_have_text(
        "0 / 120"
    )
    assert peek("api.write", "user:42").remaining == 120
    page.screenshot(path=SCREENSHOTS / "ratelimit-reset.png", full_page=True)

    # find a sharded user and edit it through the service
    page.goto(f"{server}/admin/users/user/")
    page.fill("input[name=q]", "ALICE")
    page.click("#user-search input[type=submit]")
    page.click(f'#search-results a[href="/admin/users/user/{alice["id"]}/change/"]')
    page.fill("#id_display_name", "Alice from the browser")
    page.click("#save")
    expect(page.locator(".messagelist")).to_contain_text("saved (display_name)")
    expect(page.locator("#id_display_name")).to_have_value("Alice from the browser")
    assert selectors.user_get_by_id(user_id=alice["id"])["display_name"] == "Alice from the browser"
    page.screenshot(path=SCREENSHOTS / "user-edit.png", full_page=True)

    assert errors == []


def test_staff_without_the_action_permissions_sees_no_action_buttons_in_a_real_browser(server, browser):
    from playwright.sync_api import expect

    StaffUser.objects.create_user("viewer", "viewer@example.com", PASSWORD, is_staff=True)
    get_breaker("payments").call(lambda: None)
    check("api.write", "user:42", cost=120)
    caught_up()

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server}/admin/login/?next=/admin/")
    page.fill("#id_username", "viewer")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server}/admin/")

    page.goto(f"{server}/admin/bulwark/breakers/")
    expect(page.locator('tr[data-breaker="payments"]')).to_have_attribute("data-state", "CLOSED")
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("a[data-action]")).to_have_count(0)
    page.screenshot(path=SCREENSHOTS / "breakers-read-only.png", full_page=True)

    page.goto(f"{server}/admin/bulwark/ratelimits/?user_id=42")
    expect(page.locator('#lookup-results tr[data-policy="api.write"][data-key="user:42"]')).to_have_count(1)
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("#lookup-results a.button, #top-keys a.button")).to_have_count(0)
    page.screenshot(path=SCREENSHOTS / "ratelimits-read-only.png", full_page=True)

    # Typing the confirmation page's address does not help either.
    refused = page.goto(f"{server}/admin/bulwark/breakers/action/?name=payments&action=force_open")
    assert refused.status == 403
    assert get_breaker("payments").state == State.CLOSED


def login(browser, server: str, username: str, *, next_path: str):
    """A new page (its own cookies) of `username` logged in through the real login form, at `next_path`."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server}/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server}{next_path}")
    return page


def api_read(server: str) -> tuple[int, str | None, str | None]:
    """(status, RateLimit-Policy, Retry-After) of an anonymous GET the live server limits with api.read."""
    try:
        with urllib.request.urlopen(f"{server}/api/v1/users/?username=nobody", timeout=10) as r:  # noqa: S310
            return r.status, r.headers["RateLimit-Policy"], r.headers["Retry-After"]
    except urllib.error.HTTPError as exc:  # 429: the limiter's headers are there
        return exc.code, exc.headers["RateLimit-Policy"], exc.headers["Retry-After"]


def would_deny(server: str, policy: str) -> float:
    """The live server's count of `policy`'s checks a shadow-mode policy would have denied."""
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as r:  # noqa: S310 (loopback: allowed)
        body = r.read().decode()
    wanted = {f'policy="{policy}"', 'decision="would_deny"'}
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("bulwark_ratelimit_decisions_total{")
        and wanted <= set(line.partition("{")[2].partition("}")[0].split(","))
    )


def test_an_operator_overrides_a_policy_in_a_real_browser_and_the_live_server_applies_it(server, browser):
    """Runtime overrides (/admin/bulwark/overrides/): a staff user holding "change_override" lowers
    api.read's rate with a reason and an expiry, sees it listed, and the live server refuses over the new
    rate; switched to shadow it admits and counts "would deny"; cleared, the settings apply again. A
    staff user without the permission sees it read-only and is refused (403) when posting anyway."""
    from django.contrib.auth.models import Permission
    from playwright.sync_api import expect

    operator = StaffUser.objects.create_user("operator", "operator@example.com", PASSWORD, is_staff=True)
    operator.user_permissions.add(
        Permission.objects.get(content_type__app_label="resilience", codename="change_override")
    )
    StaffUser.objects.create_user("viewer", "viewer@example.com", PASSWORD, is_staff=True)
    caught_up()
    served, policy, _ = api_read(server)
    assert (served, policy) == (200, "600;w=60")  # the settings' rate

    page = login(browser, server, "operator", next_path="/admin/bulwark/overrides/")
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.reload()
    expect(page.locator("#active-overrides")).to_contain_text("No override: the settings apply.")
    # Styled: the admin's stylesheet and the dashboards' own are loaded and apply.
    sheets = page.evaluate("[...document.styleSheets].map(s => [s.href, s.cssRules.length])")
    loaded = {href.rsplit("/", 1)[-1]: rules for href, rules in sheets if href}
    assert loaded.get("base.css", 0) > 0 and loaded.get("dashboard.css", 0) > 0, loaded
    assert page.eval_on_selector(".bw-nav", "e => getComputedStyle(e).marginTop") == "0px"  # dashboard.css
    assert page.eval_on_selector("#header", "e => getComputedStyle(e).display") == "flex"  # the admin's base.css

    # api.read down to 3 a minute, for 30 minutes, with a reason
    form = page.locator("#override-form")
    form.locator("#id_kind").select_option("ratelimit")
    form.locator("#id_name").fill("api.read")
    form.locator("#id_rate").fill("3/m")
    form.locator("#id_reason").fill("incident 7: scraper on the listing")
    form.locator("#id_minutes").fill("30")
    form.locator("input[type=submit]").click()
    page.wait_for_url(f"{server}/admin/bulwark/overrides/")
    expect(page.locator(".messagelist")).to_contain_text("Override of ratelimit:api.read stored: rate=3/m, for 30 min.")
    row = page.locator('#active-overrides tr[data-target="ratelimit:api.read"]')
    for text in ("rate=3/m", "incident 7: scraper on the listing", "operator", "(30 min)"):
        expect(row).to_contain_text(text)
    expect(page.locator('#recent-actions tr[data-object="ratelimit:api.read"]')).to_contain_text(
        "Override rate=3/m for 30 min (incident 7: scraper on the listing)"
    )
    page.screenshot(path=SCREENSHOTS / "overrides.png", full_page=True)

    # The live server (another process) applies it within its refresh interval: over 3 a minute, 429.
    wait_for(lambda: api_read(server)[1] == "3;w=60", timeout=10, interval=0.05, message="the server to apply it")
    wait_for(lambda: api_read(server)[0] == 429, timeout=10, interval=0.05, message="a 429 over the new rate")
    status, policy, retry_after = api_read(server)
    assert (status, policy) == (429, "3;w=60") and int(retry_after) >= 1

    # The same policy in shadow mode: nothing refused (no RateLimit headers: no limit applies), counted.
    denied_before = would_deny(server, "api.read")
    form.locator("#id_name").fill("api.read")
    form.locator("#id_rate").fill("3/m")
    form.locator("#id_mode").select_option("shadow")
    form.locator("#id_reason").fill("incident 7: measure before enforcing")
    form.locator("input[type=submit]").click()
    expect(row).to_contain_text("mode=shadow, rate=3/m")
    wait_for(lambda: api_read(server) == (200, None, None), timeout=10, interval=0.05, message="shadow mode")
    assert would_deny(server, "api.read") > denied_before

    # Cleared: the settings apply again, here and in the live server.
    row.locator("input[value=Clear]").click()
    expect(page.locator(".messagelist")).to_contain_text("Override of ratelimit:api.read cleared")
    expect(page.locator("#active-overrides")).to_contain_text("No override: the settings apply.")
    wait_for(lambda: api_read(server)[:2] == (200, "600;w=60"), timeout=10, interval=0.05, message="the settings")
    assert overrides.override_list() == {}
    assert failed == []

    # Without the permission: read-only, and posting anyway (with a valid CSRF token) is refused.
    overrides.override_set(target="ratelimit:api.read", values={"rate": "5/m"}, reason="held", user="ops", seconds=600)
    viewer = login(browser, server, "viewer", next_path="/admin/bulwark/overrides/")
    expect(viewer.locator('#active-overrides tr[data-target="ratelimit:api.read"]')).to_contain_text("rate=5/m")
    expect(viewer.locator("#read-only")).to_be_visible()
    expect(viewer.locator("#override-form, input[value=Clear]")).to_have_count(0)
    viewer.screenshot(path=SCREENSHOTS / "overrides-read-only.png", full_page=True)
    post = """async ([url, fields]) => {
        const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
        const headers = {"X-CSRFToken": token};
        const r = await fetch(url, {method: "POST", headers, body: new URLSearchParams(fields)});
        return r.status;
    }"""
    fields = {"kind": "ratelimit", "name": "api.read", "mode": "off", "reason": "sneaky", "minutes": "60"}
    assert viewer.evaluate(post, ["/admin/bulwark/overrides/", fields]) == 403
    assert viewer.evaluate(post, ["/admin/bulwark/overrides/clear/", {"target": "ratelimit:api.read"}]) == 403
    assert {t: o.values for t, o in overrides.override_list().items()} == {"ratelimit:api.read": {"rate": "5/m"}}


def _replica_reads_since(alias: str, since) -> int:
    """Backends on `alias`'s server whose latest query read users_user and started after `since`."""
    from project.db.replicas import probe_connect

    with probe_connect(alias) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query LIKE %s AND query_start > %s",
            ["%users_user%", since],
        ).fetchone()[0]


def _server_now(alias: str):
    from project.db.replicas import probe_connect

    with probe_connect(alias) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def test_every_dependency_is_listed_from_the_start_and_forcing_replicas_open_moves_reads_in_every_process(
    server, browser
):
    """The breakers page lists the databases, the cache Redis and webhook hosts before any was used;
    forcing the shard's replicas open there sends that group's reads to its primary in this process
    and in a second, granian-served process (seen on the database servers themselves)."""
    from django.conf import settings
    from django.db import connections
    from django_redis import get_redis_connection
    from playwright.sync_api import expect

    from project.db import routing
    from webhooks.models import WebhookSubscriber

    from ..processes import granian_server

    StaffUser.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    WebhookSubscriber.objects.create(url="http://hooks.example.test/bulwark", events=["user.created"])
    group = "shard_0"
    primary, replicas = group, settings.DATABASE_GROUPS[group]["replicas"]
    users = []
    for i in range(200):
        if len(users) == 3:
            break
        name = f"reader{i}"
        if routing_group(name) == group:
            users.append(services.user_create(username=name, email=f"{name}@example.com", password="pw-0123456789ab"))
    caught_up()
    connections.close_all()

    port = free_port()
    log_path = ROOT / "artifacts" / "browser-granian.log"
    with granian_server(port=port, log_path=log_path):
        second = f"http://127.0.0.1:{port}"

        def read_all_uncached():
            get_redis_connection("default").flushdb()  # every read below is a miss: it reads the group
            for user in users:
                assert answers(f"{second}/api/v1/users/{user['id']}/")

        def reads_since(alias, since):
            return _replica_reads_since(alias, since)

        def on_replicas():
            since = {alias: _server_now(alias) for alias in replicas}
            read_all_uncached()
            return sum(reads_since(alias, since[alias]) for alias in replicas) >= 1

        # The measure sees replica reads (once the process's monitor has judged its replicas).
        wait_for(on_replicas, timeout=15, interval=0.2, message="the granian process to read a replica")

        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{server}/admin/login/?next=/admin/bulwark/breakers/")
        page.fill("#id_username", "ops")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(re.compile(r".*/admin/bulwark/breakers/$"))
        expect(page.locator("body")).not_to_contain_text("No circuit breaker")
        databases = page.locator('tbody[data-group="Databases"]')
        for alias in settings.DATABASES:
            expect(databases.locator(f'tr[data-breaker="db:{alias}"]')).to_have_attribute("data-state", "CLOSED")
        expect(page.locator('tbody[data-group="Redis"] tr[data-breaker="redis:cache"]')).to_have_count(1)
        expect(
            page.locator('tbody[data-group="Webhooks"] tr[data-breaker="webhook:hooks.example.test"]')
        ).to_have_count(1)
        page.screenshot(path=SCREENSHOTS / "breakers-every-dependency.png", full_page=True)

        for alias in replicas:
            page.locator(f'tr[data-breaker="db:{alias}"] a[data-action="force_open"]').click()
            page.fill("#id_reason", "replica maintenance")
            page.click("#confirm")
            page.wait_for_url(re.compile(r".*/admin/bulwark/breakers/$"))
            expect(page.locator(f'tr[data-breaker="db:{alias}"]')).to_have_attribute("data-state", "FORCED_OPEN")
        page.screenshot(path=SCREENSHOTS / "breakers-replicas-forced.png", full_page=True)

        # This process: its routing sends the group's reads to the primary within one sync interval.
        wait_for(lambda: routing.read_alias(group) == primary, timeout=10, message="reads on the primary here")
        assert {routing.read_alias(group) for _ in range(8)} == {primary}

        # The granian process: its reads reach the primary and no replica.
        def moved():
            since = {alias: _server_now(alias) for alias in [primary, *replicas]}
            read_all_uncached()
            on_replicas = sum(reads_since(alias, since[alias]) for alias in replicas)
            return on_replicas == 0 and reads_since(primary, since[primary]) >= 1

        wait_for(moved, timeout=15, interval=0.2, message=f"the granian process to read {group} from its primary")
        assert moved()
        connections.close_all()


def routing_group(username: str) -> str:
    from users.sharding.access import group_for_username

    return group_for_username(username)
