"""OpenTelemetry spans, off by default.

`configure_tracing(url)` installs an SDK tracer provider exporting OTLP over HTTP;
without it (or another SDK provider the application installs) every span is the API's
no-op and costs next to nothing. `tracer` is a proxy that follows the global provider.

Work the engine thread does for many requests at once (queue wait, cache lookup,
prefill, decode, detokenize) is not traced live: when a request ends, its timings
become a `kronk.generation` span with those phases as children, under the span that
was current when it was submitted (the HTTP request's). Per-token work (detokenize,
parse) is shown as one span of its total time, ending where the decode ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span

from kronk.engine.request import Failed, Finished, GenerationRequest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

tracer = trace.get_tracer("kronk")
_configured = False

# Where spans go, in OpenTelemetry's own variables first: the traces URL as is, else a
# collector's base URL (kronk's variable is the same kind).
_TRACES_URL_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
_BASE_URL_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "KRONK_OTLP_ENDPOINT")


def otlp_traces_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL the environment asks for, or None (tracing stays off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if url := environ.get(_TRACES_URL_ENV, "").strip():
        return url
    for name in _BASE_URL_ENV:
        if base := environ.get(name, "").strip():
            return f"{base.rstrip('/')}/v1/traces"
    return None


def tracer_provider(traces_url: str, *, service_name: str = "kronk") -> TracerProvider:
    """An SDK provider that batches spans to an OTLP/HTTP collector at `traces_url`
    (e.g. http://127.0.0.1:4318/v1/traces). `OTEL_SERVICE_NAME` overrides the name."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(named))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    return provider


def configure_tracing(traces_url: str | None, *, service_name: str = "kronk") -> bool:
    """Export every span to `traces_url` from now on (once per process). Returns whether
    tracing is on; an empty URL changes nothing."""
    global _configured
    if traces_url and not _configured:
        trace.set_tracer_provider(tracer_provider(traces_url, service_name=service_name))
        _configured = True
    return _configured


def current_span() -> Span | None:
    """The active span if it records (tracing on, inside a traced request), else None."""
    active = trace.get_current_span()
    return active if active.is_recording() else None


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A span around a block, with `kronk.*` attributes (None values are left out)."""
    with tracer.start_as_current_span(name) as current:
        current.set_attributes(_kronk_attributes(attributes))
        yield current


def record_span(parent: Span, name: str, seconds: float, **attributes: Any) -> None:
    """Add a finished child span to `parent` that lasted `seconds` and ends now (work
    that was timed piecemeal, like parsing a stream, is shown as one block)."""
    if not parent.is_recording():
        return
    end = time.time_ns()
    _record(name, parent, end - _ns(seconds), end, _kronk_attributes(attributes))


def record_engine_phases(model: str, request: GenerationRequest, event: Finished | Failed) -> None:
    """Record a finished request's engine phases under the span it was submitted in (an
    engine listener: called on the engine thread when the request ends)."""
    parent = request.span
    if not isinstance(parent, Span) or not parent.is_recording() or isinstance(event, Failed):
        return
    u = event.usage
    end = time.time_ns()
    decode_start = end - _ns(u.generation_seconds)
    admitted = decode_start - _ns(u.prompt_seconds)
    submitted = admitted - _ns(u.queue_seconds)
    lookup_start = admitted - _ns(u.cache_lookup_seconds)
    common = {"model": model, "slot": u.slot if u.slot >= 0 else None}
    generation = _record(
        "kronk.generation",
        parent,
        submitted,
        end,
        _kronk_attributes(
            {
                **common,
                "prompt_tokens": u.prompt_tokens,
                "cached_tokens": u.cached_tokens,
                "completion_tokens": u.completion_tokens,
                "finish_reason": event.reason,
                "time_to_first_token": u.time_to_first_token if u.completion_tokens else None,
                "tokens_per_second": u.tokens_per_second or None,
            }
        ),
    )
    phase = _kronk_attributes(common)
    _record("kronk.queue_wait", generation, submitted, lookup_start, phase)
    if u.slot < 0:  # never admitted (cancelled while queued)
        return
    tokens = {"kronk.prompt_tokens": u.prompt_tokens, "kronk.cached_tokens": u.cached_tokens}
    cached = {**phase, **tokens}
    _record("kronk.cache_lookup", generation, lookup_start, admitted, cached)
    _record("kronk.prefill", generation, admitted, decode_start, cached)
    if not u.completion_tokens:
        return
    generated = {**phase, "kronk.completion_tokens": u.completion_tokens}
    decode = _record("kronk.decode", generation, decode_start, end, generated)
    detokenize_start = max(decode_start, end - _ns(u.detokenize_seconds))
    _record("kronk.detokenize", decode, detokenize_start, end, generated)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _kronk_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {f"kronk.{key}": value for key, value in attributes.items() if value is not None}


def _record(name: str, parent: Span, start: int, end: int, attributes: dict[str, Any]) -> Span:
    child = tracer.start_span(
        name,
        context=trace.set_span_in_context(parent),
        start_time=start,
        attributes=attributes,
    )
    child.end(end_time=end)
    return child
