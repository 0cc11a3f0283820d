"""Django's per-request database bookkeeping, over the connections this thread has opened.

Django connects `reset_queries` and `close_old_connections` to request_started and request_finished.
Each walks every configured alias (`connections.all(initialized_only=True)` asks the context-local
store about each of the 12 aliases of the local stack, more with each shard group), three times a
request: about a sixth of the CPU of a cached read, which opens no connection at all. Only an opened
connection can be unusable, past CONN_MAX_AGE, due a health check or hold logged queries, so doing
the same work for the aliases this thread (asgiref context, as Django's connections) opened a
connection on keeps Django's semantics exactly. The serving processes install it (project/wsgi.py);
other processes (Celery, management commands, tests) keep Django's receivers.
"""

import weakref
from contextvars import ContextVar

from django.conf import settings
from django.core.cache import close_caches
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connections, reset_queries
from django.db.backends.signals import connection_created

# The aliases this context opened a connection on. A ContextVar, as local as `connections` (asgiref's
# Local, which Django's connections use, is built on contextvars too, at ten times the cost of a look-up
# that every request makes twice).
_opened: ContextVar[set[str] | None] = ContextVar("bulwark_opened_aliases", default=None)


def _aliases() -> set[str]:
    aliases = _opened.get()
    if aliases is None:
        aliases = set()
        _opened.set(aliases)
    return aliases


def _connection_created(*, connection, **kwargs) -> None:
    _aliases().add(connection.alias)


def _opened_connections() -> list:
    aliases = _opened.get()
    return [connections[alias] for alias in aliases] if aliases else []


def request_started_bookkeeping(**kwargs) -> None:
    """Django's reset_queries, then close_old_connections, for this context's opened connections."""
    for conn in _opened_connections():
        conn.queries_log.clear()
        conn.close_if_unusable_or_obsolete()


def request_finished_bookkeeping(**kwargs) -> None:
    """Django's close_old_connections, for this context's opened connections."""
    for conn in _opened_connections():
        conn.close_if_unusable_or_obsolete()


def _closing_caches_does_nothing() -> bool:
    """Whether Django's close_caches (a request_finished receiver) is a no-op: every cache is
    django-redis without CLOSE_CONNECTION, whose close() then does nothing. It still walks every
    initialized cache on every request."""
    return all(
        spec["BACKEND"] == "django_redis.cache.RedisCache"
        and not spec.get("OPTIONS", {}).get(
            "CLOSE_CONNECTION", getattr(settings, "DJANGO_REDIS_CLOSE_CONNECTION", False)
        )
        for spec in settings.CACHES.values()
    )


def install() -> None:
    """Replace Django's request receivers with the ones above, and drop close_caches where it does
    nothing. Connections this context opened before the call are counted too."""
    if _closing_caches_does_nothing():
        request_finished.disconnect(close_caches)
    connection_created.connect(_connection_created, dispatch_uid="bulwark.lifecycle.created")
    _aliases().update(conn.alias for conn in connections.all(initialized_only=True) if conn.connection is not None)
    request_started.disconnect(reset_queries)
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    request_started.connect(request_started_bookkeeping, dispatch_uid="bulwark.lifecycle.started")
    request_finished.connect(request_finished_bookkeeping, dispatch_uid="bulwark.lifecycle.finished")
    # Sent twice a request: each send otherwise rebuilds its receiver list under a lock. Django caches
    # model signals the same way, and empties the cache on every connect and disconnect.
    for signal in (request_started, request_finished):
        signal.use_caching = True
        signal.sender_receivers_cache = weakref.WeakKeyDictionary()


def uninstall() -> None:
    """Django's own receivers again (tests)."""
    for signal in (request_started, request_finished):
        signal.use_caching = False
        signal.sender_receivers_cache = {}
    request_started.disconnect(dispatch_uid="bulwark.lifecycle.started")
    request_finished.disconnect(dispatch_uid="bulwark.lifecycle.finished")
    connection_created.disconnect(dispatch_uid="bulwark.lifecycle.created")
    request_started.connect(reset_queries)
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)
    request_finished.connect(close_caches)
