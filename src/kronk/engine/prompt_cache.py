"""Host-memory cache of KV states for prompts that lost their slot.

When a slot is reused for a different prompt, the part of its KV cache that the new
prompt does not share is about to be overwritten. If that sequence is long (a big
system prompt, a long conversation), its state is saved here, so the conversation
comes back later with a restore (a memcpy) instead of a full prefill.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedPrompt:
    tokens: tuple[int, ...]
    state: bytes  # llama_state_seq_get_data of the sequence holding exactly `tokens`


class PromptCache:
    """An LRU of saved sequence states, bounded by total bytes."""

    def __init__(self, max_bytes: int, min_tokens: int) -> None:
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[int, ...], CachedPrompt] = OrderedDict()
        self.bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def worth_saving(self, tokens: list[int]) -> bool:
        if self.max_bytes <= 0 or len(tokens) < self.min_tokens:
            return False
        key = tuple(tokens)
        # A saved entry that already covers these tokens makes a new one redundant.
        return not any(len(k) >= len(key) and k[: len(key)] == key for k in self._entries)

    def put(self, tokens: list[int], state: bytes) -> None:
        if len(state) > self.max_bytes:
            return
        key = tuple(tokens)
        # Entries that are prefixes of this one are now redundant.
        for k in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            self._drop(k)
        self._entries[key] = CachedPrompt(key, state)
        self.bytes += len(state)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def best_match(self, prompt: list[int]) -> tuple[CachedPrompt | None, int]:
        """The entry sharing the longest prefix with `prompt`, and that length."""
        best: CachedPrompt | None = None
        best_len = 0
        for entry in self._entries.values():
            n = common_prefix(entry.tokens, prompt)
            if n > best_len:
                best, best_len = entry, n
        return best, best_len

    def take(self, entry: CachedPrompt) -> None:
        """Mark an entry used (most recently used goes last)."""
        self._entries.move_to_end(entry.tokens)
        self.hits += 1

    def _drop(self, key: tuple[int, ...]) -> None:
        entry = self._entries.pop(key)
        self.bytes -= len(entry.state)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
