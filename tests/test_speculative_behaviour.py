"""Speculative decoding on the real default model: an edit that copies its input is
drafted by n-gram lookup and comes out token for token as plain decoding writes it.

`batch_invariant=True` on both sides: verification decodes several tokens of a sequence
in one pass, and llama.cpp's repacked CPU kernels sum such a pass in another order than
a single token's, which can flip a near-tie. Without repacking both are the same sums,
so any difference here would be the engine's fault (docs/speculative.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kronk import Kronk

SMALL_FILE = '''\
def area(width, height):
    """The area of a rectangle."""
    return width * height


def perimeter(width, height):
    """The perimeter of a rectangle."""
    return 2 * (width + height)


def describe(width, height):
    return f"{width}x{height}: area {area(width, height)}, perimeter {perimeter(width, height)}"


if __name__ == "__main__":
    for w, h in [(1, 2), (3, 4), (5, 6)]:
        print(describe(w, h))
'''
EDIT = [
    {
        "role": "user",
        "content": "Rewrite this file with the function area renamed to surface everywhere. "
        "Answer with the whole file only.\n\n```python\n" + SMALL_FILE + "```",
    }
]


@pytest.fixture(scope="module")
def pair(default_model_path: Path) -> Iterator[tuple[Kronk, Kronk]]:
    plain = Kronk(
        default_model_path, n_ctx=2048, n_seq_max=4, speculative="off", batch_invariant=True
    )
    fast = Kronk(
        default_model_path, n_ctx=2048, n_seq_max=4, speculative="ngram", batch_invariant=True
    )
    yield plain, fast
    plain.close()
    fast.close()


def answer(k: Kronk, messages: list[dict[str, str]], **params: Any) -> str:
    content = k.chat(messages=messages, temperature=0, max_tokens=300, **params).choices[0]
    return content.message.content or ""


def test_an_edit_is_drafted_from_its_input_and_comes_out_the_same(
    pair: tuple[Kronk, Kronk],
) -> None:
    plain, fast = pair
    before = fast.stats()
    expected = answer(plain, EDIT)
    got = answer(fast, EDIT)
    assert got == expected
    assert "print(describe(w, h))" in got  # copied from the input
    stats = fast.stats()
    drafted = stats.draft_tokens - before.draft_tokens
    accepted = stats.draft_accepted - before.draft_accepted
    # The copied parts were drafted and kept (the 0.5B model rewrites more than it is
    # asked to, so how much of its answer is a copy varies).
    assert drafted > 0 and accepted >= 10


def test_json_schema_output_is_the_same_with_speculation(pair: tuple[Kronk, Kronk]) -> None:
    plain, fast = pair
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "functions": {"type": "array"}},
        "required": ["name", "functions"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "summary", "schema": schema}}
    messages = [
        {
            "role": "user",
            "content": "Summarise this file as JSON: its name and the functions it defines.\n\n"
            + SMALL_FILE,
        }
    ]
    expected = answer(plain, messages, response_format=fmt)
    got = answer(fast, messages, response_format=fmt)
    assert got == expected
    assert set(json.loads(got)) >= {"name", "functions"}


def test_four_concurrent_streams_with_drafts_answer_well(
    pair: tuple[Kronk, Kronk],
) -> None:
    """Four at once, drafting. Token identity with plain decoding is checked alone (the
    edit test above) and on tiny models with 4 slots (test_speculative.py): on the real
    model a verification pass holds several tokens of one sequence beside other
    sequences' tokens, and llama.cpp's CPU kernels do not promise the same last bits for
    every such shape, so a near-tie can flip (measured once on the edit). Here: every
    answer completes, the copied line is there, and drafts were made and kept."""
    _, fast = pair
    questions = [
        EDIT,
        [{"role": "user", "content": "Name three sorting algorithms, one line each."}],
        [{"role": "user", "content": "Write a Python function that reverses a list."}],
        [{"role": "user", "content": "Repeat the word 'ok' ten times, comma-separated."}],
    ]
    out: list[str] = [""] * len(questions)

    def ask(i: int) -> None:
        out[i] = answer(fast, questions[i])

    before = fast.stats()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(text.strip() for text in out)
    assert "print(describe(w, h))" in out[0]
    assert "ok, ok" in out[3]
    stats = fast.stats()
    assert stats.draft_tokens > before.draft_tokens
    assert stats.draft_accepted > before.draft_accepted
