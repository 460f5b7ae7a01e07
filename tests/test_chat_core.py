"""The protocol-neutral chat core: a turn's events, and every protocol's shapes built
from the same events (OpenAI chunks, Responses items, Anthropic blocks)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kronk import Kronk
from kronk.chat.events import (
    ChatEvent,
    ContentDelta,
    ReasoningDelta,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    TurnFinished,
    TurnStarted,
)
from kronk.chat.tool_parser import ToolCallParser, ToolFormat
from kronk.chat.turn import ChatTurn
from kronk.engine.request import Admitted, Finished, TextDelta, Usage
from kronk.errors import InvalidRequestError
from kronk.openai_objects import ChatCompletionBuilder
from kronk.server.anthropic.messages import MessageBuilder
from kronk.server.openai.responses import ResponseBuilder
from kronk.server.openai.responses_params import ResponsesRequest

USER = [{"role": "user", "content": "hello"}]
USAGE = Usage(12, 30, 4, 0.0, 0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> Iterator[Kronk]:
    with Kronk(tiny_llama_path, n_ctx=256, n_seq_max=2, n_threads=1) as k:
        yield k


def test_a_turn_starts_with_its_prompt_and_ends_with_its_reason(tiny: Kronk) -> None:
    with tiny.chat_events(USER, max_tokens=6, temperature=0, ignore_eos=True) as stream:
        events = list(stream)
    assert isinstance(events[0], TurnStarted)
    assert events[0].prompt_tokens == tiny.count_chat_tokens(USER)
    finished = events[-1]
    assert isinstance(finished, TurnFinished) and finished.reason == "max_tokens"
    assert finished.usage.completion_tokens == 6
    assert finished.usage.prompt_tokens == events[0].prompt_tokens
    text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    answer = tiny.chat(USER, max_tokens=6, temperature=0, ignore_eos=True)
    assert text == answer.choices[0].message.content


def test_the_stop_string_that_ended_a_turn_is_named(tiny: Kronk) -> None:
    with tiny.chat_events(USER, max_tokens=8, temperature=0, ignore_eos=True) as stream:
        text = "".join(e.text for e in stream if isinstance(e, ContentDelta))
    stop = text[-1]
    with tiny.chat_events(USER, max_tokens=8, temperature=0, stop=[stop]) as stream:
        events = list(stream)
    finished = events[-1]
    assert isinstance(finished, TurnFinished)
    assert finished.reason == "stop_sequence" and finished.stop_sequence == stop


def test_async_events_raise_bad_input_at_start(tiny: Kronk) -> None:
    async def run() -> list[ChatEvent]:
        stream = tiny.achat_events(USER, max_tokens=3, temperature=0, ignore_eos=True)
        async with stream:
            events = [e async for e in stream]
        bad = tiny.achat_events(USER, temperature=-1)
        with pytest.raises(InvalidRequestError, match="temperature"):
            await bad.start()
        return events

    events = asyncio.run(run())
    assert isinstance(events[0], TurnStarted) and isinstance(events[-1], TurnFinished)


def _script(text: str, *, starts_in_reasoning: bool = False) -> list[ChatEvent]:
    """The neutral events a Hermes-format model's output makes, fed 5 characters a step."""
    parser = ToolCallParser(ToolFormat.HERMES, tool_names=["get_weather"])
    turn = ChatTurn("m", starts_in_reasoning=starts_in_reasoning, tool_parser=parser)
    events = turn.on_event(Admitted(12, 4))
    for i in range(0, len(text), 5):
        events += turn.on_event(TextDelta(text[i : i + 5]))
    return events + turn.on_event(Finished("stop", USAGE))


OUTPUT = (
    "<think>They want weather.</think>\n\nLet me look.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


def test_the_turn_splits_reasoning_text_and_calls() -> None:
    events = _script(OUTPUT)
    kinds = [type(e) for e in events]
    assert kinds[0] is TurnStarted and kinds[-1] is TurnFinished
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert reasoning == "They want weather."
    assert content.strip() == "Let me look."
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    ends = [e for e in events if isinstance(e, ToolCallEnd)]
    assert [s.name for s in starts] == ["get_weather"] and len(ends) == 1
    arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallArgumentsDelta))
    assert arguments == ends[0].arguments == '{"city": "Paris"}'
    assert kinds.index(ToolCallStart) < kinds.index(ToolCallEnd) < kinds.index(TurnFinished)
    finished = events[-1]
    assert isinstance(finished, TurnFinished) and finished.reason == "tool_calls"
    assert finished.usage.reasoning_tokens > 0


def test_every_protocol_is_built_from_the_same_events() -> None:
    events = _script(OUTPUT)
    openai = ChatCompletionBuilder("m")
    openai.on_events(events)
    completion = openai.result()
    responses = ResponseBuilder(ResponsesRequest(model="m", input="hi"), "m")
    responses.on_events(events)
    responses.finish()
    response = responses.response()
    anthropic = MessageBuilder("m")
    anthropic.on_events(events)
    message = anthropic.message()

    message_out = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.get("stop_reason") == "tool_use"
    assert response["status"] == "completed"
    # The same reasoning, text and call in each shape.
    assert message_out.reasoning_content == "They want weather."
    by_type: dict[str, Any] = {item["type"]: item for item in response["output"]}
    assert by_type["reasoning"]["content"][0]["text"] == "They want weather."
    blocks = {block["type"]: block for block in message["content"]}
    assert (
        blocks["thinking"]["thinking"] == "They want weather." and blocks["thinking"]["signature"]
    )
    assert (message_out.content or "").strip() == "Let me look."
    assert by_type["message"]["content"][0]["text"].strip() == "Let me look."
    assert blocks["text"]["text"].strip() == "Let me look."
    call = (message_out.tool_calls or [])[0]
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert (by_type["function_call"]["name"], by_type["function_call"]["arguments"]) == (
        "get_weather",
        '{"city": "Paris"}',
    )
    assert blocks["tool_use"]["name"] == "get_weather"
    assert blocks["tool_use"]["input"] == {"city": "Paris"}
    # Usage: OpenAI counts cached tokens inside the prompt; Anthropic leaves them out.
    assert completion.usage.prompt_tokens == 12
    assert completion.usage.prompt_tokens_details.cached_tokens == 4
    assert response["usage"]["input_tokens"] == 12
    assert message["usage"]["input_tokens"] == 8
    assert message["usage"]["cache_read_input_tokens"] == 4
    assert message["usage"]["output_tokens"] == completion.usage.completion_tokens == 30


def test_anthropic_stream_events_follow_the_blocks() -> None:
    builder = MessageBuilder("m")
    names = [e["type"] for e in builder.on_events(_script(OUTPUT))]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    # thinking, text and tool_use blocks, each started, written and stopped in turn
    assert names.count("content_block_start") == names.count("content_block_stop") == 3
    deltas = [
        e["delta"]["type"]
        for e in MessageBuilder("m").on_events(_script(OUTPUT))
        if e["type"] == "content_block_delta"
    ]
    assert deltas.index("signature_delta") < deltas.index("text_delta")
    assert deltas[-1] == "input_json_delta"
