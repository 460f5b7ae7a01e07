"""Prometheus metrics, per model and for HTTP.

Counters and histograms are fed by engine listeners (one call per finished request);
gauges (queue depth, slots, KV cache use) are read from the engines' stats when
Prometheus scrapes, so the decode loop never pays for them. `Metrics.live` sums the
same up for people (`/api/ps`, `kronk model ps`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from statistics import fmean

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kronk.engine.engine import Engine, EngineStats
from kronk.engine.request import Failed, Finished, GenerationRequest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SPEED_BUCKETS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000, 2000, 5000)
RECENT_REQUESTS = 32  # live stats average over this many of a model's latest requests


def context_bucket(tokens: int) -> str:
    """The request's context size class, so speed can be compared like for like."""
    if tokens < 1024:
        return "<1k"
    if tokens < 4096:
        return "1k-4k"
    if tokens < 16384:
        return "4k-16k"
    return "16k+"


@dataclass(frozen=True)
class KvUse:
    """What a model's KV cache holds now, from its engine's stats."""

    cells: int  # KV cells holding tokens, all slots
    used_bytes: float
    hit_ratio: float  # prompt tokens reused from the cache / all prompt tokens admitted

    @classmethod
    def of(cls, s: EngineStats) -> KvUse:
        cells = sum(s.slot_tokens)
        seen = s.tokens_cached + s.tokens_prefilled
        return cls(cells, cells * s.kv_bytes_per_token, s.tokens_cached / seen if seen else 0.0)


@dataclass
class _Recent:
    """One model's request counts and its latest requests' speeds."""

    finished: int = 0
    failed: int = 0
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))
    decode: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))
    prefill: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))


