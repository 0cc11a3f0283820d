"""The overload front in nginx (deploy/nginx.conf, deploy/nginx-priority.conf): requests are put in the
app's priority classes and refused per class before they reach the app.

- the generated maps are the registry's (the committed file equals what the registry gives now), and
  the path rules, applied in order as nginx applies them, give each sample request the app's class;
- a real nginx from the template in front of a real granian: with a class's in-flight ceiling held full,
  the next request of that class is answered 503 with Retry-After and the API's error shape by nginx,
  while a critical request still reaches the app; released, the class is served again;
- X-Bulwark-Priority (the template's `$bulwark_trusted_caller` geo block, nginx-priority.conf's step 4):
  from a trusted caller it lowers a request's class (a critical request lowered to sheddable is refused
  with the sheddable class full), it never raises one, and from anyone else (the default: nobody is
  trusted) it is ignored.

Requests are held in flight without any timing: a POST whose headers are sent and whose body is not
counts against its class from the moment nginx has read its headers (limit_conn's preaccess phase)
until the connection closes, exactly like a request the app is slow to answer. The test waits until
nginx refuses the class (a wait for a condition, no timed assertion).
"""

import json
import re
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.test import RequestFactory

from resilience.overload import classify, nginx
from tests.factories import TokenFactory, UserFactory
from tests.processes import granian_server, nginx_binary, nginx_front, running
from tests.stack import ROOT, free_port, wait_for


def test_the_committed_nginx_maps_are_the_registry_s():
    committed = (ROOT / "deploy" / "nginx-priority.conf").read_text()
    assert committed == nginx.render("project.urls"), "run manage.py overload_nginx_map and commit the file"


def nginx_class(method: str, path: str, *, authorization=False, idempotency_key=False) -> str:
    """The class the generated maps give, evaluated as nginx does (first matching rule, then steps 2-3)."""
    endpoint = "default:"
    for key, value in nginx.endpoint_map("project.urls"):
        if re.search(key.removeprefix("~"), f"{method} {path}"):
            endpoint = value
            break
    if not endpoint:
        return ""
    base, credentials = endpoint.split(":")
    priority = credentials if authorization and credentials else base
    if idempotency_key and method not in ("GET", "HEAD", "OPTIONS"):
        priority = "critical"
    return priority


@pytest.mark.parametrize(
    ("method", "path", "authorization", "idempotency_key"),
    [
        ("GET", "/api/v1/users/", False, False),
        ("POST", "/api/v1/users/", False, False),
        ("POST", "/api/v1/users/", False, True),
        ("GET", "/api/v1/users/me/", True, False),
        ("GET", "/api/v1/users/me/", False, False),
        ("GET", "/api/v1/users/42/", False, False),
        ("GET", "/api/v1/users/42/", True, False),
        ("POST", "/api/v1/users/42/views/", False, False),
        ("POST", "/api/v1/users/42/views/", False, True),
        ("POST", "/api/v1/auth/token/", False, False),
        ("DELETE", "/api/v1/auth/tokens/7/", True, False),
        ("GET", "/api/v1/nothing-here/", False, False),
        ("GET", "/health/live", False, False),
        ("GET", "/health/ready", False, False),
        ("GET", "/metrics", False, False),
        ("GET", "/admin/", False, False),
        ("GET", "/admin/users/user/", False, False),
        ("GET", "/no/such/page", False, False),
    ],
)
def test_nginx_puts_a_request_in_the_app_s_class(method, path, authorization, idempotency_key):
    headers = {}
    if authorization:
        headers["HTTP_AUTHORIZATION"] = "Token abc"
    if idempotency_key:
        headers["HTTP_IDEMPOTENCY_KEY"] = "k1"
    request = RequestFactory().generic(method, path, **headers)
    app = classify(request)
    expected = "" if app is None else str(app[1])
    assert nginx_class(method, path, authorization=authorization, idempotency_key=idempotency_key) == expected


# ---------------------------------------------------------------- a real nginx in front of granian
LIMITS = {"LIMIT_ALL": 8, "LIMIT_NONCRITICAL": 4, "LIMIT_SHEDDABLE": 2}


