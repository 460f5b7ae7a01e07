"""Batch-invariant scheduling: what keeps a request's greedy output a function of its
prompt and parameters alone, whatever else the engine serves or its caches hold.

llama.cpp's logits for a token depend on more than the tokens before it. Measured on
its CPU backend (default model, no repacked weights, no flash attention), a compute
pass of fewer than 8 tokens rounds differently from a pass of 8 or more, and the
rounding of every token in the pass follows: a generated token decoded alone and the
same token decoded beside seven other sequences' tokens differ in the last bits, and so
do their KV values and everything after. Within each of the two, nothing else matters:
where a prompt is cut into chunks, how many sequences share a pass, how long the other
sequences are. (Flash attention adds a boundary at 64 tokens of one sequence; repacked
weights another.) A near-tie between two tokens flips on such a difference, so the
engine, in batch-invariant mode:
- runs without repacked weights and, unless asked for, without flash attention;
- decodes generating sequences in passes of fewer than `MIN_PASS` tokens in all, which
  is what each would get alone, and caps speculative drafts at `MAX_DRAFT` so that a
  sequence's verification fits such a pass too;
- feeds a prompt chunk in a pass of its own (beside other sequences llama.cpp would cut
  it into pieces sized by theirs), and cuts a prompt so that no chunk is shorter than
  `MIN_PASS` unless the whole prompt is;
- reuses cached KV only where it came from such chunks, leaving at least `MIN_PASS`
  prompt tokens to compute, so a reused prefix and a fresh one are the same numbers;
- drops a finished request's generated tokens from its slot: they were computed in
  short passes, and a later prompt that holds them computes them as a prompt chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

MIN_PASS = 8  # the fewest tokens llama.cpp's CPU backend computes with its prompt kernels
MAX_DRAFT = MIN_PASS - 2  # a sequence's last token plus its draft stay a short pass


def chunk_size(remaining: int, capacity: int) -> int:
    """The next prompt chunk: as much as fits, but never leaving a tail under MIN_PASS."""
    if remaining <= capacity or remaining - capacity >= MIN_PASS:
        return min(remaining, capacity)
    return remaining - MIN_PASS


def reusable_prefix(prompt_len: int, cached: int) -> int:
    """How many of `cached` matching tokens a prompt of `prompt_len` may reuse: all but
    the last MIN_PASS, and none of a prompt shorter than that (its tokens are computed
    in a short pass, which a cached prefix was not)."""
    if prompt_len < MIN_PASS:
        return 0
    return min(cached, prompt_len - MIN_PASS)


def kept_after_request(prompt_len: int, held: int) -> int:
    """How many of a finished request's `held` tokens its slot keeps: the prompt, if it
    was computed in prompt-sized chunks; never the generated tokens."""
    return min(held, prompt_len) if prompt_len >= MIN_PASS else 0


def short_passes(feeds: Sequence[T], sizes: Sequence[int]) -> list[list[T]]:
    """Split generating sequences' feeds (`sizes`: a token and its draft each, under
    MIN_PASS) into compute passes of fewer than MIN_PASS tokens, in order."""
    passes: list[list[T]] = [[]]
    tokens = 0
    for feed, size in zip(feeds, sizes, strict=True):
        if tokens + size >= MIN_PASS:
            passes.append([])
            tokens = 0
        passes[-1].append(feed)
        tokens += size
    return [p for p in passes if p]
