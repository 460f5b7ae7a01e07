"""Behaviour of the SDK on the real default model (Qwen2.5-Coder-0.5B-Instruct).

Greedy decoding everywhere, so every answer is reproducible.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from kronk import ContextFullError, GrammarError, InvalidRequestError, Kronk

GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def qwen(default_model_path: Path) -> Iterator[Kronk]:
    # batch_invariant: concurrent and sequential greedy runs must agree token for token.
    with Kronk(
        default_model_path,
        model_id="qwen",
        n_ctx=2048,
        n_seq_max=8,
        n_threads=2,
        batch_invariant=True,
    ) as k:
        yield k


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_greedy_chat_answers_two_plus_two(qwen: Kronk) -> None:
    resp = qwen.chat(ask("What is 2+2?"), **GREEDY)
    choice = resp.choices[0]
    assert "4" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert resp.object == "chat.completion"
    assert resp.model == "qwen"
    assert resp.usage.prompt_tokens > 10
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_stream_chunks_add_up_to_the_non_streamed_answer(qwen: Kronk) -> None:
    messages = ask("Name three colours.")
    full = qwen.chat(messages, max_tokens=40, **GREEDY).choices[0].message.content
    chunks = list(qwen.chat_stream(messages, max_tokens=40, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full


def test_eight_concurrent_requests_match_sequential_runs(qwen: Kronk) -> None:
    prompts = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three prime numbers.",
        "What does CPU stand for?",
        "Say hello in Spanish.",
        "What is 7 times 6?",
        "Name a famous physicist.",
        "What colour is the sky?",
    ]
    sequential = [
        qwen.chat(ask(p), max_tokens=32, **GREEDY).choices[0].message.content for p in prompts
    ]
    concurrent: list[str | None] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        barrier.wait()
        concurrent[i] = (
            qwen.chat(ask(prompts[i]), max_tokens=32, **GREEDY).choices[0].message.content
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert concurrent == sequential


def test_requests_joining_running_streams_answer_as_they_do_alone(qwen: Kronk) -> None:
    """Each request goes out once the one before it has streamed a few tokens, so
    prompts are prefilled while others generate and up to eight sequences generate
    together: the passes that llama.cpp rounds differently from a request served alone
    (engine/invariance.py). The greedy answers must still be the lone ones."""
    prompts = [
        "Write a haiku about the sea.",
        "Write a limerick about a cat.",
        "Describe a sunset in two sentences.",
        "List three prime numbers.",
        "Name a famous physicist.",
        "Give me a tip for learning to cook.",
        "What is the tallest mountain?",
        "Write one line of a poem about rain.",
        "Explain what a compiler does.",
        "Suggest a name for a dog.",
    ]
    alone = [qwen.chat(ask(p), max_tokens=40, **GREEDY).choices[0].message.content for p in prompts]
    answers: list[str | None] = [None] * len(prompts)
    streaming = [threading.Event() for _ in prompts]

    def run(i: int) -> None:
        pieces = []
        try:
            for n, chunk in enumerate(qwen.chat_stream(ask(prompts[i]), max_tokens=40, **GREEDY)):
                pieces.append(chunk.choices[0].delta.content or "")
                if n == 4:
                    streaming[i].set()
        finally:
            streaming[i].set()
        answers[i] = "".join(pieces)

    threads = []
    for i in range(len(prompts)):
        threads.append(threading.Thread(target=run, args=(i,)))
        threads[-1].start()
        streaming[i].wait()
    for t in threads:
        t.join()
    assert answers == alone


def test_a_follow_up_answers_as_on_a_fresh_engine(qwen: Kronk, default_model_path: Path) -> None:
    """The second turn reuses the first turn's KV here and computes everything on a
    fresh engine; batch_invariant makes both the same numbers."""
    messages = ask("Tell me a fact about the moon.")
    first = qwen.chat(messages, max_tokens=24, **GREEDY).choices[0].message.content
    follow_up = [
        *messages,
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Now tell me one about Mars."},
    ]
    warm = qwen.chat(follow_up, max_tokens=40, **GREEDY)
    with Kronk(
        default_model_path, n_ctx=2048, n_seq_max=2, n_threads=2, batch_invariant=True
    ) as fresh:
        cold = fresh.chat(follow_up, max_tokens=40, **GREEDY)
    assert warm.usage.prompt_tokens_details.cached_tokens > 0
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.choices[0].message.content == cold.choices[0].message.content


def test_stop_string_never_leaks_into_the_stream(qwen: Kronk) -> None:
    messages = ask("Count from 1 to 10, separated by commas.")
    unstopped = qwen.chat(messages, max_tokens=40, **GREEDY).choices[0].message.content or ""
    assert "5" in unstopped  # otherwise the stop below proves nothing
    pieces = [
        c.choices[0].delta.content or ""
        for c in qwen.chat_stream(messages, max_tokens=40, stop=["5"], **GREEDY)
    ]
    text = "".join(pieces)
    assert "5" not in text
    assert text == unstopped[: unstopped.index("5")]


def test_closing_a_stream_frees_its_slot(qwen: Kronk) -> None:
    stream = qwen.chat_stream(ask("Write a long story about a dragon."), max_tokens=500, **GREEDY)
    received = 0
    for chunk in stream:
        received += len(chunk.choices[0].delta.content or "")
        if received > 20:
            break
    assert qwen.stats().slots_busy == 1
    stream.close()
    assert qwen.stats().slots_busy == 0
    # and the engine goes on serving
    assert "4" in (qwen.chat(ask("What is 2+2?"), **GREEDY).choices[0].message.content or "")


def test_fill_in_the_middle_writes_the_function_body(qwen: Kronk) -> None:
    prefix = "def add(a, b):\n    "
    suffix = "\n\nprint(add(2, 3))\n"
    resp = qwen.complete(prefix, suffix=suffix, max_tokens=32, **GREEDY)
    middle = resp.choices[0].text
    assert "return" in middle
    namespace: dict[str, object] = {}
    exec(prefix + middle.split("\n\n")[0], namespace)  # the filled function must work
    assert namespace["add"](2, 3) == 5  # type: ignore[operator]


def test_json_schema_response_format_yields_valid_json(qwen: Kronk) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    resp = qwen.chat(
        ask("Describe a person called Ada who is 36."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
        max_tokens=80,
        **GREEDY,
    )
    data = json.loads(resp.choices[0].message.content or "")
    jsonschema.validate(data, schema)


def test_a_grammar_that_allows_the_answer_leaves_it_unchanged(qwen: Kronk) -> None:
    # Grammar requests are sampled on their own path (the grammar vets the chain's pick and
    # only refuses force a resample); an answer the grammar allows must come out as is.
    messages = ask("Name three colours.")
    free = qwen.chat(messages, max_tokens=24, **GREEDY).choices[0]
    text = free.message.content or ""
    assert text
    literal = json.dumps(text, ensure_ascii=False)  # JSON string syntax is GBNF's too
    constrained = qwen.chat(messages, grammar=f"root ::= {literal}", max_tokens=30, **GREEDY)
    assert constrained.choices[0].message.content == text
    assert constrained.choices[0].finish_reason == "stop"  # where the grammar ends, EOS


def test_logprobs_are_log_probabilities_with_the_chosen_token_on_top(qwen: Kronk) -> None:
    resp = qwen.chat(ask("Say hi."), logprobs=True, top_logprobs=3, max_tokens=8, **GREEDY)
    content = resp.choices[0].logprobs and resp.choices[0].logprobs.content
    assert content
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        assert all(t.logprob <= 0 for t in item.top_logprobs)
        # greedy: the chosen token is the most likely one
        assert item.token == item.top_logprobs[0].token
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)


def test_prefix_cache_reuses_the_previous_turn(qwen: Kronk) -> None:
    messages = ask("Tell me a fact about the moon.")
    first = qwen.chat(messages, max_tokens=16, **GREEDY)
    follow_up = [
        *messages,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And one about the sun."},
    ]
    second = qwen.chat(follow_up, max_tokens=16, **GREEDY)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1


def test_async_twins_match_the_sync_api(qwen: Kronk) -> None:
    messages = ask("What is 3+3?")
    sync_text = qwen.chat(messages, max_tokens=20, **GREEDY).choices[0].message.content

    async def main() -> tuple[str | None, str]:
        resp = await qwen.achat(messages, max_tokens=20, **GREEDY)
        streamed = ""
        async with qwen.achat_stream(messages, max_tokens=20, **GREEDY) as stream:
            async for chunk in stream:
                streamed += chunk.choices[0].delta.content or ""
        return resp.choices[0].message.content, streamed

    async_text, streamed = asyncio.run(main())
    assert async_text == sync_text == streamed


def test_thinking_prompt_sends_output_to_reasoning_content(qwen: Kronk, tmp_path: Path) -> None:
    # A template that opens a think block, as reasoning models' templates do; the model
    # writes no closing tag here, so everything it writes is reasoning.
    template = tmp_path / "think.jinja"
    template.write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "<|im_start|>assistant\n<think>\n"
    )
    with Kronk(qwen.model.path, n_ctx=512, n_seq_max=1, n_threads=2, chat_template=template) as k:
        resp = k.chat(ask("What is 2+2?"), max_tokens=12, stop=["</think>"], **GREEDY)
    message = resp.choices[0].message
    assert message.reasoning_content
    assert message.content == ""


def test_bad_requests_get_clear_errors_and_the_engine_keeps_serving(qwen: Kronk) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        qwen.chat(ask("hi"), max_tokens=0)
    assert exc.value.param == "max_tokens"
    with pytest.raises(InvalidRequestError) as exc:
        qwen.chat(ask("hi"), temprature=0.5)
    assert exc.value.param == "temprature" and "unknown parameter" in str(exc.value)
    with pytest.raises(GrammarError):
        qwen.chat(ask("hi"), grammar="root ::= (")
    with pytest.raises(ContextFullError) as full:
        qwen.chat(ask("word " * 3000))
    assert full.value.n_ctx == 2048
    with pytest.raises(InvalidRequestError) as exc:
        qwen.chat([])
    assert exc.value.param == "messages"
    assert "4" in (qwen.chat(ask("What is 2+2?"), **GREEDY).choices[0].message.content or "")
