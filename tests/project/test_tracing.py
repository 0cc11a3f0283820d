"""OpenTelemetry tracing (project/tracing.py): off by default; on, a request's Redis and PostgreSQL
calls are spans of the request's trace."""

from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from project import tracing
from users import cache

from ..factories import UserFactory

pytestmark = pytest.mark.usefixtures("real_db")


@pytest.fixture
def spans(settings):
    settings.OTEL_TRACING_ENABLED = True
    exporter = InMemorySpanExporter()
    # Connections opened before the instrumentation are not traced: start from none.
    for conn in connections.all():
        conn.close()
    assert tracing.setup(exporter) is not None
    try:
        yield exporter
    finally:
        tracing.shutdown()


def test_off_by_default_nothing_is_set_up(settings):
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    assert settings.OTEL_TRACING_ENABLED is False
    assert tracing.setup() is None
    assert not RedisInstrumentor().is_instrumented_by_opentelemetry  # nothing patched on the hot path


def test_a_request_and_its_redis_and_postgres_calls_are_one_trace(spans):
    user = UserFactory()
    cache.invalidate_many([(cache.user_key(user["id"]), user["rev"] + 1)])  # the read below misses the cache
    spans.clear()
    client = Client()  # a new handler: it loads MIDDLEWARE with Django's tracing middleware in it
    assert client.get(f"/api/v1/users/{user['id']}/").status_code == 200
    assert client.post(f"/api/v1/users/{user['id']}/views/").status_code == 202

    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind == SpanKind.SERVER]
    assert len(servers) == 2, [s.name for s in finished]
    by_id = {s.context.span_id: s for s in finished}

    def root(span):
        while span.parent is not None:
            span = by_id[span.parent.span_id]
        return span

    for server in servers:
        # Every Redis and PostgreSQL call of the request descends from its server span, in its trace.
        children = [s for s in finished if s.kind == SpanKind.CLIENT and root(s) is server]
        assert {s.context.trace_id for s in children} == {server.context.trace_id}
        systems = {s.attributes.get("db.system") for s in children}
        assert {"redis", "postgresql"} <= systems, (server.name, [c.name for c in children])
    get, post = servers
    assert get.name == "GET api/v1/users/<str:user_id>/"
    assert post.name == "POST api/v1/users/<str:user_id>/views/"
    # The view was buffered in the state Redis (write-behind) within the POST's trace.
    state_port = urlsplit(django_settings.REDIS_STATE_URL).port
    assert any(s.attributes.get("net.peer.port") == state_port for s in finished if root(s) is post)
