"""StopMatcher: streaming stop strings, never emitting any part of one."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from kronk.engine.stops import StopMatcher


def reference(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Whole-text answer: cut before the stop string complete first (the longest on ties)."""
    best: tuple[int, int] | None = None  # (end, -length) of the winning occurrence
    for stop in stops:
        start = text.find(stop) if stop else -1
        if start >= 0:
            key = (start + len(stop), -len(stop))
            best = key if best is None else min(best, key)
    if best is None:
        return text, False
    end, negative_length = best
    return text[: end + negative_length], True


def stream(pieces: Sequence[str], stops: Sequence[str]) -> tuple[str, bool]:
    """Feed the pieces as a generation loop would: stop pushing once a stop string matched."""
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        emitted, stopped = matcher.push(piece)
        out.append(emitted)
        if stopped:
            assert matcher.flush() == ""
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def splits(text: str, parts: int) -> list[list[str]]:
    if parts == 1:
        return [[text]]
    return [[text[:i], *rest] for i in range(len(text) + 1) for rest in splits(text[i:], parts - 1)]


CASES: list[tuple[str, list[str]]] = [
    ("Hello! User: more", ["User:"]),
    ("User: at the very start", ["User:"]),
    ("no stop in here at all", ["User:", "###"]),
    ("ends with a partial Use", ["User:"]),
    ("xabcdy", ["abcd", "bc"]),  # the shorter stop completes first
    ("xabcy", ["bc", "abc"]),  # both complete on "c": the longer one wins
    ("xabcy", ["ab", "abc"]),  # prefixes of each other
    ("xaaaby", ["aab"]),  # a partial match that must fall back to a shorter one
    ("abababc", ["ababc", "bab"]),
    ("emoji 🦙🚀 stop 你好 here", ["🚀 stop", "你好"]),
    ("line\n\nUser", ["\n\n", "\nUser"]),
    ("", ["x"]),
    ("nothing to stop", []),
]


@pytest.mark.parametrize(("text", "stops"), CASES)
def test_whole_text_matches_reference(text: str, stops: list[str]) -> None:
    assert stream([text], stops) == reference(text, stops)


@pytest.mark.parametrize(("text", "stops"), CASES)
def test_every_two_and_three_piece_split_gives_the_same_output(text: str, stops: list[str]) -> None:
    expected = reference(text, stops)
    for parts in (2, 3):
        for pieces in splits(text, parts):
            assert stream(pieces, stops) == expected, pieces


@pytest.mark.parametrize(("text", "stops"), CASES)
def test_char_by_char_never_emits_text_it_later_cuts(text: str, stops: list[str]) -> None:
    final, _ = reference(text, stops)
    matcher = StopMatcher(stops)
    emitted = ""
    for char in text:
        out, stopped = matcher.push(char)
        emitted += out
        assert final.startswith(emitted)
        if stopped:
            break
    emitted += matcher.flush()
    assert emitted == final


def test_partial_stop_is_held_back_then_released() -> None:
    matcher = StopMatcher(["User:"])
    assert matcher.push("Hello Us") == ("Hello ", False)
    assert matcher.push("e") == ("", False)
    assert matcher.push("d to") == ("Used to", False)
    assert matcher.push(" it. Use") == (" it. ", False)
    assert matcher.flush() == "Use"
    assert matcher.matched is None


def test_stop_split_across_pushes_is_never_emitted() -> None:
    matcher = StopMatcher(["User:"])
    assert matcher.push("Done.\nUse") == ("Done.\n", False)
    assert matcher.push("r: next") == ("", True)
    assert matcher.stopped
    assert matcher.matched == "User:"


def test_text_after_the_stop_is_dropped_and_later_pushes_are_ignored() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("hello STOP world") == ("hello ", True)
    assert matcher.push("more") == ("", True)
    assert matcher.flush() == ""


def test_stop_at_the_very_start() -> None:
    matcher = StopMatcher(["<|end|>"])
    assert matcher.push("<|end|>") == ("", True)
    assert matcher.matched == "<|end|>"


def test_matched_reports_the_winning_stop() -> None:
    matcher = StopMatcher(["abcd", "bc", "abc"])
    assert matcher.push("xabcd") == ("x", True)
    assert matcher.matched == "abc"


def test_no_stops_passes_everything_through_at_once() -> None:
    matcher = StopMatcher([])
    assert matcher.push("User:") == ("User:", False)
    assert matcher.flush() == ""


def test_empty_stop_strings_are_ignored() -> None:
    assert StopMatcher([""]).push("abc") == ("abc", False)
    matcher = StopMatcher(["", "c"])
    assert matcher.push("abc") == ("ab", True)
    assert matcher.matched == "c"


def test_duplicate_stop_strings_are_harmless() -> None:
    assert stream(["a", "bXYc"], ["XY", "XY"]) == ("ab", True)


def test_held_back_text_is_bounded_by_the_longest_stop() -> None:
    matcher = StopMatcher(["aab", "xyz"])
    long_text = "a" * 10_000
    out, stopped = matcher.push(long_text)
    assert not stopped
    assert out == long_text[:-2]  # only "aa" could still start "aab"
    out, stopped = matcher.push("a" * 5)
    assert out == "a" * 5
    assert matcher.push("b") == ("", True)


def test_random_texts_stops_and_splits_match_the_reference() -> None:
    rng = random.Random(4321)
    for _ in range(3000):
        stops = [
            "".join(rng.choice("ab") for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(1, 3))
        ]
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 14)))
        cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, 5)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert stream(pieces, stops) == reference(text, stops), (pieces, stops)
