"""ReasoningParser / split_reasoning: thinking separated from the answer, streaming or not."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from kronk.chat.reasoning import ReasoningDelta, ReasoningParser, split_reasoning


def reference(
    text: str, start: str = "<think>", end: str = "</think>", starts_in_reasoning: bool = False
) -> tuple[str | None, str]:
    """The documented rules, written the plain way for whole texts."""
    opened = text.lstrip()
    if opened.startswith(start):
        body = opened[len(start) :]
    elif starts_in_reasoning:
        body = text
    else:
        return None, text
    reasoning, found, content = body.partition(end)
    return reasoning.strip(), content.lstrip() if found else ""


def stream(
    pieces: Sequence[str],
    start_tag: str = "<think>",
    end_tag: str = "</think>",
    starts_in_reasoning: bool = False,
) -> tuple[str, str, bool]:
    """Feed pieces; return (all reasoning, all content, saw_reasoning)."""
    parser = ReasoningParser(start_tag, end_tag, starts_in_reasoning)
    deltas = [parser.push(piece) for piece in pieces]
    deltas.append(parser.flush())
    return (
        "".join(d.reasoning for d in deltas),
        "".join(d.content for d in deltas),
        parser.saw_reasoning,
    )


def splits(text: str, parts: int) -> list[list[str]]:
    if parts == 1:
        return [[text]]
    return [[text[:i], *rest] for i in range(len(text) + 1) for rest in splits(text[i:], parts - 1)]


SAMPLES = [
    "<think>\nLet me think.\n\nYes.\n</think>\n\nThe answer is 4.",
    "\n <think>hmm</think>ok",
    "<think></think>\n\nempty reasoning",
    "<think>cut off while thinking\n",
    "plain answer, no tags",
    "  leading spaces kept without tags",
    "Use a <think> tag like this: <think>x</think>",
    "<thinking is not the tag",
    "<thi",
    "\n\n",
    "",
    "<think>a</think>b<think>c</think>d",
    "<think>🦙 你好 </think/> still </think> 答案",
]


@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("starts_in_reasoning", [False, True])
def test_split_reasoning_follows_the_rules(text: str, starts_in_reasoning: bool) -> None:
    expected = reference(text, starts_in_reasoning=starts_in_reasoning)
    assert split_reasoning(text, starts_in_reasoning=starts_in_reasoning) == expected


@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("starts_in_reasoning", [False, True])
def test_every_two_and_three_piece_split_gives_the_same_result(
    text: str, starts_in_reasoning: bool
) -> None:
    reasoning, content = reference(text, starts_in_reasoning=starts_in_reasoning)
    expected = (reasoning or "", content, reasoning is not None)
    for parts in (2, 3):
        for pieces in splits(text, parts):
            got = stream(pieces, starts_in_reasoning=starts_in_reasoning)
            assert got == expected, pieces


def test_typical_reasoning_output() -> None:
    text = "<think>\nThe user wants 2+2.\n</think>\n\n4"
    assert split_reasoning(text) == ("The user wants 2+2.", "4")


def test_no_tags_is_all_content_and_no_reasoning() -> None:
    assert split_reasoning("Hello there.") == (None, "Hello there.")


def test_empty_reasoning_block_is_empty_not_none() -> None:
    assert split_reasoning("<think>\n\n</think>\n\nHi") == ("", "Hi")


def test_start_tag_later_in_the_output_is_content() -> None:
    text = "Write <think>…</think> around it."
    assert split_reasoning(text) == (None, text)


def test_second_block_after_the_first_is_content() -> None:
    assert split_reasoning("<think>a</think>b<think>c</think>") == ("a", "b<think>c</think>")


def test_end_tag_without_start_is_content_unless_starting_in_reasoning() -> None:
    text = "thinking...</think>\n\nanswer"
    assert split_reasoning(text) == (None, text)
    assert split_reasoning(text, starts_in_reasoning=True) == ("thinking...", "answer")


def test_starts_in_reasoning_swallows_a_repeated_start_tag() -> None:
    text = "<think>\nhmm\n</think>\n\nanswer"
    assert split_reasoning(text, starts_in_reasoning=True) == ("hmm", "answer")


def test_output_cut_off_inside_reasoning_is_all_reasoning() -> None:
    assert split_reasoning("<think>step 1\nstep 2</thi") == ("step 1\nstep 2</thi", "")
    assert split_reasoning("step 1", starts_in_reasoning=True) == ("step 1", "")


def test_custom_tags() -> None:
    text = "[THINK]plan[/THINK] done"
    assert split_reasoning(text, start_tag="[THINK]", end_tag="[/THINK]") == ("plan", "done")
    assert split_reasoning(text) == (None, text)


def test_end_tag_split_across_pushes_is_held_back_and_never_emitted() -> None:
    parser = ReasoningParser()
    assert parser.push("<think>I reckon</th") == ReasoningDelta(reasoning="I reckon")
    assert parser.in_reasoning
    assert parser.push("ink") == ReasoningDelta()
    assert parser.push(">\n\nYes") == ReasoningDelta(content="Yes")
    assert not parser.in_reasoning
    assert parser.flush() == ReasoningDelta()


def test_start_tag_split_across_pushes() -> None:
    parser = ReasoningParser()
    assert parser.push("\n<") == ReasoningDelta()
    assert parser.push("thi") == ReasoningDelta()
    assert parser.push("nk>\nfirst") == ReasoningDelta(reasoning="first")
    assert parser.saw_reasoning


def test_false_start_tag_is_released_as_content_with_its_whitespace() -> None:
    parser = ReasoningParser()
    assert parser.push(" <thi") == ReasoningDelta()
    assert parser.push("s is it") == ReasoningDelta(content=" <this is it")
    assert parser.push(" <think>") == ReasoningDelta(content=" <think>")  # content from now on
    assert not parser.saw_reasoning


def test_content_streams_without_holding_anything_back() -> None:
    parser = ReasoningParser()
    assert parser.push("Sure") == ReasoningDelta(content="Sure")
    assert parser.push(" </thi") == ReasoningDelta(content=" </thi")
    assert parser.push("\n\n") == ReasoningDelta(content="\n\n")


def test_whitespace_inside_reasoning_is_kept_but_not_at_its_edges() -> None:
    parser = ReasoningParser()
    assert parser.push("<think>\n") == ReasoningDelta()
    assert parser.push("a") == ReasoningDelta(reasoning="a")
    assert parser.push("\n\n") == ReasoningDelta()  # may be trailing: wait and see
    assert parser.push("b\n") == ReasoningDelta(reasoning="\n\nb")
    assert parser.push("</think>") == ReasoningDelta()
    assert parser.push("\n") == ReasoningDelta()
    assert parser.push("\nc d") == ReasoningDelta(content="c d")


def test_reasoning_and_content_in_one_push() -> None:
    parser = ReasoningParser()
    assert parser.push("<think>x</think>y") == ReasoningDelta(reasoning="x", content="y")


def test_starts_in_reasoning_streams_reasoning_from_the_first_token() -> None:
    parser = ReasoningParser(starts_in_reasoning=True)
    assert parser.in_reasoning
    assert parser.push("Okay") == ReasoningDelta(reasoning="Okay")
    assert parser.push(", so</think>\n\nDone") == ReasoningDelta(reasoning=", so", content="Done")


@pytest.mark.parametrize(
    ("start", "end"), [("", "</think>"), ("<think>", ""), (" <think>", "</think>")]
)
def test_bad_tags_are_rejected(start: str, end: str) -> None:
    with pytest.raises(ValueError):
        ReasoningParser(start, end)


def test_end_tag_starting_with_whitespace_still_splits_consistently() -> None:
    text = "<t>a b \n\n</t>c"
    expected = reference(text, "<t>", "\n</t>")
    assert expected == ("a b", "c")
    for pieces in splits(text, 3):
        assert stream(pieces, "<t>", "\n</t>") == ("a b", "c", True), pieces


def test_random_texts_and_splits_match_the_reference() -> None:
    rng = random.Random(99)
    fragments = ["<think>", "</think>", "<", "</", "<th", "ink>", "think", ">", " ", "\n", "a", "b"]
    for _ in range(3000):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 8)))
        starts_in_reasoning = rng.random() < 0.3
        cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, 5)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        reasoning, content = reference(text, starts_in_reasoning=starts_in_reasoning)
        got = stream(pieces, starts_in_reasoning=starts_in_reasoning)
        assert got == (reasoning or "", content, reasoning is not None), (
            pieces,
            starts_in_reasoning,
        )
        assert split_reasoning(text, starts_in_reasoning=starts_in_reasoning) == (
            reasoning,
            content,
        )


def test_self_overlapping_end_tag_is_held_back_fully() -> None:
    # "]]]>" ends in "]]>": holding back only "]" of "x]]" would leak half the tag.
    parser = ReasoningParser("<r>", "]]>")
    assert parser.push("<r>x]]") == ReasoningDelta(reasoning="x")
    assert parser.push("]") == ReasoningDelta(reasoning="]")
    assert parser.push(">y") == ReasoningDelta(content="y")


def test_random_texts_with_a_self_overlapping_end_tag_match_the_reference() -> None:
    rng = random.Random(7)
    fragments = ["<r>", "]]>", "]", "]]", ">", "<", " ", "a"]
    for _ in range(3000):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 8)))
        cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, 5)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        reasoning, content = reference(text, "<r>", "]]>")
        got = stream(pieces, "<r>", "]]>")
        assert got == (reasoning or "", content, reasoning is not None), pieces
