"""Mechanics of the OpenAI-compatible API on tiny random-weight models, driven over
real sockets by the official `openai` client and, for what it can't send, httpx.

The tiny models speak nonsense; these tests check shapes, streams, statuses and error
objects. Behaviour on the real model is in test_server_behaviour.py.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from kronk.models.resolver import ResolvedModel
from support.live_server import LiveServer, live_server
from support.tiny_gguf import THINKING_TEMPLATE, write_not_gguf

N_CTX = 256
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def srv(
    tiny_llama_path: Path, tiny_bert_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("server-api")
    broken = write_not_gguf(folder / "broken.gguf")
    thinking = folder / "thinking.jinja"
    thinking.write_text(THINKING_TEMPLATE)
    models = {
        "tiny": tiny_llama_path,
        "bert": ResolvedModel(id="bert", path=tiny_bert_path, capabilities=None),
        # The same weights, but a catalog that knows it was not trained for truncation.
        "bert-fixed": ResolvedModel(
            id="bert-fixed", path=tiny_bert_path, capabilities=frozenset({"embedding"})
        ),
        "broken": broken,
        "thinker": ResolvedModel(
            id="thinker", path=tiny_llama_path, load_options={"chat_template": str(thinking)}
        ),
    }
    defaults = {"n_ctx": N_CTX, "n_seq_max": 2, "n_threads": 1}
    with live_server(models, load_defaults=defaults, models_max=len(models)) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv: LiveServer) -> openai.OpenAI:
    return srv.openai()


def sse_events(raw: str) -> list[str]:
    """The data lines of a server-sent event stream, in order."""
    return [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]


# -- health and models ---------------------------------------------------------------------


def test_health_and_readiness(srv: LiveServer) -> None:
    with srv.http() as http:
        assert http.get("/health").json() == {"status": "ok"}
        ready = http.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"


def test_models_list_and_lookup(srv: LiveServer, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny", "bert", "bert-fixed", "broken", "thinker"]
    model = client.models.retrieve("tiny")
    assert (model.id, model.object, model.owned_by) == ("tiny", "model", "kronk")
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_api_ps_reports_loaded_models(srv: LiveServer, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=2, extra_body={"ignore_eos": True}
    )
    with srv.http() as http:
        models = {m["id"]: m for m in http.get("/api/ps").json()["models"]}
    tiny = models["tiny"]
    # KV memory per slot: the lowest slot keeps the request's tokens (the last generated
    # token is never fed back); each token costs the same bytes.
    assert resp.usage is not None
    assert tiny["slot_tokens"][0] == resp.usage.prompt_tokens + 1
    per_token = tiny["slot_kv_bytes"][0] / tiny["slot_tokens"][0]
    assert per_token > 0
    assert tiny["kv_cache_bytes"] == pytest.approx(per_token * N_CTX * tiny["slots"], rel=0.01)
    assert len(tiny["slot_kv_bytes"]) == tiny["slots"]
    assert tiny["status"] == "ready"
    assert tiny["slots"] == 2 and tiny["slots_in_use"] == 0 and tiny["leases"] == 0
    assert tiny["n_ctx"] == N_CTX
    assert tiny["memory_bytes"] == tiny["size_bytes"] + tiny["kv_cache_bytes"] > 0
    assert tiny["expires_at"] > tiny["last_used"]
    assert tiny["requests_total"] >= 1


# -- chat completions ----------------------------------------------------------------------


def test_chat_completion_shape(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.model == "tiny"
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 5


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=USER,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_wire_format(srv: LiveServer) -> None:
    body = {"model": "tiny", "messages": USER, "max_tokens": 3, "stream": True}
    with srv.http() as http:
        resp = http.post("/v1/chat/completions", json=body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)  # only with include_usage
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # OpenAI leaves unset delta fields out rather than sending nulls.
    assert all(None not in c["choices"][0]["delta"].values() for c in chunks)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny",
        messages=USER,
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    logprobs = resp.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == 4
    for token in logprobs.content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2


def test_sampling_parameters_reach_the_sampler(client: openai.OpenAI) -> None:
    def answer(**params: Any) -> str:
        extra = {"ignore_eos": True, **params.pop("extra_body", {})}
        resp = client.chat.completions.create(
            model="tiny", messages=USER, max_tokens=6, extra_body=extra, **params
        )
        return resp.choices[0].message.content or ""

    greedy = answer(temperature=0)
    # llama.cpp's top_k as an extra body field: keeping one candidate is greedy decoding.
    assert answer(temperature=1.5, seed=3, extra_body={"top_k": 1}) == greedy
    assert answer(temperature=1.5, seed=11) == answer(temperature=1.5, seed=11)
    short = client.chat.completions.create(
        model="tiny", messages=USER, max_completion_tokens=3, extra_body={"ignore_eos": True}
    )
    assert short.usage is not None and short.usage.completion_tokens == 3


def test_chat_with_a_message_history_and_content_parts(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
        max_tokens=2,
        extra_body={"metadata": {"chat_id": "x"}, "store": False, "cache_prompt": True},
    )
    assert resp.choices[0].message.content is not None


def test_reasoning_content_and_turning_thinking_off(client: openai.OpenAI) -> None:
    greedy: dict[str, Any] = {"max_tokens": 8, "temperature": 0, "extra_body": {"ignore_eos": True}}
    thinking = client.chat.completions.create(model="thinker", messages=USER, **greedy)
    message = thinking.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning_content")
    assert reasoning and message.content == ""  # the think block never closed
    chunks = list(
        client.chat.completions.create(model="thinker", messages=USER, stream=True, **greedy)
    )
    streamed = [(c.choices[0].delta.model_extra or {}) for c in chunks if c.choices]
    assert "".join(d.get("reasoning_content") or "" for d in streamed) == reasoning
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)

    # Both ways of turning thinking off render the think block closed: all content.
    off = client.chat.completions.create(
        model="thinker", messages=USER, reasoning_effort="none", **greedy
    ).choices[0]
    assert off.message.content and "reasoning_content" not in (off.message.model_extra or {})
    kwargs = {**greedy["extra_body"], "chat_template_kwargs": {"enable_thinking": False}}
    also_off = client.chat.completions.create(
        model="thinker", messages=USER, **{**greedy, "extra_body": kwargs}
    ).choices[0]
    assert also_off.message.content == off.message.content


def test_responses_reasoning_item_and_effort_none(client: openai.OpenAI) -> None:
    common: dict[str, Any] = {"max_output_tokens": 8, "temperature": 0}
    resp = client.responses.create(model="thinker", input="hello", **common)
    (item,) = resp.output  # cut off while still thinking: reasoning only
    assert item.type == "reasoning" and item.content and item.content[0].text
    events = list(client.responses.create(model="thinker", input="hello", stream=True, **common))
    deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert "".join(deltas) == item.content[0].text
    off = client.responses.create(
        model="thinker", input="hello", reasoning={"effort": "none"}, **common
    )
    assert [i.type for i in off.output] == ["message"] and off.output_text


# -- completions ---------------------------------------------------------------------------


def test_completion_echo_and_logprobs(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="tiny",
        prompt="hello",
        max_tokens=3,
        echo=True,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    choice = resp.choices[0]
    assert choice.text.startswith("hello")
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert len(choice.logprobs.tokens) == 3
    assert choice.logprobs.text_offset is not None and choice.logprobs.text_offset[0] == len(
        "hello"
    )


def test_completion_fill_in_the_middle(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="tiny", prompt="def f():", suffix="return 1", max_tokens=3, temperature=0
    )
    assert resp.usage is not None and resp.usage.prompt_tokens > 3  # FIM tokens added


def test_completion_batch_of_prompts(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="tiny", prompt=["one", "two", "three"], max_tokens=2, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage is not None and resp.usage.completion_tokens == 6


def test_completion_stream_of_a_batch(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=[[1, 2, 3], [4, 5, 6]],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    finished = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices}
    finished = {i: r for i, r in finished.items() if r}
    assert finished == {0: "length", 1: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


# -- responses -----------------------------------------------------------------------------


def test_responses_create(client: openai.OpenAI) -> None:
    resp = client.responses.create(
        model="tiny", input="hello", instructions="Be brief.", max_output_tokens=4
    )
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.status in ("completed", "incomplete")
    (message,) = resp.output
    assert message.type == "message" and message.role == "assistant"
    assert resp.output_text == message.content[0].text  # type: ignore[union-attr]
    assert resp.usage is not None and resp.usage.output_tokens <= 4


def test_responses_stream_events(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="tiny",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
            max_output_tokens=5,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # stopped by max_output_tokens
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == deltas
    assert final.incomplete_details.reason == "max_output_tokens"


# -- embeddings ----------------------------------------------------------------------------


def test_embeddings_float_and_base64_agree(srv: LiveServer, client: openai.OpenAI) -> None:
    # The openai client asks for base64 by default and decodes it.
    decoded = client.embeddings.create(model="bert", input=["hello world", "a test"])
    with srv.http() as http:
        floats = http.post(
            "/v1/embeddings",
            json={"model": "bert", "input": ["hello world", "a test"], "encoding_format": "float"},
        ).json()
        raw = http.post(
            "/v1/embeddings",
            json={"model": "bert", "input": "hello world", "encoding_format": "base64"},
        ).json()
    assert [d.index for d in decoded.data] == [0, 1]
    for got, want in zip(decoded.data, floats["data"], strict=True):
        assert np.allclose(got.embedding, want["embedding"], atol=1e-6)
        assert math.isclose(float(np.linalg.norm(got.embedding)), 1.0, rel_tol=1e-4)
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, floats["data"][0]["embedding"], atol=1e-6)
    assert floats["usage"]["prompt_tokens"] > 0


def test_embeddings_of_token_ids_match_text(srv: LiveServer, client: openai.OpenAI) -> None:
    with srv.http() as http:
        tokens = http.post(
            "/v1/tokenize", json={"model": "bert", "content": "hello world", "add_special": True}
        ).json()["tokens"]
    by_text = client.embeddings.create(model="bert", input="hello world").data[0].embedding
    by_ids = client.embeddings.create(model="bert", input=[tokens]).data[0].embedding
    assert np.allclose(by_text, by_ids, atol=1e-5)


def test_embeddings_dimensions_truncate_and_renormalise(client: openai.OpenAI) -> None:
    full = np.asarray(client.embeddings.create(model="bert", input="hello").data[0].embedding)
    short = np.asarray(
        client.embeddings.create(model="bert", input="hello", dimensions=8).data[0].embedding
    )
    assert short.shape == (8,)
    assert math.isclose(float(np.linalg.norm(short)), 1.0, rel_tol=1e-5)
    assert np.allclose(short, full[:8] / np.linalg.norm(full[:8]), atol=1e-5)


# -- tokens --------------------------------------------------------------------------------


def test_tokenize_detokenize_round_trip(srv: LiveServer) -> None:
    with srv.http() as http:
        tok = http.post(
            "/v1/tokenize", json={"model": "tiny", "content": "hello world", "with_pieces": True}
        ).json()
        ids = [p["id"] for p in tok["tokens"]]
        assert "".join(p["piece"] for p in tok["tokens"]) == "hello world"
        assert tok["count"] == len(ids) and tok["max_model_len"] == N_CTX
        text = http.post("/v1/detokenize", json={"model": "tiny", "tokens": ids}).json()
        assert text["content"] == "hello world" == text["prompt"]
        chat = http.post(
            "/v1/tokenize", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        ).json()
        assert chat["count"] > 2  # the template's role markers count too


# -- errors --------------------------------------------------------------------------------

MSG = [{"role": "user", "content": "x"}]
CHAT = "/v1/chat/completions"


def nested_schema(depth: int) -> dict[str, Any]:
    """A JSON Schema of objects in objects, `depth` levels of them."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def nested_list(depth: int) -> list[Any]:
    """[[[...]]], `depth` lists deep."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


BAD_REQUESTS: list[tuple[str, Any, int, str | None]] = [
    # (path, body (bytes: sent raw), status, param)
    (CHAT, b"{bad json", 400, None),
    (CHAT, b"", 400, None),
    (CHAT, b"[1, 2]", 400, None),
    (
        CHAT,
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": NaN}',
        400,
        "top_p",
    ),
    (CHAT, {"messages": MSG}, 400, "model"),
    (CHAT, {"model": "tiny"}, 400, "messages"),
    (CHAT, {"model": "tiny", "messages": []}, 400, "messages"),
    (
        CHAT,
        {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "messages[0].role",
    ),
    (CHAT, {"model": "tiny", "messages": [{"role": "user"}]}, 400, "messages[0].content"),
    (
        CHAT,
        {
            "model": "tiny",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        400,
        "messages[0].content[0]",
    ),
    (CHAT, {"model": "tiny", "messages": MSG, "temperature": "hot"}, 400, "temperature"),
    (CHAT, {"model": "tiny", "messages": MSG, "temperature": -1}, 400, "temperature"),
    (CHAT, {"model": "tiny", "messages": MSG, "top_p": 2}, 400, "top_p"),
    (CHAT, {"model": "tiny", "messages": MSG, "max_tokens": 0}, 400, "max_tokens"),
    (
        CHAT,
        {"model": "tiny", "messages": MSG, "top_logprobs": 50, "logprobs": True},
        400,
        "top_logprobs",
    ),
    (CHAT, {"model": "tiny", "messages": MSG, "top_logprobs": 2}, 400, "top_logprobs"),
    (CHAT, {"model": "tiny", "messages": MSG, "n": 0}, 400, "n"),
    (CHAT, {"model": "tiny", "messages": MSG, "temprature": 1}, 400, "temprature"),
    (CHAT, {"model": "tiny", "messages": MSG, "stream": "maybe"}, 400, "stream"),
    (
        CHAT,
        {"model": "tiny", "messages": MSG, "stream_options": {"include_usage": "x"}},
        400,
        "stream_options.include_usage",
    ),
    (CHAT, {"model": "tiny", "messages": MSG, "stop": ["s"] * 20}, 400, "stop"),
    (CHAT, {"model": "tiny", "messages": MSG, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    (CHAT, {"model": "tiny", "messages": MSG, "grammar": "root ::= undefined"}, 400, "grammar"),
    # A grammar that parses but allows no token: found while sampling, still the caller's.
    (CHAT, {"model": "tiny", "messages": MSG, "grammar": "root ::= [z-a]"}, 400, "grammar"),
    (
        CHAT,
        {"model": "tiny", "messages": MSG, "chat_template_kwargs": {"messages": 1}},
        400,
        "chat_template_kwargs",
    ),
    (
        CHAT,
        {"model": "tiny", "messages": MSG, "response_format": {"type": "xml"}},
        400,
        "response_format.type",
    ),
    (
        CHAT,
        {
            "model": "tiny",
            "messages": MSG,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        },
        400,
        "response_format.json_schema",
    ),
    (
        CHAT,
        {
            "model": "tiny",
            "messages": MSG,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        400,
        "tool_choice",
    ),
    (CHAT, {"model": "tiny", "messages": MSG, "functions": [{"name": "f"}]}, 400, "functions"),
    (CHAT, {"model": "bert", "messages": MSG}, 400, "model"),
    (CHAT, {"model": "nope", "messages": MSG}, 404, "model"),
    (
        CHAT,
        {"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]},
        413,
        "messages",
    ),
    (
        CHAT,
        b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800"}]}',
        400,
        "messages[0].content",
    ),
    (
        CHAT,
        {"model": "tiny", "messages": [{"role": "assistant", "tool_calls": [{"id": 1}]}, *MSG]},
        400,
        "messages[0].tool_calls[0].id",
    ),
    (
        CHAT,
        {
            "model": "tiny",
            "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}],
        },
        400,
        "messages[0].tool_calls[0].function",
    ),
    (
        CHAT,
        {
            "model": "tiny",
            "messages": MSG,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
        },
        400,
        "tools[0].function.parameters",
    ),
    (
        CHAT,
        {
            "model": "tiny",
            "messages": MSG,
            "tools": [{"type": "function", "function": {"name": "a b"}}],
        },
        400,
        "tools",
    ),
    (
        CHAT,
        {
            "model": "tiny",
            "messages": MSG,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "wat"}},
            },
        },
        400,
        "response_format",
    ),
    (
        CHAT,
        {
            "model": "tiny",
            "messages": MSG,
            "tool_choice": "required",
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": nested_schema(40)}}
            ],
        },
        400,
        "tools",
    ),
    (CHAT, {"model": "tiny", "messages": MSG, "metadata": {"a": nested_list(70)}}, 400, "metadata"),
    (CHAT, {"model": "tiny", "messages": MSG, "seed": 2**40}, 400, "seed"),
    (CHAT, {"model": "tiny", "messages": MSG, "logit_bias": {"99999": 1}}, 400, "logit_bias"),
    ("/v1/completions", {"model": "tiny"}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": []}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": [10**9]}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "logprobs": 9}, 400, "logprobs"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "suffix": "y", "echo": True}, 400, "echo"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"model": "tiny", "prompt": "word " * 400}, 413, "prompt"),
    ("/v1/responses", {"model": "tiny"}, 400, "input"),
    (
        "/v1/responses",
        {"model": "tiny", "input": "x", "previous_response_id": "resp_1"},
        400,
        "previous_response_id",
    ),
    ("/v1/responses", {"model": "tiny", "input": [{"type": "computer_call"}]}, 400, "input[0]"),
    (
        "/v1/responses",
        {"model": "tiny", "input": "x", "text": {"format": {"type": "json_schema"}}},
        400,
        "text.format",
    ),
    (
        "/v1/responses",
        {"model": "tiny", "input": "x", "text": {"format": {"type": "json_schema", "schema": 1}}},
        400,
        "text.format.schema",
    ),
    (
        "/v1/responses",
        {
            "model": "tiny",
            "input": "x",
            "text": {"format": {"type": "json_schema", "schema": {"type": "wat"}}},
        },
        400,
        "text.format",  # the SDK's response_format, as the Responses API names it
    ),
    ("/v1/responses", b'{"model": "tiny", "input": "\\udfff"}', 400, "input"),
    ("/v1/responses", {"model": "nope", "input": "x"}, 404, "model"),
    ("/v1/embeddings", {"model": "bert"}, 400, "input"),
    ("/v1/embeddings", {"model": "bert", "input": []}, 400, "input"),
    ("/v1/embeddings", {"model": "bert", "input": [""]}, 400, "input"),
    (
        "/v1/embeddings",
        {"model": "bert", "input": "x", "encoding_format": "hex"},
        400,
        "encoding_format",
    ),
    ("/v1/embeddings", {"model": "bert", "input": "x", "dimensions": 0}, 400, "dimensions"),
    ("/v1/embeddings", {"model": "bert", "input": "x", "dimensions": 100000}, 400, "dimensions"),
    ("/v1/embeddings", {"model": "bert-fixed", "input": "x", "dimensions": 8}, 400, "dimensions"),
    ("/v1/embeddings", {"model": "bert", "input": "hello " * 2000}, 413, "input"),
    ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "model"),
    ("/v1/tokenize", {"model": "tiny"}, 400, "content"),
    ("/v1/tokenize", {"model": "nope", "content": "x"}, 404, "model"),
    ("/v1/detokenize", {"model": "tiny", "tokens": [10**9]}, 400, "tokens"),
    ("/v1/detokenize", {"model": "tiny", "tokens": ["a"]}, 400, "tokens[0]"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors(
    srv: LiveServer, path: str, body: Any, status: int, param: str | None
) -> None:
    with srv.http() as http:
        if isinstance(body, bytes):
            resp = http.post(path, content=body, headers={"content-type": "application/json"})
        else:
            resp = http.post(path, json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param
    assert error["message"] and error["type"]


def test_json_body_without_a_json_content_type(srv: LiveServer) -> None:
    # A body that is not declared JSON is what a web page can send without a CORS
    # preflight (text/plain, form encoding, no type): refused (docs/security.md); curl
    # needs -H 'content-type: application/json'. JSON with parameters is fine.
    body = json.dumps({"model": "tiny", "messages": MSG, "max_tokens": 1}).encode()
    with srv.http() as http:
        resp = http.post(
            CHAT, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        with_charset = http.post(
            CHAT, content=body, headers={"content-type": "application/json; charset=utf-8"}
        )
    assert resp.status_code == 415, resp.text
    assert resp.json()["error"]["code"] == "unsupported_media_type"
    assert with_charset.status_code == 200, with_charset.text


def test_unknown_routes_and_methods(srv: LiveServer) -> None:
    with srv.http() as http:
        missing = http.get("/v1/nothing")
        wrong_method = http.get(CHAT)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405


def test_openai_client_sees_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=USER, temperature=-3)  # type: ignore[arg-type]
    assert info.value.param == "temperature"
    with pytest.raises(openai.APIStatusError) as too_long:
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "word " * 400}],
        )
    assert too_long.value.status_code == 413
    assert too_long.value.code == "context_length_exceeded"


def test_a_model_that_fails_to_load_is_a_server_error_not_a_crash(
    srv: LiveServer, client: openai.OpenAI
) -> None:
    with srv.http() as http:
        resp = http.post(CHAT, json={"model": "broken", "messages": MSG})
    assert resp.status_code == 500
    message = resp.json()["error"]["message"]
    assert "GGUF" in message
    # The reason, without the server's file layout (its log has the path).
    assert "broken.gguf" not in message and "<path>" in message
    assert client.chat.completions.create(model="tiny", messages=USER, max_tokens=1).choices
