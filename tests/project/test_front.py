"""project/front.py: the hot reads it takes get, header by header, the answer Django's handler gives;
it takes only what their views say they answer themselves, and every other request (and every
middleware it does not skip by name) goes the usual way."""

from urllib.parse import unquote_to_bytes, urlsplit

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test import RequestFactory

from ops.metrics import REQUESTS
from project.front import SKIPPED, Front

from ..factories import TokenFactory, UserFactory

MOVING = {"RateLimit", "X-Request-ID"}  # per request: the remaining quota and reset, the request's id


class CountingHandler(WSGIHandler):
    """Django's handler, counting the requests Front hands it."""

    calls = 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return super().__call__(environ, start_response)


def serve(app, path, ip, method="GET", **headers):
    environ = RequestFactory(REMOTE_ADDR=ip).generic(method, path, headers=headers).environ
    # As a server sends it (PEP 3333: the raw bytes as Latin-1), not as the factory's request left it.
    environ["PATH_INFO"] = unquote_to_bytes(urlsplit(path).path).decode("iso-8859-1")
    answered = {}

    def start_response(status, response_headers, exc_info=None):
        answered["status"], answered["headers"] = status, response_headers

    response = app(environ, start_response)
    try:
        body = b"".join(response)
    finally:
        response.close()
    names = [name for name, _ in answered["headers"]]
    assert len(names) == len(set(names)), names  # no header sent twice
    headers = dict(answered["headers"])
    request_id = headers.get("X-Request-ID", "").encode() or b"-"
    kept = {name: value for name, value in headers.items() if name not in MOVING}
    return answered["status"], kept, body.replace(request_id, b"<request id>")


@pytest.fixture
def apps(settings):
    django = CountingHandler()
    return Front(django), django


def assert_same(apps, path, *, taken: bool, method="GET", **headers):
    """Front and Django's handler answer `path` alike (each from its own address, so neither one's
    limiter count shifts the other's); Front answered it itself when `taken`."""
    front, django = apps
    before = django.calls
    through_front = serve(front, path, "10.7.0.1", method, **headers)
    assert django.calls - before == (0 if taken else 1)
    assert through_front == serve(django, path, "10.7.0.2", method, **headers)
    return through_front


def test_the_anonymous_profile_read_answers_as_django_would(apps, real_db):
    user = UserFactory(username="fronted")
    path = f"/api/v1/users/{user['id']}/"
    status, headers, body = assert_same(apps, path, taken=True)
    assert status == "200 OK" and b'"username":"fronted"' in body
    # What the middleware Front keeps adds, and CommonMiddleware's Content-Length.
    for name in ("X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy", "RateLimit-Policy", "ETag"):
        assert name in headers
    assert headers["Content-Length"] == str(len(body)) and "Vary" not in headers
    status, headers, body = assert_same(apps, path, taken=True, **{"If-None-Match": headers["ETag"]})
    assert (status, body) == ("304 Not Modified", b"")
    for unknown in ("12", "abc", "9" * 30, user["id"] + 1):
        status, _headers, body = assert_same(apps, f"/api/v1/users/{unknown}/", taken=True)
        assert status == "404 Not Found" and b'"code":"not_found"' in body


def test_requests_the_views_do_not_take_go_to_django(settings, apps, real_db):
    settings.ALLOWED_HOSTS = ["testserver"]
    user = UserFactory()
    path = f"/api/v1/users/{user['id']}/"
    assert_same(apps, path, taken=False, method="HEAD")
    assert_same(apps, path, taken=False, method="OPTIONS")
    assert_same(apps, f"{path}?fields=id", taken=False)
    assert_same(apps, path, taken=False, Accept="text/html")
    assert_same(apps, path, taken=False, Cookie="sessionid=abc")
    assert_same(apps, f"{path}views/", taken=False, method="GET")
    assert_same(apps, "/api/v1/users/", taken=False)
    assert_same(apps, "/health/live", taken=False)
    assert_same(apps, "/no/such/page", taken=False)
    # Found by the black-box pass: a path Front looked at reached Django decoded once already (a
    # non-Latin-1 one then failed to encode: a bare 500; a Latin-1 one was decoded twice).
    for odd in ("/api/v1/users/%D9%A5%D9%A0/", "/api/v1/users/%C3%A9/", "/%E2%82%AC/"):
        status, _headers, body = assert_same(apps, odd, taken=False, Accept="application/json;q=1")
        assert status == "404 Not Found" and b"not_found" in body, odd
    # A host outside ALLOWED_HOSTS: Django answers it (400), as CommonMiddleware would have refused it.
    status, _headers, _body = assert_same(apps, path, taken=False, Host="evil.example")
    assert status.startswith("400")


