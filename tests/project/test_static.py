"""Production settings serve their own static files: the admin, the dashboards' script and Swagger UI
load styled and working from granian (as deployed behind deploy/nginx.conf), every stylesheet and
script answering 200."""

import os
import secrets
import subprocess
import sys

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User as StaffUser

from ..processes import granian, running
from ..resilience.test_browser import TIMEOUT_MS, browser  # noqa: F401 - `browser` is a fixture
from ..stack import ROOT, free_port

PASSWORD = "pw-static-0123456789"


def production_env(static_root) -> dict:
    """Production settings on this run's databases and Redis DBs, over plain http on loopback."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "localhost 127.0.0.1",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_SECURE_HSTS_SECONDS": "0",
        "DJANGO_STATIC_ROOT": str(static_root),
        # What project.settings.test sets: the test databases, Redis DBs and shard layout.
        "DB_NAME_PREFIX": "bulwark_test",
        "REDIS_DB": "1",
        "SHARD_COUNT": "3",
        "SHARDING_INITIAL_MAP": "0-511:shard_0 512-1023:shard_1",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return env


@pytest.fixture
def production_server(real_db, tmp_path):
    """granian on production settings, after the deploy step `collectstatic` into a temporary STATIC_ROOT."""
    env = production_env(tmp_path / "static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    port = free_port()
    server = granian(port, tmp_path / "granian.log", env=env, workers=1, threads=2, log_level="warning")
    # localhost, not 127.0.0.1: production cookies are Secure, which Chromium accepts over plain http
    # only from localhost.
    base = f"http://localhost:{port}"
    with running(server, serving=f"{base}/health/live"):
        yield base


def test_production_settings_serve_every_stylesheet_and_script_of_admin_dashboards_and_swagger(
    production_server,
    browser,  # noqa: F811 - the fixture imported above
):
    # Hashed with production's hasher (the test settings' MD5 is not one production accepts).
    StaffUser.objects.create(
        username="static-ops",
        password=PBKDF2PasswordHasher().encode(PASSWORD, PBKDF2PasswordHasher().salt()),
        is_staff=True,
        is_superuser=True,
    )
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    assets: dict[str, int] = {}
    page.on(
        "response",
        lambda r: assets.__setitem__(r.url, r.status) if r.request.resource_type in ("stylesheet", "script") else None,
    )

    page.goto(f"{production_server}/admin/login/?next=/admin/")
    # The admin's own stylesheet applied: its login form is laid out, not a bare HTML form.
    assert page.eval_on_selector("#header", "e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
    page.fill("#id_username", "static-ops")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{production_server}/admin/")
    page.goto(f"{production_server}/admin/bulwark/overview/")  # the dashboards' script and stylesheet
    page.wait_for_selector("#bw-updated[data-generated-at]")
    page.goto(f"{production_server}/api/docs/")
    page.wait_for_selector(".swagger-ui .info .title")  # rendered by swagger-ui's script from the schema

    static = {url: status for url, status in assets.items() if "/static/" in url}
    assert any("bulwark/dashboard." in url and url.endswith(".js") for url in static), sorted(static)
    assert any("admin/css/base." in url for url in static), sorted(static)
    assert any("swagger-ui-dist/swagger-ui-bundle." in url for url in static), sorted(static)
    assert {url: status for url, status in assets.items() if status != 200} == {}
