"""Metrics move with the requests that feed them; spans carry the engine's phases.

Spans go to the real OpenTelemetry SDK: a `TracerProvider` with an in-memory exporter
swapped in for kronk's tracer (the process-wide provider is never touched), or the real
OTLP/HTTP exporter posting to a receiver on loopback.
"""

from __future__ import annotations

import hashlib
import itertools
import queue
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id
from prometheus_client.parser import text_string_to_metric_families

from kronk import Kronk
from kronk.engine.engine import Engine, EngineConfig
from kronk.engine.request import Event, Failed, Finished, GenerationRequest
from kronk.errors import ContextFullError
from kronk.home import KronkHome
from kronk.llama import LlamaModel, SamplingParams
from kronk.models.store import ModelStore
from kronk.telemetry import tracing
from kronk.telemetry.metrics import Metrics, context_bucket
from support.file_server import FileServer
from support.live_server import live_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
MODEL = (("model", "tiny"),)
ENGINE_PHASES = ("kronk.queue_wait", "kronk.cache_lookup", "kronk.prefill", "kronk.decode")


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> Iterator[Engine]:
    model = LlamaModel.load(tiny_llama_path)
    eng = Engine(model, EngineConfig(n_ctx=256, n_seq_max=2, n_threads=2))
    yield eng
    eng.close()
    model.close()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for the duration of a test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    original = tracing.tracer
    tracing.tracer = provider.get_tracer("test")
    try:
        yield exporter
    finally:
        tracing.tracer = original
        provider.shutdown()


def finish(engine: Engine, prompt: list[int], max_tokens: int = 4) -> Finished:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    engine.submit(
        GenerationRequest(
            prompt, SamplingParams(temperature=0), max_tokens=max_tokens, ignore_eos=True
        ),
        events.put,
    )
    while True:
        event = events.get()
        if isinstance(event, Finished):
            return event
        assert not isinstance(event, Failed)


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def samples(metrics: Metrics) -> Samples:
    return parse(metrics.render().decode())


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in exporter.get_finished_spans():
        out.setdefault(s.name, []).append(s)
    return out


