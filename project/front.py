"""The hottest reads take a short way through Django's request handling.

Django's handler runs every request through every middleware of MIDDLEWARE. For the two hottest
requests (an anonymous JSON GET of a profile, a `Token` holder's JSON GET of /users/me/: the views of
users/fastpath.py) half of that list provably does nothing, yet costs about a third of the request's
CPU (`make bench`, section "baselines"). `Front` wraps Django's WSGI handler: it resolves the path
with Django's own URLconf (the one place that says which view answers), and when that view says it
takes the request as it is (`view.front_takes(request)`), runs it through MIDDLEWARE without the
middleware in SKIPPED, each skip argued below; any other middleware, including one added later or
OpenTelemetry's, still runs. Every other request goes to Django's handler unchanged.

The request is otherwise handled as Django's handler does: script prefix, request_started and
request_finished (the database connections' bookkeeping: a cache miss reads a replica), exceptions
turned into responses by the same wrapper, the same status line and headers. tests/project/test_front.py
compares the answers of both ways, header by header.
"""

from django.conf import settings
from django.core import signals
from django.core.exceptions import DisallowedHost
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler, get_script_name
from django.dispatch import receiver
from django.urls import Resolver404, get_resolver, get_urlconf, set_script_prefix
from django.utils.module_loading import import_string

# Middleware that does nothing to a request a view's `front_takes` accepts: a GET with no session
# cookie, no query string and a plain JSON Accept header, whose view reads neither the session, the
# CSRF token, `request.user` as the authentication middleware sets it, nor messages.
SKIPPED = {
    # No session cookie: nothing to load, and the view never touches request.session, so nothing to save.
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Its host check is made here (get_host), the resolved path already ends in a slash, and
    # Content-Length is set here; Front refuses to start if DISALLOWED_USER_AGENTS or PREPEND_WWW is set.
    "django.middleware.common.CommonMiddleware",
    # A GET is safe, and the views never ask for a token, so no cookie to set.
    "django.middleware.csrf.CsrfViewMiddleware",
    # The anonymous read keys its limit on the address without looking at request.user; /me
    # authenticates with its own TokenAuthentication and sets request.user itself.
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The views add no message.
    "resilience.lazy_messages.LazyMessageMiddleware",
    # Serves STATIC_URL paths only.
    "whitenoise.middleware.WhiteNoiseMiddleware",
}


def _short_chain():
    """MIDDLEWARE without SKIPPED around the resolved view, each layer wrapped as Django's handler
    wraps it (an exception becomes the response Django would give)."""

    def view(request):
        match = request.resolver_match
        return match.func(request, *match.args, **match.kwargs)

    handler = convert_exception_to_response(view)
    for path in reversed([path for path in settings.MIDDLEWARE if path not in SKIPPED]):
        handler = convert_exception_to_response(import_string(path)(handler))
    return handler


class Front:
    """WSGI application: the short way for the requests a view takes as they are, `django` for the rest."""

    def __init__(self, django: WSGIHandler):
        if settings.DISALLOWED_USER_AGENTS or settings.PREPEND_WWW:
            raise ValueError("Front skips CommonMiddleware: unset DISALLOWED_USER_AGENTS and PREPEND_WWW")
        self.django = django
        self.short = _short_chain()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET":  # before building a request: writes pay nothing here
            return self.django(environ, start_response)
        set_script_prefix(get_script_name(environ))
        # A copy: WSGIRequest writes the decoded path back into the environ it is given, and Django's
        # handler, building its own request from the original, must find it as the server sent it (a
        # decoded non-Latin-1 path no longer encodes, a decoded Latin-1 one decodes twice).
        request = self.django.request_class(environ.copy())
        if not self._takes(request):
            return self.django(environ, start_response)
        signals.request_started.send(sender=WSGIHandler, environ=environ)
        response = self.short(request)
        # As Django's handler: closing the response sends request_finished.
        response._handler_class = WSGIHandler
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        status = f"{response.status_code} {response.reason_phrase}"
        headers = [*response.items(), *(("Set-Cookie", c.output(header="")) for c in response.cookies.values())]
        start_response(status, headers)
        return response

    @staticmethod
    def _takes(request) -> bool:
        try:
            match = _resolve(get_resolver(get_urlconf()), request.path_info)
            _check_host(request)  # ALLOWED_HOSTS, as CommonMiddleware checks it: Django answers a bad host
        except (Resolver404, DisallowedHost):
            return False
        takes = getattr(match.func, "front_takes", None)
        if takes is None or not takes(request):
            return False
        request.resolver_match = match  # as Django's handler sets it: the metrics label the view by it
        request.front_taken = True  # the view need not ask `front_takes` again
        return True


_MATCHES_MAX = 2048
_PATH_MAX = 200  # a profile path is under 50 characters; longer ones are looked up every time
_matches: dict[tuple, object] = {}


def _resolve(resolver, path: str):
    """`resolver.resolve(path)`, remembered for the paths of the views Front serves: walking the
    URLconf costs a cached read about as much as its limiter check, and hot paths repeat. Keyed by the
    resolver, which Django replaces when the URLconf changes. Bounded: emptied when full (a path that
    resolves to anything else, or to nothing, is never kept, so unknown paths cannot fill it). Views
    get the match's kwargs unpacked, never the dict, so a shared match stays unchanged."""
    key = (resolver, path)
    match = _matches.get(key)
    if match is None:
        match = resolver.resolve(path)
        if len(path) <= _PATH_MAX and hasattr(match.func, "front_takes"):
            if len(_matches) >= _MATCHES_MAX:
                _matches.clear()
            _matches[key] = match
    return match


_HOSTS_MAX = 256
_allowed_hosts: set[str] = set()


def _check_host(request) -> None:
    """`request.get_host()`, remembered for the hosts it allowed: a client sends the same Host header
    on every request, and matching it against ALLOWED_HOSTS costs a cached read more than its ETag.
    Keyed by the host as get_host reads it (the forwarded host where USE_X_FORWARDED_HOST says so).
    Only allowed hosts are kept, so a client cannot fill it with others; emptied when full, and when a
    setting changes (tests)."""
    raw = request._get_raw_host()  # Django's own reading of the host, before it is validated
    if raw not in _allowed_hosts:
        request.get_host()  # raises DisallowedHost
        if len(_allowed_hosts) >= _HOSTS_MAX:
            _allowed_hosts.clear()
        _allowed_hosts.add(raw)


@receiver(signals.setting_changed)
def _forget_hosts(**kwargs):
    _allowed_hosts.clear()


def application(django: WSGIHandler):
    """`django` behind Front when settings.FRONT_ENABLED (the project's settings; a minimal settings
    module without it, such as the bench's bare baseline, is served by Django's handler alone)."""
    return Front(django) if getattr(settings, "FRONT_ENABLED", False) else django
