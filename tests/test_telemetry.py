"""Metrics move with the requests that feed them; spans carry the engine's phases."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from kronk.engine.engine import Engine, EngineConfig
from kronk.engine.request import Event, Failed, Finished, GenerationRequest
from kronk.llama import LlamaModel, SamplingParams
from kronk.telemetry import tracing
from kronk.telemetry.metrics import Metrics, context_bucket


@pytest.fixture(scope="module")
def engine(tiny_llama_path: Path) -> Iterator[Engine]:
    model = LlamaModel.load(tiny_llama_path)
    eng = Engine(model, EngineConfig(n_ctx=256, n_seq_max=2, n_threads=2))
    yield eng
    eng.close()
    model.close()


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


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_request_moves_its_counters_and_gauges(engine: Engine) -> None:
    metrics = Metrics()
    metrics.watch("tiny", engine)
    metrics.set_stats_source(lambda: {"tiny": engine.stats()})
    before = samples(metrics)
    assert before[("kronk_slots", (("model", "tiny"),))] == 2
    finish(engine, [1, 2, 3, 4, 5], max_tokens=6)
    finish(engine, [1, 2, 3, 4, 5], max_tokens=6)  # same prompt: cache hit
    after = samples(metrics)
    model = (("model", "tiny"),)
    assert after[("kronk_requests_total", (("finish_reason", "length"), ("model", "tiny")))] == 2
    assert after[("kronk_generated_tokens_total", model)] == 12
    assert after[("kronk_prompt_tokens_total", model)] == 10
    assert after[("kronk_prompt_cache_hit_tokens_total", model)] == 4
    assert after[("kronk_time_to_first_token_seconds_count", model)] == 2
    assert (
        after[("kronk_decode_tokens_per_second_count", (("context", "<1k"), ("model", "tiny")))]
        == 2
    )
    assert after[("kronk_kv_cache_cells_used", model)] > 0
    assert after[("kronk_kv_cache_bytes", model)] > 0
    assert 0 < after[("kronk_prompt_cache_hit_ratio", model)] < 1


def test_failed_requests_count_as_errors(tiny_llama_path: Path) -> None:
    model = LlamaModel.load(tiny_llama_path)
    eng = Engine(model, EngineConfig(n_ctx=64, n_seq_max=1, n_threads=2))
    metrics = Metrics()
    metrics.watch("tiny", eng)
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    eng.submit(GenerationRequest([1, 2], max_tokens=50, ignore_eos=True), events.put)
    events.get()  # the first request is running
    eng.submit(GenerationRequest([1, 2], max_tokens=50, ignore_eos=True), events.put)
    eng.close()  # the running one is cancelled, the queued one fails with EngineClosedError
    model.close()
    values = samples(metrics)
    assert (
        values[("kronk_requests_total", (("finish_reason", "cancelled"), ("model", "tiny")))] == 1
    )
    assert (
        values[("kronk_request_errors_total", (("error", "EngineClosedError"), ("model", "tiny")))]
        == 1
    )


def test_context_buckets() -> None:
    assert [context_bucket(n) for n in (10, 1024, 5000, 20000)] == [
        "<1k",
        "1k-4k",
        "4k-16k",
        "16k+",
    ]


def test_engine_phases_become_child_spans(engine: Engine) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    original = tracing.tracer
    tracing.tracer = tracer
    try:
        with tracer.start_as_current_span("request"):
            request = GenerationRequest([1, 2, 3], SamplingParams(temperature=0), max_tokens=3)
            events: queue.SimpleQueue[Event] = queue.SimpleQueue()
            engine.submit(request, events.put)  # captures the current span
            while not isinstance(event := events.get(), Finished):
                pass
            tracing.record_engine_phases(request, event)
    finally:
        tracing.tracer = original
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"request", "kronk.queue_wait", "kronk.prefill", "kronk.decode"} <= set(spans)
    request_id = spans["request"].context.span_id
    for name in ("kronk.queue_wait", "kronk.prefill", "kronk.decode"):
        assert spans[name].parent is not None and spans[name].parent.span_id == request_id
    assert spans["kronk.decode"].attributes["kronk.completion_tokens"] == 3
    assert spans["kronk.prefill"].start_time <= spans["kronk.decode"].start_time
    assert trace.get_tracer_provider() is not provider  # the global provider was not touched


def test_the_metrics_endpoint_follows_requests(tiny_llama_path: Path) -> None:
    from support.live_server import live_server

    with live_server(
        {"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256, "n_threads": 1}
    ) as srv:
        http = srv.http()
        before = http.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        srv.openai().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        http.post(
            "/v1/chat/completions",
            json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        )
        text = http.get("/metrics").text
    families = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    chat = (("method", "POST"), ("route", "/v1/chat/completions"))
    assert families[("kronk_http_requests_total", (*chat, ("status", "200")))] == 1
    assert families[("kronk_http_requests_total", (*chat, ("status", "404")))] == 1
    assert families[("kronk_generated_tokens_total", (("model", "tiny"),))] >= 1
    assert families[("kronk_model_load_seconds_count", (("model", "tiny"),))] == 1
    assert families[("kronk_slots", (("model", "tiny"),))] >= 1


def test_sdk_and_pool_work_is_traced(tiny_llama_path: Path) -> None:
    from kronk import Kronk

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    original = tracing.tracer
    tracing.tracer = provider.get_tracer("test")
    try:
        with Kronk(tiny_llama_path, n_ctx=128, n_seq_max=1, n_threads=1) as k:
            k.chat([{"role": "user", "content": "hi"}], max_tokens=2)
    finally:
        tracing.tracer = original
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["kronk.template_render"].attributes["kronk.messages"] == 1
    assert spans["kronk.tokenize"].attributes["kronk.prompt_tokens"] > 0
