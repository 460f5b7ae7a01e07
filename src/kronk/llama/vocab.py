"""Tokenizer side of a loaded model: tokenize, token pieces, special and FIM tokens."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from kronk.errors import KronkError
from kronk.llama._lib import lib


@dataclass(frozen=True)
class SpecialTokens:
    """Special token ids; None where the model has no such token."""

    bos: int | None
    eos: int | None
    eot: int | None
    sep: int | None
    nl: int | None
    pad: int | None
    fim_pre: int | None
    fim_suf: int | None
    fim_mid: int | None
    fim_pad: int | None
    fim_rep: int | None
    fim_sep: int | None

    @property
    def has_fim(self) -> bool:
        return None not in (self.fim_pre, self.fim_suf, self.fim_mid)


def _opt(token: int) -> int | None:
    return None if token < 0 else int(token)


class Vocab:
    """Wraps `llama_vocab *`. Owned by its `LlamaModel`; valid while the model is."""

    def __init__(self, ptr: Any) -> None:
        self._ptr = ptr
        self.n_tokens = int(lib.llama_vocab_n_tokens(ptr))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(ptr))
        self.add_eos = bool(lib.llama_vocab_get_add_eos(ptr))
        self.special = SpecialTokens(
            bos=_opt(lib.llama_vocab_bos(ptr)),
            eos=_opt(lib.llama_vocab_eos(ptr)),
            eot=_opt(lib.llama_vocab_eot(ptr)),
            sep=_opt(lib.llama_vocab_sep(ptr)),
            nl=_opt(lib.llama_vocab_nl(ptr)),
            pad=_opt(lib.llama_vocab_pad(ptr)),
            fim_pre=_opt(lib.llama_vocab_fim_pre(ptr)),
            fim_suf=_opt(lib.llama_vocab_fim_suf(ptr)),
            fim_mid=_opt(lib.llama_vocab_fim_mid(ptr)),
            fim_pad=_opt(lib.llama_vocab_fim_pad(ptr)),
            fim_rep=_opt(lib.llama_vocab_fim_rep(ptr)),
            fim_sep=_opt(lib.llama_vocab_fim_sep(ptr)),
        )
        # Pieces are looked up once per generated token: cache them.
        self._pieces: dict[int, bytes] = {}
        self._eog: set[int] = {t for t in range(self.n_tokens) if lib.llama_vocab_is_eog(ptr, t)}

    @property
    def ptr(self) -> Any:
        return self._ptr

    @property
    def eog_tokens(self) -> frozenset[int]:
        """Tokens that end generation (EOS, EOT, <|im_end|>, ...)."""
        return frozenset(self._eog)

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def token_text(self, token: int) -> str:
        """The token's text as stored in the vocab (specials included)."""
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """Text -> token ids. `add_special` adds BOS/EOS as the model wants; `parse_special`
        turns special-token text (e.g. `<|im_start|>`) into the special token."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (lib.llama_token * capacity)()
        n = lib.llama_tokenize(
            self._ptr, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:  # buffer too small: -n is the size needed
            capacity = -n
            buf = (lib.llama_token * capacity)()
            n = lib.llama_tokenize(
                self._ptr, data, len(data), buf, capacity, add_special, parse_special
            )
            if n < 0:
                raise KronkError(f"llama.cpp could not tokenize the text (code {n})")
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """Raw bytes of one token; may be part of a multi-byte UTF-8 character.
        Special tokens render as their text only with `special=True`."""
        key = token if special else -1 - token
        cached = self._pieces.get(key)
        if cached is not None:
            return cached
        if not 0 <= token < self.n_tokens:
            raise ValueError(f"token id {token} is out of range (vocab has {self.n_tokens})")
        buf = ctypes.create_string_buffer(64)  # per call: the engine and callers share the vocab
        n = lib.llama_token_to_piece(self._ptr, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lib.llama_token_to_piece(self._ptr, token, buf, len(buf), 0, special)
        piece = bytes(buf.raw[:n])
        self._pieces[key] = piece
        return piece

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        """Token ids -> text (invalid UTF-8 replaced)."""
        for t in tokens:
            if not 0 <= t < self.n_tokens:
                raise ValueError(f"token id {t} is out of range (vocab has {self.n_tokens})")
        return b"".join(self.piece(t, special=special) for t in tokens).decode(
            "utf-8", errors="replace"
        )

    def mismatch(self, other: Vocab) -> str | None:
        """Why `other` cannot draft tokens for this vocabulary (None: it can).

        The rule is llama.cpp's for speculative decoding: same tokenizer type, same
        BOS/EOS and BOS/EOS handling, at most 128 tokens more or fewer, and the same text
        for every token id both have, from id 5 on (the ids below are often specials that
        merely differ in name). A draft token is verified by its id, so one id with two
        meanings would make the draft useless or, worse, misleading about acceptance."""
        if lib.llama_vocab_type(self._ptr) != lib.llama_vocab_type(other._ptr):
            return "the tokenizer types differ"
        if abs(self.n_tokens - other.n_tokens) > 128:
            return f"the vocabularies have {self.n_tokens} and {other.n_tokens} tokens"
        for name in ("bos", "eos"):
            mine, theirs = getattr(self.special, name), getattr(other.special, name)
            if mine != theirs:
                return f"the {name.upper()} tokens differ ({mine} and {theirs})"
        if (self.add_bos, self.add_eos) != (other.add_bos, other.add_eos):
            return "the vocabularies add BOS/EOS differently"
        get_text = lib.llama_vocab_get_text
        for token in range(5, min(self.n_tokens, other.n_tokens)):
            if get_text(self._ptr, token) != get_text(other._ptr, token):
                return f"token {token} differs"
        return None
