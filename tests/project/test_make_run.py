"""The server `make run` starts (the Procfile's web line, local settings) answers hostile paths and
hosts with the JSON error shape and serves the admin's static files (found by the black-box pass:
runserver's own static handler answered /static/%2e%2e/x with a bare 500, and DEBUG pages answered
a bad Host or too many query fields with HTML or a 500)."""

import os
import shlex
import urllib.error
import urllib.request

import pytest

from ..processes import Process, running
from ..stack import ROOT, free_port


def web_argv(port: int) -> list[str]:
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    return [word.replace("${PORT:-8000}", str(port)) for word in shlex.split(line.removeprefix("web:"))]


def fetch(url: str, **headers):
    try:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback http URLs built here
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture(scope="module")
def make_run_server(tmp_path_factory):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DJANGO_DEBUG")}
    env["DJANGO_SETTINGS_MODULE"] = "project.settings.local"
    log = tmp_path_factory.mktemp("make-run") / "web.log"
    process = Process("make run web", web_argv(port), log_path=log, env=env)
    with running(process, serving=f"http://127.0.0.1:{port}/health/live", timeout=90):
        yield f"http://127.0.0.1:{port}"


def test_make_run_serves_the_admin_styled_and_answers_hostile_requests_in_json(make_run_server):
    status, headers, body = fetch(f"{make_run_server}/static/admin/css/base.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and b"DJANGO Admin" in body
    for path in ("/static/%2e%2e/x", "/static/%2e%2e/%2e%2e/etc/passwd", "/api/v1/users/%D9%A5/", "/%E2%82%AC/"):
        status, headers, body = fetch(f"{make_run_server}{path}")
        assert (status, headers["Content-Type"]) == (404, "application/json"), (path, body[:200])
    many = "&".join(f"a{i}=1" for i in range(1500))
    for url, headers_sent in (
        (f"{make_run_server}/api/v1/users/?username=a&{many}", {}),
        (f"{make_run_server}/api/v1/users/1/", {"Host": "evil.example"}),
    ):
        status, headers, body = fetch(url, **headers_sent)
        assert status == 400 and headers["Content-Type"] == "application/json", (url[:80], body[:200])
        assert headers["X-Request-ID"] and b'"bad_request"' in body