class Metrics:
    """All of kronk's metrics in one registry (one per server)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kronk_requests",
            "Generation requests that ended, by how they ended.",
            ["model", "finish_reason"],
            registry=r,
        )
        self.errors = Counter(
            "kronk_request_errors",
            "Generation requests that failed, by error class.",
            ["model", "error"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "kronk_queue_wait_seconds",
            "Time a request waited for a free slot.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "kronk_time_to_first_token_seconds",
            "From submit to the first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prefill_speed = Histogram(
            "kronk_prefill_tokens_per_second",
            "Prompt tokens computed per second (cached ones excluded), by prompt size.",
            ["model", "context"],
            buckets=_SPEED_BUCKETS,
            registry=r,
        )
        self.decode_speed = Histogram(
            "kronk_decode_tokens_per_second",
            "Generated tokens per second, by the request's context size (prompt + output).",
            ["model", "context"],
            buckets=_SPEED_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "kronk_prompt_tokens", "Prompt tokens of finished requests.", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "kronk_prompt_cache_hit_tokens",
            "Prompt tokens reused from the KV cache instead of computed.",
            ["model"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "kronk_generated_tokens", "Tokens generated.", ["model"], registry=r
        )
        # Speculative decoding: accepted / drafted is the acceptance rate.
        self.draft_tokens = Counter(
            "kronk_speculative_draft_tokens",
            "Draft tokens verified by the model (speculative decoding).",
            ["model"],
            registry=r,
        )
        self.draft_accepted = Counter(
            "kronk_speculative_accepted_tokens",
            "Draft tokens the model kept: tokens that cost no decode step of their own.",
            ["model"],
            registry=r,
        )
        self.model_load = Histogram(
            "kronk_model_load_seconds",
            "Time to load a model.",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.http_requests = Counter(
            "kronk_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "kronk_http_request_duration_seconds",
            "HTTP request latency (streams: until the last byte).",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Server-side tools (docs/tools.md): calls by tool and outcome (ok, error, cancelled,
        # timeout), and how long they took.
        self.tool_calls = Counter(
            "kronk_tool_calls",
            "Server-side tool calls, by tool and outcome.",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_latency = Histogram(
            "kronk_tool_call_seconds",
            "Server-side tool call latency.",
            ["tool"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._stats_source: Callable[[], Mapping[str, EngineStats]] = dict
        self._recent_lock = threading.Lock()
        self._recent: dict[str, _Recent] = {}
        r.register(_EngineCollector(self))

    def watch(self, model_id: str, engine: Engine) -> None:
        """Count every request `engine` finishes under `model_id`."""
        engine.add_listener(partial(self._on_request_end, model_id))

    def set_stats_source(self, source: Callable[[], Mapping[str, EngineStats]]) -> None:
        """Where scrape-time gauges come from: the loaded models' engine stats."""
        self._stats_source = source

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)

    def observe_tool(self, tool: str, outcome: str, seconds: float) -> None:
        self.tool_calls.labels(tool, outcome).inc()
        self.tool_latency.labels(tool).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def live(self, model: str, stats: EngineStats) -> dict[str, float]:
        """Live stats of a loaded model: requests so far, mean time to first token and
        speeds over its latest requests, and its KV cache and prompt-cache use now."""
        with self._recent_lock:
            recent = self._recent.get(model, _Recent())
            ttft, decode, prefill = list(recent.ttft), list(recent.decode), list(recent.prefill)
            finished, failed = recent.finished, recent.failed
        kv = KvUse.of(stats)
        return {
            "requests_finished": finished,
            "requests_failed": failed,
            "time_to_first_token": fmean(ttft) if ttft else 0.0,
            "tokens_per_second": fmean(decode) if decode else 0.0,
            "prompt_tokens_per_second": fmean(prefill) if prefill else 0.0,
            "prompt_cache_hit_ratio": kv.hit_ratio,
            "kv_cache_cells_used": kv.cells,
            "kv_cache_used_bytes": kv.used_bytes,
            # Since the load; "-" in `kronk model ps` until a draft was verified.
            "speculative_acceptance_rate": stats.acceptance_rate,
        }

    def _on_request_end(
        self, model: str, request: GenerationRequest, event: Finished | Failed
    ) -> None:
        if isinstance(event, Failed):
            self.errors.labels(model, type(event.error).__name__).inc()
            with self._recent_lock:
                self._recent.setdefault(model, _Recent()).failed += 1
            return
        u = event.usage
        with self._recent_lock:
            recent = self._recent.setdefault(model, _Recent())
            recent.finished += 1
            if u.completion_tokens:
                recent.ttft.append(u.time_to_first_token)
            if u.tokens_per_second > 0:
                recent.decode.append(u.tokens_per_second)
            if u.prompt_tokens_per_second > 0:
                recent.prefill.append(u.prompt_tokens_per_second)
        self.requests.labels(model, event.reason).inc()
        self.queue_wait.labels(model).observe(u.queue_seconds)
        self.prompt_tokens.labels(model).inc(u.prompt_tokens)
        self.cached_tokens.labels(model).inc(u.cached_tokens)
        self.generated_tokens.labels(model).inc(u.completion_tokens)
        if u.draft_tokens:
            self.draft_tokens.labels(model).inc(u.draft_tokens)
            self.draft_accepted.labels(model).inc(u.draft_accepted)
        if u.completion_tokens:
            self.ttft.labels(model).observe(u.time_to_first_token)
        if u.prompt_tokens_per_second > 0:
            bucket = context_bucket(u.prompt_tokens)
            self.prefill_speed.labels(model, bucket).observe(u.prompt_tokens_per_second)
        if u.tokens_per_second > 0:
            bucket = context_bucket(u.prompt_tokens + u.completion_tokens)
            self.decode_speed.labels(model, bucket).observe(u.tokens_per_second)


class _EngineCollector(Collector):
    """Scrape-time gauges from each loaded model's engine."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["model"])

        families = {
            "queue": gauge("kronk_queue_depth", "Requests waiting for a slot."),
            "busy": gauge("kronk_slots_active", "Slots serving a request."),
            "slots": gauge("kronk_slots", "Slots (parallel sequences) of the model."),
            "cells": gauge("kronk_kv_cache_cells_used", "KV cache cells holding tokens."),
            "kv_used": gauge("kronk_kv_cache_used_bytes", "KV cache bytes holding tokens."),
            "kv_total": gauge("kronk_kv_cache_bytes", "KV cache size."),
            "ratio": gauge(
                "kronk_prompt_cache_hit_ratio", "Share of prompt tokens reused from the cache."
            ),
            "host": gauge(
                "kronk_prompt_cache_host_bytes", "Host memory holding saved prompt states."
            ),
            "host_budget": gauge(
                "kronk_prompt_cache_budget_bytes", "The most the saved prompt states may take."
            ),
        }
        for model, s in self._metrics._stats_source().items():
            kv = KvUse.of(s)
            values = {
                "queue": s.queued,
                "busy": s.slots_busy,
                "slots": s.slots,
                "cells": kv.cells,
                "kv_used": kv.used_bytes,
                "kv_total": s.kv_cache_bytes,
                "ratio": kv.hit_ratio,
                "host": s.prompt_cache_bytes,
                "host_budget": s.prompt_cache_budget,
            }
            for key, family in families.items():
                family.add_metric([model], float(values[key]))
        yield from families.values()
