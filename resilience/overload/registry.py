"""Which endpoint group and priority class a request belongs to: one registry, filled by the apps.

Apps register their endpoints by URL name from `AppConfig.ready()` (users/apps.py, ops/apps.py), so
this generic package imports no domain code. A request's class is decided in this order:

1. its endpoint's class, per method if the registration says so (unregistered URLs: `default`);
2. `credentials`: a request carrying an Authorization header gets this class if the endpoint names
   one (token-authenticated calls are `critical`). A forged token gains little: it is answered 401 by
   the cheapest path there is, and the rate limiter counts it;
3. a write carrying an `Idempotency-Key` (resilience/idempotency.py) is `critical`: it may be the retry
   of a write already accepted, which must not be lost. Knowing whether the key was seen would take a
   state-Redis call on the hot path; instead the per-caller key quota bounds how much a client can
   promote this way;
4. a trusted proxy (RESILIENCE_TRUSTED_PROXIES, the rule X-Request-ID uses) may lower the class with
   the `X-Bulwark-Priority` header (e.g. a batch job's traffic), never raise it. From anyone else the
   header is ignored.

Health checks and /metrics are excluded: they must answer exactly when the process is overloaded.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.urls import Resolver404, resolve

from ..ratelimit.http import from_trusted_proxy
from .limiter import Priority
from .options import GROUPS

PRIORITY_HEADER = "X-Bulwark-Priority"
_PRIORITY_META = "HTTP_X_BULWARK_PRIORITY"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BY_METHOD = ""  # group: "reads" for GET/HEAD/OPTIONS, "writes" for the rest


@dataclass(frozen=True)
class Endpoint:
    """How requests to one URL name (or namespace) are limited. group None: not limited at all."""

    group: str | None = BY_METHOD
    priority: Priority = Priority.DEFAULT
    methods: Mapping[str, Priority] = field(default_factory=dict)
    credentials: Priority | None = None


_UNREGISTERED = Endpoint()
_by_view: dict[str, Endpoint] = {}
_by_namespace: dict[str, Endpoint] = {}


def _endpoint(group, priority, methods, credentials) -> Endpoint:
    if group not in (None, BY_METHOD, *GROUPS):
        raise ValueError(f"overload group {group!r} is not one of {GROUPS}")
    return Endpoint(
        group=group,
        priority=Priority.parse(priority),
        methods={method.upper(): Priority.parse(p) for method, p in (methods or {}).items()},
        credentials=None if credentials is None else Priority.parse(credentials),
    )


def register(
    view_name: str,
    *,
    priority: str | Priority = Priority.DEFAULT,
    methods: Mapping[str, str | Priority] | None = None,
    group: str | None = BY_METHOD,
    credentials: str | Priority | None = None,
) -> None:
    """Limit requests resolving to `view_name` ("users-me", "admin:index") in `group` with class
    `priority`, or `methods[method]` for the methods named there; `credentials`: the class of a request
    carrying an Authorization header. Raise ValueError for an unknown group or class."""
    _by_view[view_name] = _endpoint(group, priority, methods, credentials)
    forget_paths()


def register_namespace(
    namespace: str, *, priority: str | Priority = Priority.DEFAULT, group: str | None = BY_METHOD
) -> None:
    """As `register`, for every URL in `namespace` ("admin") that has no registration of its own."""
    _by_namespace[namespace] = _endpoint(group, priority, None, None)
    forget_paths()


def exclude(view_name: str) -> None:
    """Never limit requests resolving to `view_name` (health checks, /metrics)."""
    _by_view[view_name] = Endpoint(group=None)
    forget_paths()


_paths: dict[str, Endpoint] = {}  # path -> its registration: resolving costs ~20 us, a hit ~0.1 us
PATH_CACHE_SIZE = 4096  # then the cache starts again (a scan of random paths cannot grow it)


def endpoint_for(path_info: str) -> Endpoint:
    """The registration `path_info` resolves to (unregistered paths, including 404s: by method, default).

    Resolved with Django's own URL resolver (the registry is keyed by URL name), once per distinct path:
    the middleware runs before Django resolves the URL itself, so that a refusal skips everything.
    """
    found = _paths.get(path_info)
    if found is not None:
        return found
    try:
        match = resolve(path_info)
    except Resolver404:
        found = _UNREGISTERED
    else:
        found = _by_view.get(match.view_name)
        if found is None and match.namespaces:
            found = _by_namespace.get(match.namespaces[0])
        found = found or _UNREGISTERED
    if len(_paths) >= PATH_CACHE_SIZE:
        _paths.clear()
    _paths[path_info] = found
    return found


def forget_paths() -> None:
    """Drop the resolved paths (the URLconf or a registration changed)."""
    _paths.clear()


def classify(request) -> tuple[str, Priority] | None:
    """The (group, class) `request` is limited in, or None if it is not limited."""
    endpoint = endpoint_for(request.path_info)
    if endpoint.group is None:
        return None
    method = request.method
    meta = request.META
    priority = endpoint.methods.get(method, endpoint.priority)
    if endpoint.credentials is not None and "HTTP_AUTHORIZATION" in meta:
        priority = endpoint.credentials
    if method not in _SAFE_METHODS and "HTTP_IDEMPOTENCY_KEY" in meta:
        priority = Priority.CRITICAL
    lowered = meta.get(_PRIORITY_META)
    if lowered and from_trusted_proxy(request):
        try:
            priority = max(priority, Priority.parse(lowered.strip()))
        except ValueError:
            pass  # an unknown class lowers nothing: the request keeps its own
    group = endpoint.group or ("reads" if method in _SAFE_METHODS else "writes")
    return group, priority


@receiver(setting_changed)
def _urlconf_changed(*, setting, **kwargs):
    if setting == "ROOT_URLCONF":
        forget_paths()