def send(port: int, method: str, path: str, headers: dict | None = None, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: application/json", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return sock


def answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        decoded, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if not size:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return int(status_line.split(" ", 2)[1]), headers, body


def request(port: int, method: str, path: str, headers: dict | None = None, body: bytes = b""):
    if body:
        headers = {**(headers or {}), "Content-Length": str(len(body)), "Content-Type": "application/json"}
    return answer(send(port, method, path, headers, body))


def hold(port: int, method: str, path: str, headers: dict | None = None) -> socket.socket:
    """A request in flight until its socket is closed: headers sent, its promised body never."""
    return send(port, method, path, {**(headers or {}), "Content-Length": "100", "Content-Type": "application/json"})


def refused_until(port: int, method: str, path: str, headers: dict | None = None):
    """Send the request until nginx refuses it (the held requests' headers may still be in flight)."""
    seen = {}

    def refused():
        seen["answer"] = request(port, method, path, headers)
        return seen["answer"][0] == 503

    wait_for(refused, timeout=30, interval=0.05, message=f"nginx to refuse {method} {path}")
    return seen["answer"]


@contextmanager
def nginx_in_front_of_granian(tmp_path, trusted_callers=()):
    """granian serving the test settings, nginx (from the template, LIMITS, `trusted_callers`) in
    front; yields nginx's port."""
    if not Path(nginx_binary()).exists():
        pytest.fail(f"{nginx_binary()} is missing: install Debian's nginx-light (`make test` does, as root).")
    app_port, port = free_port(), free_port()
    prefix = tmp_path / "nginx"
    tmp_path.chmod(0o755)  # started by root, nginx's workers run as nobody
    env = {"RESILIENCE_TRUSTED_PROXIES": "127.0.0.1"}

    with granian_server(port=app_port, env=env, log_path=tmp_path / "granian.log"):
        process = nginx_front(
            prefix, listen_port=port, app_ports=(app_port, app_port), limits=LIMITS, trusted_callers=trusted_callers
        )
        with running(process, serving=f"http://127.0.0.1:{port}/health/live", timeout=30):
            yield port


@pytest.fixture
def front(real_db, tmp_path):
    """nginx in front of granian as deployed: no trusted callers (X-Bulwark-Priority from anyone is ignored)."""
    with nginx_in_front_of_granian(tmp_path) as port:
        yield port


@pytest.fixture
def trusted_front(real_db, tmp_path):
    """The same with 127.0.0.1, this test's own address, a trusted caller: its X-Bulwark-Priority counts."""
    with nginx_in_front_of_granian(tmp_path, trusted_callers=("127.0.0.1",)) as port:
        yield port


def assert_overloaded(status, headers, body):
    assert status == 503
    assert headers["retry-after"] == "1"
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["code"] == "overloaded"
    assert error["detail"]
    assert error["request_id"] == headers["x-request-id"]


def test_nginx_refuses_a_full_class_at_once_and_still_passes_critical_requests(front):
    user = UserFactory()
    token = TokenFactory(username=user["username"])
    me = ("GET", "/api/v1/users/me/", {"Authorization": f"Token {token}"})
    profile = ("GET", f"/api/v1/users/{user['id']}/", None)  # anonymous: sheddable
    assert request(front, *profile)[0] == 200

    # Sheddable: two views held in flight fill its ceiling (2).
    held = [hold(front, "POST", f"/api/v1/users/{user['id']}/views/") for _ in range(LIMITS["LIMIT_SHEDDABLE"])]
    try:
        assert_overloaded(*refused_until(front, *profile))
        assert request(front, *me)[0] == 200  # critical
        assert request(front, "GET", "/api/v1/nothing-here/")[0] == 404  # default: still under its ceiling
        # A client cannot raise its class: its X-Bulwark-Priority is ignored (it is not a trusted caller).
        assert request(front, *profile[:2], {"X-Bulwark-Priority": "critical"})[0] == 503
        assert request(front, "GET", "/health/live")[0] == 200  # never limited

        # Default and sheddable together: two sign-ups (default) held fill their ceiling (4).
        held += [hold(front, "POST", "/api/v1/users/") for _ in range(2)]
        assert_overloaded(*refused_until(front, "GET", "/api/v1/nothing-here/"))
        assert request(front, *me)[0] == 200  # critical still has LIMIT_ALL - LIMIT_NONCRITICAL slots
    finally:
        for sock in held:
            sock.close()
    # Released: the classes are served again.
    wait_for(lambda: request(front, *profile)[0] == 200, timeout=30, message="the sheddable class to be served again")
    assert request(front, "GET", "/api/v1/nothing-here/")[0] == 404


# ---------------------------------------------------------------- X-Bulwark-Priority at the front
def me_and_a_full_sheddable_class(port: int):
    """A critical request (GET /me with a token) and the sheddable class held full: (me, profile, held
    sockets), once nginx refuses a sheddable request."""
    user = UserFactory()
    token = TokenFactory(username=user["username"])
    me = ("GET", "/api/v1/users/me/", {"Authorization": f"Token {token}"})
    profile = ("GET", f"/api/v1/users/{user['id']}/")  # anonymous: sheddable
    assert request(port, *me)[0] == 200
    assert request(port, *profile)[0] == 200
    held = [hold(port, "POST", f"/api/v1/users/{user['id']}/views/") for _ in range(LIMITS["LIMIT_SHEDDABLE"])]
    try:
        assert_overloaded(*refused_until(port, *profile))
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return me, profile, held


def test_a_trusted_caller_lowers_a_critical_request_into_the_full_sheddable_class(trusted_front):
    me, profile, held = me_and_a_full_sheddable_class(trusted_front)
    method, path, auth = me
    try:
        # The same critical request, lowered: refused by nginx at once, like any sheddable one.
        assert_overloaded(*request(trusted_front, method, path, {**auth, "X-Bulwark-Priority": "sheddable"}))
        assert_overloaded(*request(trusted_front, method, path, {**auth, "X-Bulwark-Priority": " Sheddable "}))
        # Lowered to default, whose ceiling is not full: served.
        assert request(trusted_front, method, path, {**auth, "X-Bulwark-Priority": "default"})[0] == 200
        # Not lowered (no header, or an unknown class): critical, served.
        assert request(trusted_front, *me)[0] == 200
        assert request(trusted_front, method, path, {**auth, "X-Bulwark-Priority": "bulk"})[0] == 200
    finally:
        for sock in held:
            sock.close()
    # Released: the lowered request is served again, by the app (which trusts nginx's header too).
    wait_for(
        lambda: request(trusted_front, *profile)[0] == 200, timeout=30, message="the sheddable class to be served again"
    )
    status, _, body = request(trusted_front, method, path, {**auth, "X-Bulwark-Priority": "sheddable"})
    assert status == 200, body


def test_an_untrusted_caller_s_x_bulwark_priority_is_ignored(front):
    me, _, held = me_and_a_full_sheddable_class(front)
    method, path, auth = me
    try:
        # Nobody is trusted (the template's default): the header does not lower the critical request.
        assert request(front, method, path, {**auth, "X-Bulwark-Priority": "sheddable"})[0] == 200
        assert request(front, method, path, {**auth, "X-Bulwark-Priority": "default"})[0] == 200
    finally:
        for sock in held:
            sock.close()


def test_a_trusted_caller_cannot_raise_a_request_out_of_the_full_sheddable_class(trusted_front):
    me, profile, held = me_and_a_full_sheddable_class(trusted_front)
    try:
        for raised_to in ("critical", "default", "CRITICAL"):
            assert_overloaded(*request(trusted_front, *profile, {"X-Bulwark-Priority": raised_to}))
        # A sign-up (default) asking for critical stays default: with default and sheddable together held
        # full (4), refused, while a critical request is still served.
        held += [hold(trusted_front, "POST", "/api/v1/users/") for _ in range(2)]
        assert_overloaded(*refused_until(trusted_front, "GET", "/api/v1/nothing-here/"))
        assert_overloaded(*request(trusted_front, "GET", "/api/v1/nothing-here/", {"X-Bulwark-Priority": "critical"}))
        assert request(trusted_front, *me)[0] == 200
    finally:
        for sock in held:
            sock.close()
