"""The Anthropic Messages API on the real default model (Qwen2.5-Coder-0.5B-Instruct),
driven by the official `anthropic` client the way Claude Code and other Anthropic-API
tools drive it. Greedy decoding; `batch_invariant` keeps answers reproducible."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from support.live_server import LiveServer, live_server

DATA = Path(__file__).parent / "data"
GREEDY: Any = {"temperature": 0}
WEATHER: Any = {
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city name"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def srv(default_model_path: Path) -> Iterator[LiveServer]:
    defaults = {"n_ctx": 8192, "n_seq_max": 2, "n_threads": 2, "batch_invariant": True}
    aliases = {"claude-*": "qwen"}
    with live_server({"qwen": default_model_path}, load_defaults=defaults, aliases=aliases) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv: LiveServer) -> anthropic.Anthropic:
    return srv.anthropic(timeout=300)


def ask(text: str) -> Any:
    return [{"role": "user", "content": text}]


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_answers_and_streams_the_same_text(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="claude-haiku-4-5", max_tokens=40, messages=ask("What is 2+2?"), extra_body=GREEDY
    )
    assert "4" in text_of(message) and message.stop_reason == "end_turn"
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=40, messages=ask("What is 2+2?"), extra_body=GREEDY
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text_of(message)
    assert final.usage.output_tokens == message.usage.output_tokens


def test_a_tool_call_and_its_result(client: anthropic.Anthropic) -> None:
    """The model calls the tool; its result (a value no model could guess) comes back
    as a tool_result and the answer uses it."""
    degrees = secrets.randbelow(60) + 10
    secret = json.dumps({"city": "Paris", "temperature_c": degrees, "conditions": "sunny"})
    question = ask("What is the weather in Paris?")
    first = client.messages.create(
        model="qwen",
        max_tokens=100,
        messages=question,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        extra_body=GREEDY,
    )
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and "paris" in str(call.input).lower()
    history = [
        *question,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": secret}],
        },
    ]
    second = client.messages.create(
        model="qwen", max_tokens=120, messages=history, extra_body=GREEDY
    )
    assert second.stop_reason == "end_turn"
    assert str(degrees) in text_of(second)  # the temperature only the tool knew


def test_streamed_tool_input_is_the_call(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="qwen",
        max_tokens=100,
        messages=ask("Weather in Tokyo?"),
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    call = next(b for b in final.content if b.type == "tool_use")
    assert "tokyo" in str(call.input).lower() and final.stop_reason == "tool_use"


def test_count_tokens_is_the_prompt_of_the_same_request(client: anthropic.Anthropic) -> None:
    kwargs: Any = {"system": "Answer briefly.", "messages": ask("Hi"), "tools": [WEATHER]}
    count = client.messages.count_tokens(model="qwen", **kwargs)
    message = client.messages.create(model="qwen", max_tokens=5, extra_body=GREEDY, **kwargs)
    usage = message.usage
    assert count.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


def _claude_code_request(nonce: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / "claude_code_request.json").read_text())
    billing = body["system"][0]
    billing["text"] = billing["text"].replace("cch=5f2c1e", f"cch={nonce}")
    body["max_tokens"] = 24  # enough to see the answer begin; the fixture asks for 32000
    return body


def _stream_events(srv: LiveServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with srv.http(timeout=300) as http:
        response = http.post("/v1/messages?beta=true", json=body, headers=_CLAUDE_HEADERS)
    assert response.status_code == 200, response.text
    events = []
    for block in response.text.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("event: "):
            events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


_CLAUDE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    "x-api-key": "sk-ant-local",
    "user-agent": "claude-cli/2.0.14 (external, cli)",
}


def test_a_claude_code_session_reuses_its_prompt_cache(srv: LiveServer) -> None:
    """Claude Code's recorded request shape (billing line, 21 tools, thinking on, beta
    query) streams; the next turn, with a new billing nonce, reuses the first turn's
    prompt from the KV cache instead of prefilling it again."""
    first = _claude_code_request(secrets.token_hex(3))
    events = _stream_events(srv, first)
    names = [n for n, _ in events if n != "ping"]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    start_usage = events[0][1]["message"]["usage"]
    prompt = start_usage["input_tokens"] + start_usage["cache_read_input_tokens"]
    answer = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    second = _claude_code_request(secrets.token_hex(3))  # a new nonce, as on every call
    second["messages"] += [
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        {"role": "user", "content": "Thanks. And subtract(a, b)?"},
    ]
    usage = _stream_events(srv, second)[0][1]["message"]["usage"]
    assert usage["cache_read_input_tokens"] >= prompt - 8  # all of turn one but its tail
    assert usage["input_tokens"] < 200  # only the new turn was prefilled


def test_keepalives_while_a_request_waits_for_a_slot(default_model_path: Path) -> None:
    """With the only slot busy, an Anthropic stream sends `ping` events and an OpenAI
    stream sends SSE comments until their prompts get the slot."""
    defaults = {"n_ctx": 2048, "n_seq_max": 1, "n_threads": 2, "batch_invariant": True}
    models = {"qwen": default_model_path}
    with live_server(models, load_defaults=defaults, keepalive=0.1) as s:
        busy = {
            "model": "qwen",
            "max_tokens": 120,
            "messages": ask("Count from 1 to 100."),
            "stream": True,
            "ignore_eos": True,
        }
        with httpx.Client(base_url=s.base_url, timeout=300) as http:
            with http.stream("POST", "/v1/messages", json=busy) as holder:
                next(holder.iter_lines())  # admitted: it holds the only slot for 120 tokens
                queued = {"model": "qwen", "max_tokens": 2, "messages": ask("Hi"), "stream": True}
                text = http.post("/v1/messages", json=queued).text
                first_event = text.split("\n", 1)[0]
                assert first_event == "event: ping"
                assert "event: message_start" in text and text.rstrip().endswith(
                    'data: {"type":"message_stop"}'
                )
            with http.stream("POST", "/v1/messages", json=busy) as holder:
                next(holder.iter_lines())
                chat = {"model": "qwen", "max_tokens": 2, "messages": ask("Hi"), "stream": True}
                text = http.post("/v1/chat/completions", json=chat).text
                # The role chunk goes out at once; keep-alives follow until the slot frees.
                assert "\n\n: keep-alive\n\n" in text
                assert text.index(": keep-alive") < text.index('"finish_reason":"')
                assert text.rstrip().endswith("data: [DONE]")
