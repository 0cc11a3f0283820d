"""OpenTelemetry tracing (project/tracing.py): off by default; on, a request's Redis and PostgreSQL
calls are spans of the request's trace."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from project import tracing
from users import cache
from webhooks.tasks import webhooks_dispatch

from ..factories import UserFactory
from ..processes import celery_worker
from ..stack import wait_for

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


class Collector:
    """A real OTLP/HTTP trace endpoint on loopback: what a Collector would receive from a worker."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        collector.spans.extend(scope_spans.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_task_queued_inside_a_trace_runs_in_that_trace_in_a_real_worker(spans, tmp_path):
    from opentelemetry import trace

    collector = Collector()
    try:
        worker_env = {
            "OTEL_TRACING_ENABLED": "true",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # the SDK's batch delay (ms): export within the test's wait
        }
        with celery_worker(env=worker_env, log_path=tmp_path / "worker.log"):
            tracer = trace.get_tracer("tests", tracer_provider=tracing.setup())
            with tracer.start_as_current_span("a request", kind=SpanKind.SERVER) as request_span:
                webhooks_dispatch.delay()
            trace_id = request_span.get_span_context().trace_id
            run = wait_for(
                lambda: next(
                    (
                        s
                        for s in collector.spans
                        if s.name.startswith("run/") and int.from_bytes(s.trace_id) == trace_id
                    ),
                    None,
                ),
                timeout=60,
                message=f"the worker's span of the task in the request's trace (log: {tmp_path / 'worker.log'})",
            )
        # Its parent is this process's publish span, itself a child of the request span.
        (publish,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
        assert publish.parent.span_id == request_span.get_span_context().span_id
        assert int.from_bytes(run.parent_span_id) == publish.context.span_id
        # The task's own Redis and PostgreSQL calls are in the trace too, under the task's span.
        systems = {
            attribute.value.string_value
            for s in collector.spans
            if int.from_bytes(s.trace_id) == trace_id and s.parent_span_id == run.span_id
            for attribute in s.attributes
            if attribute.key == "db.system"
        }
        assert {"redis", "postgresql"} <= systems, [s.name for s in collector.spans]
    finally:
        collector.stop()


def test_the_flush_that_applies_a_buffered_view_links_to_the_views_request(spans):
    from users.sharding.access import group_for_user_id
    from users.tasks import writebehind_flush

    user = UserFactory()
    spans.clear()
    assert Client().post(f"/api/v1/users/{user['id']}/views/").status_code == 202
    (post,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    spans.clear()

    writebehind_flush.apply()  # the beat task, run here: Celery's instrumentation gives it its span

    finished = spans.get_finished_spans()
    (run,) = [s for s in finished if s.name == "run/users.writebehind_flush"]
    group = group_for_user_id(user["id"])
    (flush_span,) = [s for s in finished if s.name == f"write-behind flush {group}"]
    # A child of the task's span, in the task's trace, linked to the request that buffered the view.
    assert flush_span.parent.span_id == run.context.span_id
    assert flush_span.context.trace_id == run.context.trace_id != post.context.trace_id
    assert [(link.context.trace_id, link.context.span_id) for link in flush_span.links] == [
        (post.context.trace_id, post.context.span_id)
    ]
    # The batch's UPDATE on the shard is inside the flush span.
    assert any(
        s.attributes.get("db.system") == "postgresql" and s.parent.span_id == flush_span.context.span_id
        for s in finished
        if s.parent is not None
    )
    # Taken: the next flush links to nothing.
    spans.clear()
    writebehind_flush.apply()
    assert all(not s.links for s in spans.get_finished_spans() if s.name.startswith("write-behind flush"))
