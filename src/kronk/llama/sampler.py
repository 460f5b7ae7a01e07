"""Per-request sampler chains built from llama.cpp's own samplers."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kronk.errors import GrammarError, InvalidRequestError
from kronk.llama._lib import lib
from kronk.llama.vocab import Vocab

DEFAULT_DRY_BREAKERS: tuple[str, ...] = ("\n", ":", '"', "*")


@dataclass(frozen=True)
class SamplingParams:
    """Everything that shapes how the next token is picked. Defaults are llama.cpp's.

    `temperature <= 0` means greedy. Penalties, DRY and XTC are off at their defaults.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = DEFAULT_DRY_BREAKERS
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    seed: int | None = None
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    grammar: str | None = None
    # Lazy grammar: with triggers, `grammar` is off until the output reaches the end of one
    # of these literal texts (e.g. "<tool_call>"); from there on it applies. The grammar's
    # root must begin with the trigger text itself: llama.cpp replays it into the grammar.
    grammar_triggers: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validate(self, n_vocab: int) -> None:
        """Raise InvalidRequestError naming the first bad field."""

        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise InvalidRequestError(f"{name} {rule}; got {getattr(self, name)!r}", name)

        finite = math.isfinite
        check(
            finite(self.temperature) and 0 <= self.temperature <= 100,
            "temperature",
            "must be between 0 and 100",
        )
        check(self.top_k >= 0, "top_k", "must be >= 0 (0 disables it)")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        check(0 < self.typical_p <= 1, "typical_p", "must be in (0, 1]")
        check(
            finite(self.repeat_penalty) and self.repeat_penalty > 0, "repeat_penalty", "must be > 0"
        )
        check(self.repeat_last_n >= -1, "repeat_last_n", "must be >= -1 (-1 = whole context)")
        check(
            finite(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
            "presence_penalty",
            "must be between -2 and 2",
        )
        check(
            finite(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
            "frequency_penalty",
            "must be between -2 and 2",
        )
        check(
            finite(self.dry_multiplier) and self.dry_multiplier >= 0,
            "dry_multiplier",
            "must be >= 0",
        )
        check(finite(self.dry_base) and self.dry_base >= 1, "dry_base", "must be >= 1")
        check(self.dry_allowed_length >= 0, "dry_allowed_length", "must be >= 0")
        check(self.dry_penalty_last_n >= -1, "dry_penalty_last_n", "must be >= -1")
        check(0 <= self.xtc_probability <= 1, "xtc_probability", "must be in [0, 1]")
        check(0 <= self.xtc_threshold <= 1, "xtc_threshold", "must be in [0, 1]")
        check(self.seed is None or 0 <= self.seed < 2**32, "seed", "must be in [0, 2^32)")
        check(
            not self.grammar_triggers or self.grammar is not None,
            "grammar_triggers",
            "need a grammar",
        )
        check(all(self.grammar_triggers), "grammar_triggers", "must not be empty texts")
        for token, bias in self.logit_bias.items():
            if not 0 <= token < n_vocab:
                raise InvalidRequestError(
                    f"logit_bias token id {token} is out of range (vocab has {n_vocab})",
                    "logit_bias",
                )
            if not (math.isfinite(bias) or bias == -math.inf):
                raise InvalidRequestError(
                    f"logit_bias for token {token} must be a number", "logit_bias"
                )


class SamplerChain:
    """A `llama_sampler` chain for one request. Not thread-safe; the engine thread owns it."""

    def __init__(
        self, vocab: Vocab, params: SamplingParams, *, extra_bias: Mapping[int, float] | None = None
    ) -> None:
        self._closed = True  # until the chain exists, there is nothing to free
        params.validate(vocab.n_tokens)
        self.params = params
        sparams = lib.llama_sampler_chain_default_params()
        sparams.no_perf = True
        self._ptr: Any = lib.llama_sampler_chain_init(sparams)
        self._closed = False
        try:
            self._build(vocab, params, {**params.logit_bias, **(extra_bias or {})})
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: Any) -> None:
        if not sampler:
            raise InvalidRequestError("llama.cpp rejected a sampler parameter")
        lib.llama_sampler_chain_add(self._ptr, sampler)  # the chain owns it from here

    def _build(self, vocab: Vocab, p: SamplingParams, bias: Mapping[int, float]) -> None:
        # The grammar goes first so that every later sampler only sees tokens it allows.
        if p.grammar is not None:
            grammar = (
                _lazy_grammar(vocab, p.grammar, p.grammar_triggers)
                if p.grammar_triggers
                else lib.llama_sampler_init_grammar(vocab.ptr, p.grammar.encode("utf-8"), b"root")
            )
            if not grammar:
                raise GrammarError(
                    "grammar does not parse (see GBNF syntax); it must define 'root'", "grammar"
                )
            self._add(grammar)
        if bias:
            items = (lib.llama_logit_bias * len(bias))()
            for i, (token, value) in enumerate(bias.items()):
                items[i].token = token
                items[i].bias = value if math.isfinite(value) else -1e30
            self._add(lib.llama_sampler_init_logit_bias(vocab.n_tokens, len(bias), items))
        if p.repeat_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
            self._add(
                lib.llama_sampler_init_penalties(
                    vocab.n_tokens,
                    p.repeat_last_n,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                )
            )
        if p.dry_multiplier > 0:
            breakers = [b.encode("utf-8") for b in p.dry_sequence_breakers]
            arr = (ctypes.c_char_p * len(breakers))(*breakers)
            self._add(
                lib.llama_sampler_init_dry(
                    vocab.ptr,
                    p.dry_multiplier,
                    p.dry_base,
                    p.dry_allowed_length,
                    p.dry_penalty_last_n,
                    arr,
                    len(breakers),
                )
            )
        if p.greedy:
            self._add(lib.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            self._add(lib.llama_sampler_init_top_k(p.top_k))
        if p.typical_p < 1.0:
            self._add(lib.llama_sampler_init_typical(p.typical_p, 1))
        if p.top_p < 1.0:
            self._add(lib.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            self._add(lib.llama_sampler_init_min_p(p.min_p, 1))
        if p.xtc_probability > 0.0:
            seed = lib.LLAMA_DEFAULT_SEED if p.seed is None else p.seed
            self._add(lib.llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, 1, seed))
        self._add(lib.llama_sampler_init_temp(p.temperature))
        self._add(lib.llama_sampler_init_dist(lib.LLAMA_DEFAULT_SEED if p.seed is None else p.seed))

    def sample(self, ctx_ptr: Any, index: int) -> int:
        """Pick the next token from the logits at batch `index` and record it in the chain
        (penalties, grammar state)."""
        return int(lib.llama_sampler_sample(self._ptr, ctx_ptr, index))

    def accept(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            lib.llama_sampler_accept(self._ptr, t)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            lib.llama_sampler_free(self._ptr)

    def __del__(self) -> None:
        self.close()


# ECMAScript regex metacharacters (std::regex's default syntax).
_REGEX_SPECIALS = frozenset("^$\\.*+?()[]{}|/")


def _lazy_grammar(vocab: Vocab, grammar: str, triggers: Sequence[str]) -> Any:
    """A grammar sampler that waits for one of `triggers` to end the output so far.

    Each trigger becomes the pattern `(escaped text)$`: it fires only when generated text
    ends exactly with the trigger at a token boundary, so what llama.cpp replays into the
    grammar is exactly the trigger text, which the grammar starts with. A looser pattern
    could replay text the grammar rejects, and llama.cpp aborts the process on that. The
    end anchor also keeps std::regex from backtracking over the whole output each token.
    """
    patterns = [
        "(" + "".join("\\" + c if c in _REGEX_SPECIALS else c for c in t) + ")$" for t in triggers
    ]
    encoded = [p.encode("utf-8") for p in patterns]
    arr = (ctypes.c_char_p * len(encoded))(*encoded)
    return lib.llama_sampler_init_grammar_lazy_patterns(
        vocab.ptr, grammar.encode("utf-8"), b"root", arr, len(encoded), None, 0
    )
