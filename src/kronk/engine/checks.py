"""Checks a request passes before it is queued, and log probabilities of outputs."""

from __future__ import annotations

import math

import numpy as np

from kronk.engine.request import (
    MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
)
from kronk.errors import ContextFullError, InvalidRequestError
from kronk.llama import LlamaContext, Vocab


def check_token_ids(tokens: list[int] | tuple[int, ...] | object, n_vocab: int, param: str) -> None:
    assert isinstance(tokens, list | tuple)
    if tokens and (min(tokens) < 0 or max(tokens) >= n_vocab):
        raise InvalidRequestError(
            f"{param} has token ids outside the vocabulary (0..{n_vocab - 1})", param
        )


def validate_request(request: GenerationRequest, n_vocab: int, n_ctx: int) -> None:
    prompt = list(request.prompt)
    if not prompt:
        raise InvalidRequestError("the prompt is empty", "prompt")
    check_token_ids(prompt, n_vocab, "prompt")
    if len(prompt) >= n_ctx:
        raise ContextFullError(
            f"the prompt has {len(prompt)} tokens but the context holds {n_ctx} "
            "(including at least one generated token); shorten the prompt or raise n_ctx",
            len(prompt),
            n_ctx,
        )
    if request.max_tokens is not None and request.max_tokens < 1:
        raise InvalidRequestError(
            f"max_tokens must be at least 1; got {request.max_tokens}", "max_tokens"
        )
    if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequestError(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}; got {request.logprobs}",
            "top_logprobs",
        )
    if len(request.stop) > MAX_STOP_STRINGS:
        raise InvalidRequestError(f"at most {MAX_STOP_STRINGS} stop strings are allowed", "stop")
    if any(not isinstance(s, str) for s in request.stop):
        raise InvalidRequestError("stop strings must be strings", "stop")


def token_logprobs(
    ctx: LlamaContext, vocab: Vocab, index: int, token: int, top_n: int
) -> list[TokenLogprob]:
    """The chosen token's log probability under the raw logits at `index`, and the top_n."""
    logits = ctx.logits(index).astype(np.float64)
    shifted = logits - logits.max()
    log_probs = shifted - math.log(float(np.exp(shifted).sum()))
    top: list[TopLogprob] = []
    if top_n > 0:
        ids = np.argpartition(-log_probs, top_n)[:top_n]
        ids = ids[np.argsort(-log_probs[ids])]
        top = [_top_logprob(vocab, int(t), float(log_probs[t])) for t in ids]
    chosen = _top_logprob(vocab, token, float(log_probs[token]))
    return [TokenLogprob(chosen.token, token, chosen.logprob, chosen.bytes, top)]


def _top_logprob(vocab: Vocab, token: int, logprob: float) -> TopLogprob:
    piece = vocab.piece(token, special=True)
    return TopLogprob(piece.decode("utf-8", errors="replace"), token, logprob, list(piece))
