"""The server on the real default model (Qwen2.5-Coder-0.5B-Instruct), driven by the
official `openai` client the way applications and OpenWebUI drive it.

Greedy decoding everywhere; `batch_invariant` makes concurrent answers equal the
sequential ones token for token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from pydantic import BaseModel

from kronk.models.catalog import Catalog
from kronk.tools.pypi_chunks import DEFAULT_MODEL
from support.live_server import LiveServer, live_server

GREEDY: dict[str, Any] = {"temperature": 0}

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}

# OpenWebUI's default background-task prompts (title and follow-up generation).
CHAT_HISTORY = (
    "<chat_history>\n"
    "USER: How do I sort a list in Python?\n"
    "ASSISTANT: Use the sorted() function, or the list.sort() method to sort in place.\n"
    "</chat_history>"
)
TITLE_PROMPT = "\n".join(
    [
        "### Task:",
        "Generate a concise, 3-5 word title with an emoji summarizing the chat history.",
        "### Guidelines:",
        "- The title should clearly represent the main theme or subject of the conversation.",
        "- Use emojis that enhance understanding of the topic, but avoid quotation marks or "
        "special formatting.",
        "- Write the title in the chat's primary language; default to English if multilingual.",
        "- Prioritize accuracy over excessive creativity; keep it clear and simple.",
        "- Your entire response must consist solely of the JSON object, without any "
        "introductory or concluding text.",
        "- The output must be a single, raw JSON object, without any markdown code fences or "
        "other encapsulating text.",
        "### Output:",
        'JSON format: { "title": "your concise title here" }',
        "### Examples:",
        '- { "title": "📉 Stock Market Trends" },',
        '- { "title": "🍪 Perfect Chocolate Chip Recipe" },',
        "### Chat History:",
        CHAT_HISTORY,
    ]
)
FOLLOW_UP_PROMPT = "\n".join(
    [
        "### Task:",
        "Suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask "
        "next in this conversation as a **user**, based on the chat history, to help continue "
        "or deepen the discussion.",
        "### Guidelines:",
        "- Write all follow-up questions from the user's point of view, directed to the assistant.",
        "- Make questions concise, clear, and directly related to the discussed topic(s).",
        "- Only suggest follow-ups that make sense given the chat content and do not repeat "
        "what was already covered.",
        "- If the conversation is very short or not specific, suggest more general (but "
        "relevant) follow-ups the user might ask.",
        "- Use the conversation's primary language; default to English if multilingual.",
        "- Response must be a JSON array of strings, no extra text or formatting.",
        "### Output:",
        'JSON format: { "follow_ups": ["Question 1?", "Question 2?", "Question 3?"] }',
        "### Chat History:",
        CHAT_HISTORY,
    ]
)


@pytest.fixture(scope="module")
def srv(default_model_path: Path, minilm_gguf_path: Path) -> Iterator[LiveServer]:
    defaults = {"n_ctx": 2048, "n_seq_max": 4, "n_threads": 2, "batch_invariant": True}
    # The default chat model, and the default embedding model (loaded on first use).
    models = {"qwen": default_model_path, "minilm": minilm_gguf_path}
    with live_server(models, load_defaults=defaults, preload="qwen") as s:
        yield s


@pytest.fixture(scope="module")
def client(srv: LiveServer) -> openai.OpenAI:
    return srv.openai(timeout=300)


def ask(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_chat_answers(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="qwen", messages=ask("What is 2+2?"), **GREEDY)
    assert "4" in (resp.choices[0].message.content or "")
    assert resp.choices[0].finish_reason == "stop"


def test_stream_adds_up_to_the_non_streamed_answer(client: openai.OpenAI) -> None:
    messages = ask("Name three colours.")
    full = client.chat.completions.create(model="qwen", messages=messages, max_tokens=40, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model="qwen",
            messages=messages,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage is not None and full.usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_logprobs_of_a_greedy_answer(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="qwen",
        messages=ask("Say hello."),
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
        **GREEDY,
    )
    content = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == resp.usage.completion_tokens  # type: ignore[union-attr]
    for token in content:
        assert len(token.top_logprobs) == 3
        assert token.token == token.top_logprobs[0].token  # greedy takes the likeliest
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)
    assert "".join(t.token for t in content) == resp.choices[0].message.content


class Person(BaseModel):
    name: str
    age: int


def test_structured_output_with_a_pydantic_model(client: openai.OpenAI) -> None:
    resp = client.chat.completions.parse(
        model="qwen",
        messages=ask("John is 31 years old. Extract the person."),
        response_format=Person,
        **GREEDY,
    )
    assert resp.choices[0].message.parsed == Person(name="John", age=31)


def test_fill_in_the_middle(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="qwen",
        prompt="def add(a, b):\n    return ",
        suffix="\n\nprint(add(1, 2))\n",
        max_tokens=16,
        stop=["\n"],
        **GREEDY,
    )
    assert resp.choices[0].text.strip() == "a + b"


def test_responses_with_and_without_streaming(client: openai.OpenAI) -> None:
    question = "What is the capital of France? Answer in one word."
    resp = client.responses.create(model="qwen", input=question, max_output_tokens=20, **GREEDY)
    assert resp.status == "completed"
    assert "Paris" in resp.output_text
    events = list(
        client.responses.create(
            model="qwen", input=question, max_output_tokens=20, stream=True, **GREEDY
        )
    )
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == resp.output_text == events[-1].response.output_text  # type: ignore[union-attr]


def test_embeddings_place_similar_sentences_close(client: openai.OpenAI) -> None:
    sentences = [
        "A cat sits on the mat.",
        "A kitten is sitting on a rug.",
        "Quarterly revenue grew by five percent.",
    ]
    # The openai client asks for base64 and decodes it into floats.
    resp = client.embeddings.create(model="minilm", input=sentences)
    assert [d.index for d in resp.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in resp.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3  # cat ~ kitten, not revenue
    assert resp.usage.prompt_tokens > len(sentences)


def test_concurrent_clients_get_the_answers_they_would_get_alone(
    default_model_path: Path,
) -> None:
    """Four clients at once get the answers each gets alone, token for token, except
    where the model itself was at a near-tie: the run that starts a request with others
    can reuse a prompt prefix computed in other chunks (measured: about one run in four,
    one answer's first token, logprobs 0.1 apart). A divergence anywhere else, or at a
    token the model was sure of, fails."""
    defaults = {"n_ctx": 2048, "n_seq_max": 4, "n_threads": 2, "batch_invariant": True}
    with live_server({"qwen": default_model_path}, load_defaults=defaults) as own:
        _concurrent_equals_alone(own)


Answer = list[tuple[str, dict[str, float]]]  # per token: the token, its top-2 logprobs


def _answer(resp: Any) -> Answer:
    content = resp.choices[0].logprobs.content
    return [(t.token, {top.token: top.logprob for top in t.top_logprobs}) for t in content]


def _concurrent_equals_alone(srv: LiveServer) -> None:
    questions = [
        "What is 2+2?",
        "Name a primary colour.",
        "Write a Python function that returns 1.",
        "What is the opposite of hot?",
    ]
    params: Any = {"max_tokens": 32, "logprobs": True, "top_logprobs": 2, **GREEDY}
    sync = srv.openai(timeout=300)
    alone = [
        _answer(sync.chat.completions.create(model="qwen", messages=ask(q), **params))
        for q in questions
    ]

    async def together() -> list[Answer]:
        async with srv.async_openai(timeout=300) as aclient:
            resps = await asyncio.gather(
                *(
                    aclient.chat.completions.create(model="qwen", messages=ask(q), **params)
                    for q in questions
                )
            )
        return [_answer(r) for r in resps]

    for got, want in zip(asyncio.run(together()), alone, strict=True):
        tokens, expected = [t for t, _ in got], [t for t, _ in want]
        if tokens == expected:
            continue
        pairs = zip(tokens, expected, strict=False)
        i = next((k for k, (a, b) in enumerate(pairs) if a != b), None)
        assert i is not None, (tokens, expected)  # one ended early where the other went on
        tops = want[i][1]
        # The two runs parted at a near-tie of the model's own: both tokens were its top
        # two, within 0.5 nats of each other.
        assert tokens[i] in tops and expected[i] in tops, (tokens[i], expected[i], tops)
        assert abs(tops[tokens[i]] - tops[expected[i]]) < 0.5, tops


def openwebui_sampling() -> dict[str, Any]:
    """What `kronk server start` samples the default model with when a request, like
    OpenWebUI's background tasks, sets no parameters: the catalog entry's defaults. A seed
    makes the sampled answer reproducible (the server is batch-invariant)."""
    entry = Catalog().default_model()
    assert entry is not None and entry.files[0].sha256 == DEFAULT_MODEL.sha256
    sampling = dict(entry.defaults.sampling)
    openai_names = {"temperature", "top_p"}
    params: dict[str, Any] = {k: v for k, v in sampling.items() if k in openai_names}
    extra = {k: v for k, v in sampling.items() if k not in openai_names}
    return {**params, "seed": 7, "extra_body": extra}


def test_openwebui_title_and_follow_up_requests_return_json(default_model_path: Path) -> None:
    # A server of its own: a seeded sample is reproducible only from the same KV state, and
    # the shared server's slots hold whatever earlier tests left there to reuse.
    defaults = {"n_ctx": 2048, "n_seq_max": 4, "n_threads": 2, "batch_invariant": True}
    with live_server({"qwen": default_model_path}, load_defaults=defaults) as own:
        _title_and_follow_up(own.openai(timeout=300))


def _title_and_follow_up(client: openai.OpenAI) -> None:
    sampling = {**openwebui_sampling(), "max_tokens": 300}
    extra = sampling.pop("extra_body")
    title = client.chat.completions.create(
        model="qwen",
        messages=ask(TITLE_PROMPT),
        stream=False,
        response_format={"type": "json_object"},
        extra_body={**extra, "metadata": {"task": "title_generation", "chat_id": "local"}},
        **sampling,
    )
    parsed = json.loads(title.choices[0].message.content or "")
    assert isinstance(parsed["title"], str) and parsed["title"].strip()
    follow = client.chat.completions.create(
        model="qwen",
        messages=ask(FOLLOW_UP_PROMPT),
        stream=False,
        response_format={"type": "json_object"},
        extra_body={**extra, "metadata": {"task": "follow_up_generation"}},
        **sampling,
    )
    assert follow.choices[0].finish_reason == "stop"
    follow_ups = json.loads(follow.choices[0].message.content or "")["follow_ups"]
    assert follow_ups and all(isinstance(q, str) and q.strip() for q in follow_ups)


# -- tools (needs tools/tool_choice support in Kronk.chat) ---------------------------------


# The 0.5B model answers from a tool result when told to and not offered the tool again;
# offered it again, it calls it again (a small model's habit, not a protocol matter).
ANSWER_WITH_TOOLS = (
    "You are a helpful assistant. When a tool result arrives, answer the user's question "
    "with it in one sentence."
)


def test_tool_round_trip(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": ANSWER_WITH_TOOLS},
        *ask("What's the weather in Paris?"),
    ]
    first = client.chat.completions.create(
        model="qwen", messages=messages, tools=[WEATHER_TOOL], tool_choice="required", **GREEDY
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append(
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": json.dumps({"city": "Paris", "temperature_c": 22, "conditions": "sunny"}),
        }
    )
    second = client.chat.completions.create(model="qwen", messages=messages, **GREEDY)
    answer = second.choices[0]
    assert answer.finish_reason == "stop"
    assert "22" in (answer.message.content or "")


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="qwen",
            messages=ask("What's the weather in Paris?"),
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
            **GREEDY,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls, "no tool call deltas"
    # As OpenAI streams a call: index, id, type and name first (with empty arguments),
    # then argument fragments alone.
    head, rest = calls[0], calls[1:]
    assert head.index == 0 and head.id and head.type == "function"
    assert head.function and head.function.name == "get_weather"
    assert head.function.arguments == ""
    assert rest and all(tc.index == 0 and tc.id is None and tc.type is None for tc in rest)
    assert all(tc.function and tc.function.name is None for tc in rest)
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(arguments)["city"] == "Paris"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["tool_calls"]


class GetWeather(BaseModel):
    """Get the current weather for a city"""

    city: str


def test_strict_tool_arguments_parse_into_a_pydantic_model(client: openai.OpenAI) -> None:
    resp = client.chat.completions.parse(
        model="qwen",
        messages=ask("What's the weather in Paris?"),
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required",
        **GREEDY,
    )
    (call,) = resp.choices[0].message.tool_calls or []
    assert call.function.name == "GetWeather"
    assert call.function.parsed_arguments == GetWeather(city="Paris")


def test_responses_function_call(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": WEATHER_TOOL["function"]["parameters"],
    }
    resp = client.responses.create(
        model="qwen",
        input="What's the weather in Paris?",
        tools=[tool],
        tool_choice="required",
        **GREEDY,
    )
    (call,) = [item for item in resp.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] == "Paris"
    events = list(
        client.responses.create(
            model="qwen",
            input="What's the weather in Paris?",
            tools=[tool],
            tool_choice="required",
            stream=True,
            **GREEDY,
        )
    )
    fragments = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert json.loads("".join(fragments))["city"] == "Paris"
    assert events[-1].type == "response.completed"
    # The follow-up turn: the call and its output go back as input items.
    answer = client.responses.create(
        model="qwen",
        instructions=ANSWER_WITH_TOOLS,
        input=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "22°C and sunny"},
        ],
        **GREEDY,
    )
    assert answer.status == "completed"
    assert "22" in answer.output_text
