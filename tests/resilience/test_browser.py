"""The dashboards in a real browser: the app runs as a real server process, headless Chromium (Debian's
`chromium` package, driven by Playwright without its own browser download) logs into the admin, opens
every page, force-opens a breaker, resets a rate-limit key and edits a sharded user. Screenshots go to
artifacts/screenshots/.
"""

import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
from django.contrib.auth.models import User as StaffUser

from resilience.breaker import State, get_breaker
from resilience.ratelimit import check, peek
from users import selectors, services

from ..stack import ROOT, free_port, wait_for
from .test_admin import caught_up

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
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "DJANGO_DEBUG": "true",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log_path = ROOT / "artifacts" / "browser-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                lambda: proc.poll() is None and answers(f"{base}/health/live"),
                timeout=90,
                interval=0.25,
                message=f"the test server (log: {log_path})",
            )
            yield base
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


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
