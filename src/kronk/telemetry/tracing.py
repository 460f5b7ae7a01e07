"""OpenTelemetry spans, off by default.

`configure_tracing(endpoint)` installs an SDK tracer provider exporting OTLP over
HTTP; without it every span is the API's no-op and costs next to nothing. Spans that
the engine thread lives through for many requests at once (queue wait, prefill,
decode) are recorded afterwards from each request's timings, with explicit start
and end times, as children of the request's span.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from kronk.engine.request import Failed, Finished, GenerationRequest

tracer = trace.get_tracer("kronk")
_configured = False


def configure_tracing(endpoint: str | None, *, service_name: str = "kronk") -> bool:
    """Export spans to an OTLP/HTTP collector at `endpoint` (e.g. http://127.0.0.1:4318).
    Returns False (and changes nothing) when `endpoint` is empty."""
    global _configured
    if not endpoint or _configured:
        return _configured
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    url = endpoint.rstrip("/")
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    trace.set_tracer_provider(provider)
    _configured = True
    return True


def current_span() -> Span | None:
    """The active span if it records (tracing on, inside a traced request), else None."""
    active = trace.get_current_span()
    return active if active.is_recording() else None


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A span around a block, with `kronk.*` attributes (None values are left out)."""
    with tracer.start_as_current_span(name) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(f"kronk.{key}", value)
        yield current


def record_engine_phases(request: GenerationRequest, event: Finished | Failed) -> None:
    """Add queue, prefill and decode child spans to the request's span from its timings
    (an engine listener: called on the engine thread when the request ends)."""
    parent = request.span
    if not isinstance(parent, Span) or not parent.is_recording() or isinstance(event, Failed):
        return
    u = event.usage
    end_ns = time.time_ns()
    decode_start = end_ns - int(u.generation_seconds * 1e9)
    prefill_start = decode_start - int(u.prompt_seconds * 1e9)
    queue_start = prefill_start - int(u.queue_seconds * 1e9)
    context = trace.set_span_in_context(parent)
    phases: tuple[tuple[str, int, int, dict[str, int]], ...] = (
        ("kronk.queue_wait", queue_start, prefill_start, {}),
        (
            "kronk.prefill",
            prefill_start,
            decode_start,
            {"kronk.prompt_tokens": u.prompt_tokens, "kronk.cached_tokens": u.cached_tokens},
        ),
        ("kronk.decode", decode_start, end_ns, {"kronk.completion_tokens": u.completion_tokens}),
    )
    for name, start, end, attrs in phases:
        child = tracer.start_span(name, context=context, start_time=start, attributes=attrs)
        child.end(end_time=end)
