"""Mechanics of the Anthropic Messages API on tiny random-weight models, over real
sockets, with the official `anthropic` client and (for what it cannot send) httpx.

The tiny models speak nonsense: these tests check shapes, event order, statuses and
error objects. Behaviour on the real default model is in test_anthropic_behaviour.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from kronk.models.resolver import ResolvedModel
from support.live_server import LiveServer, live_server
from support.tiny_gguf import THINKING_TEMPLATE

N_CTX = 1024
USER = [{"role": "user", "content": "hello"}]
TOOL = {
    "name": "lookup",
    "description": "Look a word up",
    "input_schema": {
        "type": "object",
        "properties": {"word": {"enum": ["kronk", "llama"]}},
        "required": ["word"],
        "additionalProperties": False,
        "$defs": {"unused": {"type": "string"}},
    },
}


@pytest.fixture(scope="module")
def srv(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    thinking = tmp_path_factory.mktemp("anthropic") / "thinking.jinja"
    thinking.write_text(THINKING_TEMPLATE)
    models = {
        "tiny": tiny_llama_path,
        "thinker": ResolvedModel(
            id="thinker", path=tiny_llama_path, load_options={"chat_template": str(thinking)}
        ),
    }
    defaults = {"n_ctx": N_CTX, "n_seq_max": 2, "n_threads": 1}
    aliases = {"claude-*": "tiny", "my-thinker": "thinker"}
    with live_server(models, load_defaults=defaults, aliases=aliases) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv: LiveServer) -> anthropic.Anthropic:
    return srv.anthropic()


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every event in a streamed response; comments left out."""
    events = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = "".join(line[6:] for line in lines if line.startswith("data: "))
        events.append((name, json.loads(data)))
    return events


def test_message_shape_and_headers(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="tiny", max_tokens=8, messages=USER, extra_body={"temperature": 0}
    )
    assert raw.headers["request-id"].startswith("req_")
    message = raw.parse()
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == "tiny"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens >= 1
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 0
    assert [block.type for block in message.content] in (["text"], [])


def test_glob_alias_routes_claude_names(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=USER)
    assert message.model == "tiny"


