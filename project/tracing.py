"""Optional OpenTelemetry tracing: one trace from a request to the Redis, PostgreSQL and Celery work it
causes (OTEL_TRACING_ENABLED, off by default).

Set up once per process, with the official instrumentations of Django, psycopg, redis-py and Celery:
web processes from project/wsgi.py (before the handler reads MIDDLEWARE: Django's instrumentation
adds a middleware of its own), Celery pool processes from worker_process_init (project/celery.py: a
span exporter's thread does not survive the fork). Celery's instrumentation puts the publisher's
trace context in the task's headers, so a task's span is a child of the request that queued it.

A buffered view and the flush that applies it are two traces (the flush is beat's periodic task, not
queued by the request): the view's request leaves its trace context (`traceparent()`) beside the
buffer, and the flush's span for that shard group links to every such request (`span_linked_to`).

Off, nothing is imported or patched: the hot path pays one settings lookup per process, not per call.
"""

import threading
from contextlib import contextmanager

from django.conf import settings

_lock = threading.Lock()
_provider = None  # the TracerProvider of this process, once set up
_instrumentors: list = []
_global_set = False  # OpenTelemetry refuses (with a warning) to replace the global provider


def _instrumentor_classes():
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    return (DjangoInstrumentor, PsycopgInstrumentor, RedisInstrumentor, CeleryInstrumentor)


def setup(exporter=None):
    """Trace this process when OTEL_TRACING_ENABLED is on; return its TracerProvider, or None when off.

    Spans go to `exporter` (tests pass the SDK's in-memory one) or else, in batches, to the OTLP/HTTP
    endpoint OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. Calling it again is a no-op until `shutdown()`.
    """
    global _provider
    if not settings.OTEL_TRACING_ENABLED:
        return None
    with _lock:
        if _provider is not None:
            return _provider
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": settings.OTEL_SERVICE_NAME}))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Batched, off the request's thread: an exporter that is slow or down costs no latency.
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT))
            )
        else:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        # The global provider can be set once per process; the instrumentations are given this one
        # explicitly, so a test's provider after shutdown() is the one that records.
        global _global_set
        if not _global_set:
            trace.set_tracer_provider(provider)
            _global_set = True
        for cls in _instrumentor_classes():
            instrumentor = cls()
            # Already patched (a previous setup in this process not shut down): leave it as it is.
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=provider)
                _instrumentors.append(instrumentor)
        _provider = provider
        return provider


def shutdown() -> None:
    """Remove the instrumentations and flush the spans (tests; a process that stops tracing)."""
    global _provider
    with _lock:
        while _instrumentors:
            _instrumentors.pop().uninstrument()
        if _provider is not None:
            _provider.shutdown()
        _provider = None


def enabled() -> bool:
    """Whether this process traces (set up and not shut down)."""
    return _provider is not None


def traceparent() -> str | None:
    """The W3C traceparent of the current span ("00-<trace id>-<span id>-<flags>"), or None when this
    process does not trace or no span is current."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@contextmanager
def span_linked_to(name: str, traceparents: list[str]):
    """Run the block in a new span `name` (a child of the current one) with a link to each of
    `traceparents` (malformed ones are skipped); nothing at all when this process does not trace."""
    if _provider is None:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanContext, TraceFlags

    links = []
    for value in traceparents:
        parts = value.split("-")
        try:
            trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
        except (IndexError, ValueError):
            continue
        links.append(Link(SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))))
    with trace.get_tracer("bulwark", tracer_provider=_provider).start_as_current_span(name, links=links):
        yield