def parent_of(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


# -- metrics ---------------------------------------------------------------------------------


def test_a_request_moves_its_counters_and_gauges(engine: Engine) -> None:
    metrics = Metrics()
    metrics.watch("tiny", engine)
    metrics.set_stats_source(lambda: {"tiny": engine.stats()})
    before = samples(metrics)
    assert before[("kronk_slots", MODEL)] == 2
    prompt = [1, 2, 3, 4, 5]
    first = finish(engine, prompt, max_tokens=6)
    second = finish(engine, prompt, max_tokens=6)  # same prompt: cache hit
    assert second.usage.cached_tokens > first.usage.cached_tokens
    after = samples(metrics)
    assert after[("kronk_requests_total", (("finish_reason", "length"), *MODEL))] == 2
    assert after[("kronk_generated_tokens_total", MODEL)] == 12
    assert after[("kronk_prompt_tokens_total", MODEL)] == 2 * len(prompt)
    cached = first.usage.cached_tokens + second.usage.cached_tokens
    assert after[("kronk_prompt_cache_hit_tokens_total", MODEL)] == cached
    assert after[("kronk_time_to_first_token_seconds_count", MODEL)] == 2
    assert after[("kronk_queue_wait_seconds_count", MODEL)] == 2
    small = (("context", "<1k"), *MODEL)
    assert after[("kronk_decode_tokens_per_second_count", small)] == 2
    assert after[("kronk_prefill_tokens_per_second_count", small)] == 2
    assert after[("kronk_kv_cache_cells_used", MODEL)] > 0
    assert after[("kronk_kv_cache_used_bytes", MODEL)] > 0
    assert after[("kronk_kv_cache_bytes", MODEL)] >= after[("kronk_kv_cache_used_bytes", MODEL)]
    assert 0 < after[("kronk_prompt_cache_hit_ratio", MODEL)] < 1
    assert after[("kronk_slots_active", MODEL)] == 0
    assert after[("kronk_queue_depth", MODEL)] == 0
    live = metrics.live("tiny", engine.stats())
    assert (live["requests_finished"], live["requests_failed"]) == (2, 0)
    assert live["tokens_per_second"] > 0 and live["prompt_tokens_per_second"] > 0
    assert live["time_to_first_token"] > 0
    assert live["prompt_cache_hit_ratio"] == after[("kronk_prompt_cache_hit_ratio", MODEL)]
    assert live["kv_cache_cells_used"] == after[("kronk_kv_cache_cells_used", MODEL)]


def test_failed_and_rejected_requests_count_as_errors(tiny_llama_path: Path) -> None:
    model = LlamaModel.load(tiny_llama_path)
    eng = Engine(model, EngineConfig(n_ctx=64, n_seq_max=1, n_threads=2))
    metrics = Metrics()
    metrics.watch("tiny", eng)
    with pytest.raises(ContextFullError):
        eng.submit(GenerationRequest([1] * eng.n_ctx), lambda _: None)
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    eng.submit(GenerationRequest([1, 2], max_tokens=50, ignore_eos=True), events.put)
    events.get()  # the first request is running
    eng.submit(GenerationRequest([1, 2], max_tokens=50, ignore_eos=True), events.put)
    eng.close()  # the running one is cancelled, the queued one fails with EngineClosedError
    model.close()
    values = samples(metrics)
    assert values[("kronk_requests_total", (("finish_reason", "cancelled"), *MODEL))] == 1
    for error in ("EngineClosedError", "ContextFullError"):
        assert values[("kronk_request_errors_total", (("error", error), *MODEL))] == 1


def test_context_buckets() -> None:
    assert [context_bucket(n) for n in (10, 1023, 1024, 4095, 5000, 16384, 20000)] == [
        "<1k",
        "<1k",
        "1k-4k",
        "1k-4k",
        "4k-16k",
        "16k+",
        "16k+",
    ]


def test_the_metrics_endpoint_follows_requests(tiny_llama_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with live_server(
        {"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256, "n_threads": 1}
    ) as srv:
        http = srv.http()
        response = http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        before = parse(response.text)
        client = srv.openai()
        usages = [
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=3).usage
            for _ in range(2)  # the second reuses the first one's prompt from the KV cache
        ]
        too_long = http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hi " * 400}]},
        )
        unknown = http.post("/v1/chat/completions", json={"model": "nope", "messages": messages})
        assert (too_long.status_code, unknown.status_code) == (413, 404)
        after = parse(http.get("/metrics").text)
        (loaded,) = http.get("/api/ps").json()["models"]
        live = srv.app.state.telemetry.live()["tiny"]

    def moved(name: str, labels: tuple[tuple[str, str], ...] = MODEL) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    u1, u2 = usages
    assert u1 is not None and u2 is not None
    assert u1.prompt_tokens_details is not None and u2.prompt_tokens_details is not None
    assert u2.prompt_tokens_details.cached_tokens > 0
    for u in (u1, u2):  # kronk's timings ride along in `usage`
        assert u.model_extra is not None
        assert u.model_extra["time_to_first_token"] > 0
        assert u.model_extra["prompt_tokens_per_second"] > 0
    requests = sum(
        v
        for (name, labels), v in after.items()
        if name == "kronk_requests_total" and ("model", "tiny") in labels
    )
    assert requests == 2
    assert moved("kronk_prompt_tokens_total") == u1.prompt_tokens + u2.prompt_tokens
    assert moved("kronk_generated_tokens_total") == u1.completion_tokens + u2.completion_tokens
    cached = u1.prompt_tokens_details.cached_tokens + u2.prompt_tokens_details.cached_tokens
    assert moved("kronk_prompt_cache_hit_tokens_total") == cached
    assert moved("kronk_time_to_first_token_seconds_count") == 2
    assert moved("kronk_queue_wait_seconds_count") == 2
    assert moved("kronk_request_errors_total", (("error", "ContextFullError"), *MODEL)) == 1
    assert moved("kronk_model_load_seconds_count") == 1
    assert after[("kronk_slots", MODEL)] == loaded["slots"]
    assert (live["requests_finished"], live["requests_failed"]) == (2, 1)
    assert live["time_to_first_token"] > 0
    assert after[("kronk_kv_cache_cells_used", MODEL)] > 0
    assert after[("kronk_prompt_cache_hit_ratio", MODEL)] > 0
    chat = (("method", "POST"), ("route", "/v1/chat/completions"))
    assert moved("kronk_http_requests_total", (*chat, ("status", "200"))) == 2
    assert moved("kronk_http_requests_total", (*chat, ("status", "413"))) == 1
    assert moved("kronk_http_requests_total", (*chat, ("status", "404"))) == 1
    assert moved("kronk_http_request_duration_seconds_count", chat) == 4


# -- spans -----------------------------------------------------------------------------------


def test_tracing_is_off_by_default(engine: Engine) -> None:
    assert tracing.configure_tracing(None) is False
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    request = GenerationRequest([1, 2, 3], max_tokens=1)
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    engine.submit(request, events.put)
    while not isinstance(events.get(), Finished):
        pass
    assert request.span is None  # nothing to record afterwards either


def test_an_sdk_chat_records_every_phase_with_its_attributes(
    tiny_llama_path: Path, spans: InMemorySpanExporter
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with Kronk(tiny_llama_path, model_id="tiny", n_ctx=128, n_seq_max=1, n_threads=1) as k:
        with tracing.tracer.start_as_current_span("turn 1"):
            first = k.chat(messages, max_tokens=3, temperature=0)
        with tracing.tracer.start_as_current_span("turn 2"):
            second = k.chat(messages, max_tokens=3, temperature=0)
    assert first.usage is not None and second.usage is not None
    found = by_name(spans)
    roots = {found[name][0].context.span_id: name for name in ("turn 1", "turn 2")}
    for name in ("kronk.template_render", "kronk.tokenize", "kronk.generation", "kronk.parse"):
        assert sorted(roots[parent_of(s)] for s in found[name]) == ["turn 1", "turn 2"], name
    generations = {roots[parent_of(g)]: g for g in found["kronk.generation"]}
    for turn, usage in (("turn 1", first.usage), ("turn 2", second.usage)):
        g = generations[turn]
        assert g.attributes is not None
        assert g.attributes["kronk.model"] == "tiny"
        assert g.attributes["kronk.slot"] == 0
        assert g.attributes["kronk.prompt_tokens"] == usage.prompt_tokens
        assert g.attributes["kronk.cached_tokens"] == usage.prompt_tokens_details.cached_tokens
        assert g.attributes["kronk.completion_tokens"] == usage.completion_tokens
        phases = {
            s.name: s
            for spans_ in found.values()
            for s in spans_
            if parent_of(s) == g.context.span_id
        }
        assert set(phases) == set(ENGINE_PHASES)
        ordered = [phases[name] for name in ENGINE_PHASES]
        assert ordered[0].start_time == g.start_time and ordered[-1].end_time == g.end_time
        for earlier, later in itertools.pairwise(ordered):
            assert earlier.end_time == later.start_time, (earlier.name, later.name)
        for s in ordered:
            assert s.attributes is not None and s.attributes["kronk.slot"] == 0
        lookup = phases["kronk.cache_lookup"].attributes
        assert lookup is not None
        assert lookup["kronk.cached_tokens"] == usage.prompt_tokens_details.cached_tokens
        decode = phases["kronk.decode"]
        (detokenize,) = [
            d for d in found["kronk.detokenize"] if parent_of(d) == decode.context.span_id
        ]
        assert detokenize.attributes is not None
        assert detokenize.attributes["kronk.completion_tokens"] == usage.completion_tokens
        assert decode.start_time <= detokenize.start_time <= detokenize.end_time == decode.end_time
    # The second turn found the first one's prompt in the slot's KV cache.
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    tokenized = {roots[parent_of(s)]: s for s in found["kronk.tokenize"]}
    assert tokenized["turn 1"].attributes is not None
    assert tokenized["turn 1"].attributes["kronk.prompt_tokens"] == first.usage.prompt_tokens


def test_server_requests_are_traced_end_to_end(
    tiny_llama_path: Path, spans: InMemorySpanExporter
) -> None:
    with live_server({"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256}) as srv:
        srv.openai().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    found = by_name(spans)
    (request,) = found["POST /v1/chat/completions"]
    assert request.attributes is not None
    assert request.attributes["http.route"] == "/v1/chat/completions"
    assert request.attributes["http.response.status_code"] == 200
    request_id = request.context.span_id
    for name in (
        "kronk.model_load",
        "kronk.template_render",
        "kronk.tokenize",
        "kronk.generation",
        "kronk.parse",
    ):
        (s,) = found[name]
        assert parent_of(s) == request_id, name
        assert s.attributes is not None and s.attributes["kronk.model"] == "tiny", name
    (generation,) = found["kronk.generation"]
    for name in ENGINE_PHASES:
        (s,) = found[name]
        assert parent_of(s) == generation.context.span_id, name


def test_downloads_are_traced(
    tiny_llama_path: Path, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    data = tiny_llama_path.read_bytes()
    with FileServer() as server:
        url = server.add("/files/tiny.gguf", data)
        home = KronkHome.resolve(tmp_path / "home", environ={})
        ModelStore(home, retries=0, retry_backoff=0).pull(
            url, sha256=hashlib.sha256(data).hexdigest()
        )
    (download,) = by_name(spans)["kronk.download"]
    assert download.attributes is not None and download.attributes["kronk.ref"] == url


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector: keeps what is posted to it."""

    posts: queue.SimpleQueue[tuple[str, str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.put((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_spans_are_exported_over_otlp_http() -> None:
    posts: queue.SimpleQueue[tuple[str, str, bytes]] = queue.SimpleQueue()
    handler = type("Receiver", (_Receiver,), {"posts": posts})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as collector:
        thread = threading.Thread(target=collector.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{collector.server_address[1]}"
        url = tracing.otlp_traces_url({"OTEL_EXPORTER_OTLP_ENDPOINT": base + "/"})
        assert url == f"{base}/v1/traces"
        provider = tracing.tracer_provider(url, service_name="kronk-test")
        with provider.get_tracer("test").start_as_current_span("exported") as sent:
            sent.set_attribute("kronk.model", "tiny")
        assert provider.force_flush(30_000)
        provider.shutdown()
        collector.shutdown()
        thread.join()
    path, content_type, body = posts.get_nowait()
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    export = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "kronk-test"
    (got,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert got.name == "exported"
    assert got.span_id.hex() == format_span_id(sent.get_span_context().span_id)
    assert {a.key: a.value.string_value for a in got.attributes} == {"kronk.model": "tiny"}


def test_the_otlp_address_comes_from_the_environment() -> None:
    url = tracing.otlp_traces_url
    assert url({}) is None
    assert url({"KRONK_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318/v1/traces"
    assert (
        url({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "KRONK_OTLP_ENDPOINT": "http://b"})
        == "http://a:4318/v1/traces"
    )
    full = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x", "OTEL_EXPORTER_OTLP_ENDPOINT": "a"}
    assert url(full) == "http://t/x"
    assert url({**full, "OTEL_SDK_DISABLED": "true"}) is None
