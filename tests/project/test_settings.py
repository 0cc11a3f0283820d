"""Production settings refuse what would be unsafe, and `check --deploy` is clean."""

import json
import os
import re
import subprocess
import sys

from ..stack import ROOT


def under_production(argv: list[str], env: dict, variables: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run `argv` from the project root under production settings: `env` with `variables` laid over it
    (None: unset)."""
    env = {**env, "DJANGO_SETTINGS_MODULE": "project.settings.production"}
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def setup_production(**variables) -> subprocess.CompletedProcess:
    """`django.setup()` in a new process under production settings with `variables` set (None: unset)
    over this process's environment."""
    return under_production([sys.executable, "-c", "import django; django.setup()"], os.environ, variables, 60)


def test_production_settings_refuse_to_start_without_a_secret_key():
    result = setup_production(DJANGO_SECRET_KEY=None)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_production_settings_refuse_debug():
    result = setup_production(DJANGO_DEBUG="true", DJANGO_SECRET_KEY="x" * 60)
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be off" in result.stderr


def test_production_settings_refuse_the_placeholder_secret_key_of_env_example():
    example = (ROOT / ".env.example").read_text()
    placeholder = re.search(r"^DJANGO_SECRET_KEY=(.*)$", example, re.M).group(1).strip()
    assert len(placeholder) >= 50  # long enough to pass the length rule: only the comparison stops it
    result = setup_production(DJANGO_SECRET_KEY=placeholder, DJANGO_DEBUG=None)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is the placeholder of .env.example" in result.stderr


def check_deploy(**variables) -> subprocess.CompletedProcess:
    """`manage.py check --deploy --fail-level WARNING` under production settings with `variables` set
    (None: unset) over this process's environment."""
    env = dict(
        os.environ,
        DJANGO_ALLOWED_HOSTS="api.example.com",
        DJANGO_SECRET_KEY="Zq8" + "x7Lp2vN9" * 7,  # long and varied enough for security.W009
    )
    env.pop("DJANGO_DEBUG", None)
    argv = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    return under_production(argv, env, variables, 120)


def test_check_deploy_is_clean_under_production_settings():
    result = check_deploy(RESILIENCE_TRUSTED_PROXIES="10.0.0.0/8")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_warns_when_production_trusts_a_proxy_header_without_trusted_proxies():
    result = check_deploy(RESILIENCE_TRUSTED_PROXIES=None)
    assert result.returncode != 0
    assert "(resilience.W030)" in result.stderr
    assert "SECURE_PROXY_SSL_HEADER" in result.stderr


# Run under production settings: one line logged inside a request (Django's "Not Found" warning, written
# by django.request once the middleware chain has returned), one by our code under a bound id, and a
# Python warning (written raw to stderr unless routed through logging).
_LOG_SOME_LINES = """
import logging
import django
django.setup()
from django.test import Client
from resilience import request_id
response = Client().get("/no/such/path", secure=True, HTTP_HOST="api.example.com")
print(response.status_code, response["X-Request-ID"])
with request_id.bound("task-0001"):
    logging.getLogger("bulwark.test").warning("flushed %s views", 3, extra={"policy": "views"})
import warnings
warnings.warn("a library's deprecation", DeprecationWarning, stacklevel=1)
"""


def test_production_log_lines_are_json_objects_naming_their_request_id():
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="project.settings.production",
        DJANGO_ALLOWED_HOSTS="api.example.com",
        DJANGO_SECRET_KEY="Zq8" + "x7Lp2vN9" * 7,
    )
    env.pop("DJANGO_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-c", _LOG_SOME_LINES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    status, sent_id = result.stdout.split()
    assert status == "404"
    # Every line on the console handler is one JSON object: a log shipper needs no parsing rules.
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= line.keys(), line
    not_found = next(line for line in lines if line["logger"] == "django.request")
    assert (not_found["level"], not_found["message"], not_found["request_id"]) == (
        "WARNING",
        "Not Found: /no/such/path",
        sent_id,
    )
    ours = next(line for line in lines if line["logger"] == "bulwark.test")
    assert ours["message"] == "flushed 3 views" and ours["request_id"] == "task-0001" and ours["policy"] == "views"
    assert any(line["logger"] == "py.warnings" and "a library's deprecation" in line["message"] for line in lines)


def test_the_state_redis_mode_is_chosen_in_one_place_and_a_cluster_is_never_the_broker(monkeypatch):
    import pytest
    from django.core.exceptions import ImproperlyConfigured

    from project.settings.caches import build_caches, state_mode
    from project.settings.celery import build_celery

    monkeypatch.delenv("REDIS_STATE_SENTINELS", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    assert state_mode() == "single"
    monkeypatch.setenv("REDIS_STATE_CLUSTER_NODES", "127.0.0.1:7000 127.0.0.1:7001")
    assert state_mode() == "cluster"
    caches, _, state_url = build_caches(redis_db=1)
    options = caches["state"]["OPTIONS"]
    assert options["CONNECTION_FACTORY"] == "resilience.redis_state.ClusterConnectionFactory"
    assert options["CLUSTER_NODES"] == [("127.0.0.1", 7000), ("127.0.0.1", 7001)]
    assert "CONNECTION_FACTORY" not in caches["default"]["OPTIONS"]  # the cache Redis stays one server
    with pytest.raises(ImproperlyConfigured, match="CELERY_BROKER_URL"):
        build_celery(state_url=state_url)
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    assert build_celery(state_url=state_url)["CELERY_BROKER_URL"] == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("REDIS_STATE_SENTINELS", "127.0.0.1:26379")
    with pytest.raises(ImproperlyConfigured, match="not both"):
        state_mode()
    monkeypatch.setenv("REDIS_STATE_SENTINELS", "")
    monkeypatch.setenv("REDIS_STATE_CLUSTER_NODES", "no-port")
    with pytest.raises(ImproperlyConfigured, match="host:port"):
        state_mode()


def databases_and_redis_db(variables: dict) -> tuple[set[str], int]:
    """The database names and REDIS_DB that settings resolve to in a new process given `variables`
    over this process's environment (without a DB_NAME_PREFIX or REDIS_DB of its own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DB_NAME_PREFIX", "REDIS_DB")} | variables
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        "print(json.dumps([sorted({d['NAME'] for d in settings.DATABASES.values()}), settings.REDIS_DB]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    names, redis_db = json.loads(done.stdout.splitlines()[-1])
    return set(names), redis_db


def test_the_failover_demos_never_use_the_test_suites_databases():
    # A test run on the same stack truncates the test databases and flushes their Redis DB before every
    # test: it deleted a running `make sentinel-demo`'s users, whose views then answered 404, and the
    # demo timed out waiting for a view buffered on the new master (or failed on User.DoesNotExist).
    from deploy import cluster_demo, sentinel_demo

    tests = databases_and_redis_db({"DJANGO_SETTINGS_MODULE": "project.settings.test"})
    for demo in (sentinel_demo, cluster_demo):
        names, redis_db = databases_and_redis_db(demo.APP_ENV)
        assert not names & tests[0], f"{demo.__name__} uses the test databases {sorted(names & tests[0])}"
        assert redis_db != tests[1], f"{demo.__name__} uses the test suite's Redis DB {redis_db}"