def test_the_token_read_of_me_answers_as_django_would(apps, real_db):
    token = TokenFactory()
    status, headers, body = assert_same(apps, "/api/v1/users/me/", taken=True, Authorization=f"Token {token}")
    assert status == "200 OK" and b'"email"' in body
    assert headers["Allow"] == "GET, PATCH, DELETE, HEAD, OPTIONS"
    for bad in (f"Token {token}x", "Token a b", "token", f"TOKEN {token[:-1]}"):
        status, _headers, _body = assert_same(apps, "/api/v1/users/me/", taken=True, Authorization=bad)
        assert status.startswith("401"), bad
    # Another scheme is for DRF's other authenticators: Django's way.
    for other in ("Basic Zm9vOmJhcg==", "Bearer abc", f"Token\xa0{token}"):
        assert_same(apps, "/api/v1/users/me/", taken=False, Authorization=other)
    assert_same(apps, "/api/v1/users/me/", taken=False)  # no credentials at all


def test_the_requests_front_answers_are_counted_under_their_view(apps, real_db):
    user = UserFactory()
    counter = REQUESTS.labels("GET", "200", "user-detail")
    before = counter._value.get()
    serve(apps[0], f"/api/v1/users/{user['id']}/", "10.7.0.3")
    assert counter._value.get() == before + 1


class Marking:
    """A middleware someone adds: Front must run it too."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response["X-Marked"] = "yes"
        return response


def test_only_the_middleware_named_in_skipped_is_left_out(settings, real_db):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.Marking"]
    user = UserFactory()
    front = Front(CountingHandler())
    _status, headers, _body = serve(front, f"/api/v1/users/{user['id']}/", "10.7.0.4")
    assert headers["X-Marked"] == "yes" and front.django.calls == 0
    # Everything skipped is in the project's MIDDLEWARE (or production's WhiteNoise): no stale name.
    assert SKIPPED - set(settings.MIDDLEWARE) <= {"whitenoise.middleware.WhiteNoiseMiddleware"}


def test_front_refuses_settings_whose_checks_it_would_skip(settings):
    settings.DISALLOWED_USER_AGENTS = ["evil"]
    with pytest.raises(ValueError, match="DISALLOWED_USER_AGENTS"):
        Front(WSGIHandler())


def test_the_paths_front_remembers_are_its_own_views_and_follow_the_urlconf(settings, apps, real_db):
    from project import front as front_module

    user = UserFactory(username="remembered")
    front_module._matches.clear()
    for path in (f"/api/v1/users/{user['id']}/", "/api/v1/users/me/", "/api/v1/users/", "/api/v1/x/", "/nothing"):
        serve(apps[0], path, "10.7.0.5")
    kept = sorted(path for _resolver, path in front_module._matches)
    assert kept == sorted([f"/api/v1/users/{user['id']}/", "/api/v1/users/me/"])  # not the list, nor JSON 404s
    # Another URLconf (Django builds a new resolver for it): the path is resolved in it, not remembered.
    settings.ROOT_URLCONF = f"{__name__}"
    status, _headers, _body = serve(apps[0], f"/api/v1/users/{user['id']}/", "10.7.0.5")
    assert status.startswith("404")


urlpatterns: list = []  # test_the_paths_front_remembers_...: a URLconf without the profile read


def test_a_host_front_allowed_once_is_refused_when_allowed_hosts_changes(settings, apps, real_db):
    """Front remembers the hosts get_host allowed; the memory follows ALLOWED_HOSTS."""
    user = UserFactory()
    path = f"/api/v1/users/{user['id']}/"
    settings.ALLOWED_HOSTS = ["kept.example", "testserver"]
    status, _headers, _body = assert_same(apps, path, taken=True, Host="kept.example")
    assert status == "200 OK"
    settings.ALLOWED_HOSTS = ["testserver"]
    status, _headers, _body = assert_same(apps, path, taken=False, Host="kept.example")
    assert status.startswith("400")
    # A refused host is never remembered as allowed: refused again, and Django answers it every time.
    for _ in range(2):
        status, _headers, _body = assert_same(apps, path, taken=False, Host="evil.example")
        assert status.startswith("400")
