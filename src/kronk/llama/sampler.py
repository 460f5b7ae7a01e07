"""Per-request sampler chains built from llama.cpp's own samplers."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kronk.errors import DecodeError, GrammarError, InvalidRequestError
from kronk.llama._lib import lib
from kronk.llama.vocab import Vocab

# llama_token_data {int32 id; float logit; float p}, as a numpy record.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])

DEFAULT_DRY_BREAKERS: tuple[str, ...] = ("\n", ":", '"', "*")
# Integer parameters reach llama.cpp as int32; larger values would wrap silently.
_INT32 = 2**31
# The context a penalty window of -1 ("the whole context") means when the caller does not
# say (the SDK's default n_ctx).
_FALLBACK_CONTEXT = 4096


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
        check(0 <= self.top_k < _INT32, "top_k", "must be in [0, 2^31) (0 disables it)")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        check(0 < self.typical_p <= 1, "typical_p", "must be in (0, 1]")
        check(
            finite(self.repeat_penalty) and self.repeat_penalty > 0, "repeat_penalty", "must be > 0"
        )
        check(
            -1 <= self.repeat_last_n < _INT32,
            "repeat_last_n",
            "must be in [-1, 2^31) (-1 = whole context)",
        )
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
        check(0 <= self.dry_allowed_length < _INT32, "dry_allowed_length", "must be in [0, 2^31)")
        check(-1 <= self.dry_penalty_last_n < _INT32, "dry_penalty_last_n", "must be in [-1, 2^31)")
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
    """A `llama_sampler` chain for one request. Not thread-safe; the engine thread owns it.

    A grammar is kept out of the chain and applied the way llama.cpp's own `common_sampler`
    does: the chain picks a token from the raw candidates, the grammar checks just that
    one, and only when it refuses are all candidates filtered through the grammar and the
    chain run again. Filtering a whole 150k-token vocabulary through a grammar costs tens
    of milliseconds, several times a decode step; checking one token costs microseconds.
    """

    def __init__(
        self,
        vocab: Vocab,
        params: SamplingParams,
        *,
        extra_bias: Mapping[int, float] | None = None,
        n_ctx: int | None = None,
    ) -> None:
        """`n_ctx` is the request's context window: what a penalty window of -1 covers,
        and the most any window can usefully cover."""
        self._closed = True  # until the chain exists, there is nothing to free
        params.validate(vocab.n_tokens)
        self.params = params
        self._n_vocab = vocab.n_tokens
        self._n_ctx = n_ctx if n_ctx is not None else _FALLBACK_CONTEXT
        self._grammar: Any = None
        self._cur: npt.NDArray[np.void] | None = None  # candidates buffer, with a grammar
        sparams = lib.llama_sampler_chain_default_params()
        sparams.no_perf = True
        self._ptr: Any = lib.llama_sampler_chain_init(sparams)
        self._closed = False
        try:
            self._grammar = _grammar_sampler(vocab, params)
            if self._grammar is not None:
                self._cur = np.zeros(vocab.n_tokens, _TOKEN_DATA)
                self._ids = np.arange(vocab.n_tokens, dtype=np.int32)
                self._one = lib.llama_token_data()
                self._one_array = lib.llama_token_data_array(
                    data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False
                )
            self._build(vocab, params, {**params.logit_bias, **(extra_bias or {})})
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: Any) -> None:
        if not sampler:
            raise InvalidRequestError("llama.cpp rejected a sampler parameter")
        lib.llama_sampler_chain_add(self._ptr, sampler)  # the chain owns it from here

    def _build(self, vocab: Vocab, p: SamplingParams, bias: Mapping[int, float]) -> None:
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
                    self._window(p.repeat_last_n),
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
                    self._window(p.dry_penalty_last_n),
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

    def _window(self, last_n: int) -> int:
        """Tokens a repetition penalty looks back over. llama.cpp takes -1 as 0 (the penalty
        silently off) and allocates the window up front, so -1 becomes the whole context and
        no window is larger than it."""
        return self._n_ctx if last_n == -1 or last_n > self._n_ctx else last_n

    def sample(self, ctx_ptr: Any, index: int) -> int:
        """Pick the next token from the logits at batch `index` and record it in the chain
        (penalties, grammar state). Raises GrammarError when the grammar allows no token."""
        if self._grammar is None:
            return int(lib.llama_sampler_sample(self._ptr, ctx_ptr, index))
        logits = lib.llama_get_logits_ith(ctx_ptr, index)
        if not logits:
            raise DecodeError(f"no logits for batch index {index}")
        token = self._select(logits, with_grammar=False)
        if not self._grammar_allows(token):
            token = self._select(logits, with_grammar=True)
        lib.llama_sampler_accept(self._grammar, token)
        lib.llama_sampler_accept(self._ptr, token)
        return token

    def _select(self, logits: Any, *, with_grammar: bool) -> int:
        """Run the chain (after the grammar, if asked) over all candidates; the pick.

        Done here rather than by `llama_sampler_sample` so that a token the grammar forbids
        is never accepted: when a grammar has no way forward (`[z-a]`, or text it needs that
        the vocabulary cannot spell) every candidate is -inf, llama.cpp would select one
        anyway, and accepting it throws a C++ exception that aborts the process.
        """
        cur = self._cur
        assert cur is not None
        cur["id"] = self._ids  # the samplers reorder the buffer in place
        cur["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        cur["p"] = 0.0
        candidates = lib.llama_token_data_array(
            data=cur.ctypes.data_as(ctypes.POINTER(lib.llama_token_data)),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        if with_grammar:
            lib.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        lib.llama_sampler_apply(self._ptr, ctypes.byref(candidates))
        selected = int(candidates.selected)
        # `data` may point elsewhere now: samplers are allowed to replace it.
        chosen = candidates.data[selected] if 0 <= selected < candidates.size else None
        if chosen is None or (with_grammar and chosen.logit == -math.inf):  # grammar's veto
            raise GrammarError(
                "the grammar allows no token at this point of the output; "
                "check it for rules that can never match",
                "grammar",
            )
        return int(chosen.id)

    def _grammar_allows(self, token: int) -> bool:
        one = self._one
        one.id, one.logit, one.p = token, 0.0, 0.0
        self._one_array.selected = -1
        lib.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return bool(one.logit != -math.inf)

    def accept(self, tokens: Sequence[int]) -> None:
        """Record tokens as if sampled (the grammar must allow each: llama.cpp aborts else)."""
        for t in tokens:
            if self._grammar is not None:
                lib.llama_sampler_accept(self._grammar, t)
            lib.llama_sampler_accept(self._ptr, t)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            lib.llama_sampler_free(self._ptr)
            if self._grammar is not None:
                lib.llama_sampler_free(self._grammar)
                self._grammar = None

    def __del__(self) -> None:
        self.close()


def _grammar_sampler(vocab: Vocab, p: SamplingParams) -> Any:
    """The request's grammar sampler (owned by the caller), or None without a grammar."""
    if not p.grammar:  # None, or "" which llama.cpp takes as "no grammar"
        return None
    grammar = (
        _lazy_grammar(vocab, p.grammar, p.grammar_triggers)
        if p.grammar_triggers
        else lib.llama_sampler_init_grammar(vocab.ptr, p.grammar.encode("utf-8"), b"root")
    )
    if not grammar:
        raise GrammarError(
            "grammar does not parse (see GBNF syntax); it must define 'root'", "grammar"
        )
    return grammar


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
