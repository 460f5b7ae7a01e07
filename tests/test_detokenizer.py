"""IncrementalDecoder: token byte pieces in, whole characters out."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from kronk.engine.detokenizer import IncrementalDecoder

MIXED = "héllo wörld — 你好，世界 🦙🚀👩‍👩‍👧 ok"


def decode_pieces(pieces: Sequence[bytes]) -> tuple[list[str], str]:
    """Push every piece into a fresh decoder; return the per-push outputs and the flush."""
    decoder = IncrementalDecoder()
    outputs = [decoder.push(piece) for piece in pieces]
    return outputs, decoder.flush()


def two_splits(data: bytes) -> list[list[bytes]]:
    return [[data[:i], data[i:]] for i in range(len(data) + 1)]


def three_splits(data: bytes) -> list[list[bytes]]:
    return [
        [data[:i], data[i:j], data[j:]]
        for i in range(len(data) + 1)
        for j in range(i, len(data) + 1)
    ]


def test_ascii_passes_straight_through() -> None:
    decoder = IncrementalDecoder()
    assert decoder.push(b"Hello") == "Hello"
    assert decoder.push(b", world") == ", world"
    assert decoder.flush() == ""


def test_emoji_split_byte_by_byte_is_held_until_complete() -> None:
    llama = "🦙".encode()
    assert len(llama) == 4
    decoder = IncrementalDecoder()
    assert [decoder.push(llama[i : i + 1]) for i in range(4)] == ["", "", "", "🦙"]
    assert decoder.flush() == ""


def test_cjk_character_split_across_two_pieces() -> None:
    data = "你好".encode()  # 3 bytes each
    decoder = IncrementalDecoder()
    assert decoder.push(data[:4]) == "你"  # first character plus one byte of the second
    assert decoder.push(data[4:]) == "好"


def test_each_push_returns_exactly_the_complete_characters_so_far() -> None:
    data = MIXED.encode()
    decoder = IncrementalDecoder()
    emitted = ""
    for end in range(1, len(data) + 1):
        emitted += decoder.push(data[end - 1 : end])
        # The longest prefix of the bytes so far that is whole characters.
        complete = data[:end].decode("utf-8", errors="ignore")
        assert emitted == complete
        assert "\ufffd" not in emitted
    assert decoder.flush() == ""
    assert emitted == MIXED


@pytest.mark.parametrize("text", [MIXED, "🦙", "ä", "a🦙b", "你好"])
def test_every_two_piece_split_gives_the_text(text: str) -> None:
    for pieces in two_splits(text.encode()):
        outputs, rest = decode_pieces(pieces)
        assert "".join(outputs) + rest == text, pieces
        assert rest == ""
        assert all("\ufffd" not in out for out in outputs), pieces


@pytest.mark.parametrize("text", [MIXED[-12:], "🦙🚀", "x你y"])
def test_every_three_piece_split_gives_the_text(text: str) -> None:
    for pieces in three_splits(text.encode()):
        outputs, rest = decode_pieces(pieces)
        assert "".join(outputs) + rest == text, pieces
        assert all("\ufffd" not in out for out in outputs), pieces


def test_invalid_byte_mid_stream_is_replaced_not_raised() -> None:
    decoder = IncrementalDecoder()
    assert decoder.push(b"a\xffb") == "a\ufffdb"
    assert decoder.push(b"\x80") == "\ufffd"  # a lone continuation byte
    assert decoder.push("é".encode()) == "é"
    assert decoder.flush() == ""


def test_incomplete_sequence_broken_by_the_next_piece_is_replaced() -> None:
    decoder = IncrementalDecoder()
    assert decoder.push(b"\xe4\xb8") == ""  # could still become a CJK character
    assert decoder.push(b"A") == "\ufffdA"  # ...but did not


def test_flush_replaces_an_unfinished_character_and_resets() -> None:
    decoder = IncrementalDecoder()
    assert decoder.push(b"ok\xf0\x9f") == "ok"
    assert decoder.flush() == "\ufffd"
    # After the flush the old partial bytes are gone: a fresh stream decodes cleanly.
    assert decoder.push("🦙".encode()[1:]) == "\ufffd\ufffd\ufffd"
    assert decoder.push("🦙".encode()) == "🦙"
    assert decoder.flush() == ""


@pytest.mark.parametrize(
    "data",
    [b"a\xffb", b"\xe4\xb8A", b"\xf0\x9f\x98", b"\xc3\x28", b"\xed\xa0\x80x", MIXED.encode()[:-5]],
)
def test_invalid_data_decodes_like_bytes_decode_for_every_split(data: bytes) -> None:
    expected = data.decode("utf-8", errors="replace")
    for pieces in three_splits(data):
        outputs, rest = decode_pieces(pieces)
        assert "".join(outputs) + rest == expected, pieces


def test_random_bytes_and_random_splits_match_bytes_decode() -> None:
    rng = random.Random(1234)
    alphabet = [
        b"a",
        b"\xc3",
        b"\xa9",
        b"\xe4",
        b"\xb8",
        b"\x80",
        b"\xf0",
        b"\x9f",
        b"\xff",
        b"\xed",
    ]
    for _ in range(2000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 4)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        outputs, rest = decode_pieces(pieces)
        assert "".join(outputs) + rest == data.decode("utf-8", errors="replace"), pieces


def test_empty_piece_returns_nothing() -> None:
    decoder = IncrementalDecoder()
    assert decoder.push(b"") == ""
    assert decoder.push(b"\xe4") == ""
    assert decoder.push(b"") == ""
    assert decoder.push(b"\xb8\x80") == "一"