def test_stream_event_order_matches_anthropic(srv: LiveServer) -> None:
    body = {"model": "tiny", "max_tokens": 12, "messages": USER, "stream": True}
    with srv.http() as http:
        response = http.post("/v1/messages?beta=true", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    for name, data in events:
        assert data["type"] == name  # every event names itself in its data too
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    usage = start["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] > 0
    # Blocks are sequential: start, deltas, stop, one index after the other.
    open_index: int | None = None
    next_index = 0
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index, next_index = None, next_index + 1
    assert open_index is None
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert delta["usage"]["output_tokens"] >= 1


def test_stream_matches_the_client_accumulation(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="tiny", max_tokens=10, messages=USER, extra_body={"temperature": 0}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(b.text for b in final.content if b.type == "text") == text
    assert final.usage.output_tokens >= 1


def test_async_client(srv: LiveServer) -> None:
    async def run() -> anthropic.types.Message:
        async with srv.async_anthropic() as client:
            return await client.messages.create(model="tiny", max_tokens=4, messages=USER)

    assert asyncio.run(run()).usage.output_tokens >= 1


def test_max_tokens_and_stop_sequences(client: anthropic.Anthropic) -> None:
    greedy = {"temperature": 0, "ignore_eos": True}
    message = client.messages.create(model="tiny", max_tokens=5, messages=USER, extra_body=greedy)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5
    text = "".join(b.text for b in message.content if b.type == "text")
    assert text
    # Stop at a piece of the answer we know comes (greedy): its last character.
    stopped = client.messages.create(
        model="tiny", max_tokens=5, messages=USER, stop_sequences=[text[-1]], extra_body=greedy
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == text[-1]
    stopped_text = "".join(b.text for b in stopped.content if b.type == "text")
    assert text.startswith(stopped_text) and text[-1] not in stopped_text


def test_forced_tool_use_streams_input_json(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="tiny",
        max_tokens=60,
        messages=USER,
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "lookup"},
    ) as stream:
        partial = "".join(
            e.delta.partial_json
            for e in stream
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        )
        final = stream.get_final_message()
    calls = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use"
    assert len(calls) == 1 and calls[0].name == "lookup"
    assert calls[0].id.startswith("toolu_")
    assert json.loads(partial) == calls[0].input
    assert calls[0].input["word"] in ("kronk", "llama")


def test_tool_result_round_trip_is_accepted(client: anthropic.Anthropic) -> None:
    history: Any = [
        {"role": "user", "content": "look up kronk"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should look it up.", "signature": "x"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"word": "k"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "kronk-7731"}],
                    "cache_control": {"type": "ephemeral"},
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "no",
                    "is_error": True,
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    message = client.messages.create(
        model="tiny",
        max_tokens=4,
        messages=history,
        tools=[TOOL],
        metadata={"user_id": "u"},  # type: ignore[list-item]
    )
    assert message.usage.output_tokens >= 1
    count = client.messages.count_tokens(model="tiny", messages=history, tools=[TOOL])  # type: ignore[list-item]
    # The tool result and the earlier call are in the prompt the model saw.
    assert count.input_tokens == message.usage.input_tokens + (
        message.usage.cache_read_input_tokens or 0
    )


def test_count_tokens_equals_the_prompt(client: anthropic.Anthropic) -> None:
    system = "You are terse."
    count = client.messages.count_tokens(model="tiny", system=system, messages=USER, tools=[TOOL])  # type: ignore[list-item]
    message = client.messages.create(
        model="tiny",
        max_tokens=2,
        system=system,
        messages=USER,
        tools=[TOOL],  # type: ignore[list-item]
    )
    prompt = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert count.input_tokens == prompt
    without_tools = client.messages.count_tokens(model="tiny", system=system, messages=USER)
    assert without_tools.input_tokens < count.input_tokens


def test_thinking_blocks_are_signed(srv: LiveServer) -> None:
    body = {
        "model": "my-thinker",
        "max_tokens": 8,
        "messages": USER,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    with srv.http() as http:
        events = sse_events(http.post("/v1/messages", json=body))
    starts = [d for n, d in events if n == "content_block_start"]
    assert starts and starts[0]["content_block"]["type"] == "thinking"
    deltas = [d["delta"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    assert deltas[0]["type"] == "thinking_delta"
    assert deltas[-1]["type"] == "signature_delta" and deltas[-1]["signature"]
    with srv.anthropic() as client:
        message = client.messages.create(
            model="my-thinker",
            max_tokens=8,
            messages=USER,
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
    thinking = [b for b in message.content if b.type == "thinking"]
    assert thinking and thinking[0].signature and thinking[0].thinking
    off = srv.anthropic().messages.create(
        model="my-thinker", max_tokens=8, messages=USER, thinking={"type": "disabled"}
    )
    assert all(b.type != "thinking" for b in off.content)


BAD_REQUESTS: list[tuple[Any, int, str]] = [
    (b"{not json", 400, "invalid_request_error"),
    (b"[1, 2]", 400, "invalid_request_error"),
    ({"model": "tiny", "messages": USER}, 400, "invalid_request_error"),  # no max_tokens
    ({"model": "tiny", "max_tokens": "many", "messages": USER}, 400, "invalid_request_error"),
    ({"model": "tiny", "max_tokens": 0, "messages": USER}, 400, "invalid_request_error"),
    ({"model": "tiny", "max_tokens": 5, "messages": []}, 400, "invalid_request_error"),
    ({"model": "nope", "max_tokens": 5, "messages": USER}, 404, "not_found_error"),
    (
        {"model": "tiny", "max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]},
        400,
        "invalid_request_error",
    ),
    (
        {"model": "tiny", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
        400,
        "invalid_request_error",
    ),
    (
        {
            "model": "tiny",
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA"},
                        }
                    ],
                }
            ],
        },
        400,
        "invalid_request_error",
    ),
    (
        {"model": "tiny", "max_tokens": 5, "messages": USER, "temperature": -1},
        400,
        "invalid_request_error",
    ),
    (
        {"model": "tiny", "max_tokens": 5, "messages": USER, "tool_choice": {"type": "any"}},
        400,
        "invalid_request_error",
    ),
    (
        {
            "model": "tiny",
            "max_tokens": 5,
            "messages": USER,
            # A server tool version kronk does not run (its own are in test_anthropic_tools).
            "tools": [{"type": "web_search_20260209", "name": "web_search"}],
        },
        400,
        "invalid_request_error",
    ),
    ({"model": "tiny", "max_tokens": 5, "messages": "hello"}, 400, "invalid_request_error"),
    (
        {
            "model": "tiny",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hello " * 2000}],
        },
        413,
        "request_too_large",
    ),
]


@pytest.mark.parametrize(("body", "status", "kind"), BAD_REQUESTS)
def test_bad_requests_get_anthropic_errors(
    srv: LiveServer, body: Any, status: int, kind: str
) -> None:
    with srv.http() as http:
        if isinstance(body, bytes):
            headers = {"content-type": "application/json"}
            response = http.post("/v1/messages", content=body, headers=headers)
        else:
            response = http.post("/v1/messages", json=body)
    assert response.status_code == status, response.text
    data = response.json()
    assert data["type"] == "error" and data["error"]["type"] == kind
    assert data["error"]["message"]
    assert response.headers["request-id"].startswith("req_")


def test_huge_max_tokens_ends_at_the_context(srv: LiveServer) -> None:
    # The official client refuses such a request unstreamed: httpx sends it as it is.
    body = {"model": "tiny", "max_tokens": 10**12, "messages": USER, "ignore_eos": True}
    with srv.http() as http:
        response = http.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"]["output_tokens"] < N_CTX


def test_errors_through_the_official_client(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=5, messages=USER)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="tiny", messages=[])


def test_unknown_path_and_method_in_anthropic_shape(srv: LiveServer) -> None:
    with srv.http() as http:
        response = http.get("/v1/messages")
    assert response.status_code == 405
    assert response.json()["type"] == "error"


def test_prepared_off_the_event_loop(srv: LiveServer) -> None:
    """A request whose preparation is held up (a 20 KB system prompt and 30 tools, its
    preparation paused on purpose) does not stop another stream from finishing."""
    lease_kronk = _loaded(srv, "tiny")
    release = threading.Event()
    original = lease_kronk._prepare_chat

    def held(*args: Any, **kwargs: Any) -> Any:
        if _is_big(args[0]):  # runs in a worker thread: waiting here blocks no event loop
            assert release.wait(60)
        return original(*args, **kwargs)

    lease_kronk._prepare_chat = held  # type: ignore[method-assign]
    try:
        tools = [{**TOOL, "name": f"tool_{i}"} for i in range(30)]
        big = {
            "model": "tiny",
            "max_tokens": 2,
            "system": "You are a careful assistant. " * 700,
            "messages": USER,
            "tools": tools,
        }
        small = {"model": "tiny", "max_tokens": 20, "messages": USER, "stream": True}
        result: dict[str, Any] = {}

        def send_big() -> None:
            with srv.http() as http:
                result["big"] = http.post("/v1/messages", json=big)

        thread = threading.Thread(target=send_big)
        thread.start()
        try:
            with srv.http() as http:
                events = sse_events(http.post("/v1/messages", json=small))
            assert events[-1][0] == "message_stop"  # finished while the big one waits
            assert "big" not in result
        finally:
            release.set()
            thread.join(60)
        # Prepared once released: rendered and tokenized, then refused as too long for
        # the tiny context (the point is where the preparation ran, not its answer).
        assert result["big"].status_code == 413, result["big"].text
        assert result["big"].json()["error"]["type"] == "request_too_large"
    finally:
        del lease_kronk._prepare_chat


def _is_big(messages: Any) -> bool:
    return bool(messages) and len(str(messages[0].get("content", ""))) > 10_000


def _loaded(srv: LiveServer, name: str) -> Any:
    with srv.http() as http:
        http.post("/v1/messages", json={"model": name, "max_tokens": 1, "messages": USER})
    entry = srv.pool._entries[name]
    assert entry.kronk is not None
    return entry.kronk
