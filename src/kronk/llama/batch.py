"""`llama_batch` with several sequences: the unit of work of one decode step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kronk.llama._lib import lib


class Batch:
    """A reusable batch of up to `capacity` tokens, each in up to `n_seq_max` sequences."""

    def __init__(self, capacity: int, n_seq_max: int = 1) -> None:
        self.capacity = capacity
        self.n_seq_max = n_seq_max
        self._raw: Any = lib.llama_batch_init(capacity, 0, n_seq_max)
        self._closed = False
        self.n_tokens = 0

    @property
    def raw(self) -> Any:
        self._raw.n_tokens = self.n_tokens
        return self._raw

    def clear(self) -> None:
        self.n_tokens = 0

    def add(self, token: int, pos: int, seq_ids: int | Sequence[int], output: bool) -> int:
        """Append one token; returns its index (where its logits are read when `output`)."""
        i = self.n_tokens
        if i >= self.capacity:
            raise OverflowError(f"batch is full ({self.capacity} tokens)")
        raw = self._raw
        raw.token[i] = token
        raw.pos[i] = pos
        if isinstance(seq_ids, int):
            raw.n_seq_id[i] = 1
            raw.seq_id[i][0] = seq_ids
        else:
            raw.n_seq_id[i] = len(seq_ids)
            for j, s in enumerate(seq_ids):
                raw.seq_id[i][j] = s
        raw.logits[i] = output
        self.n_tokens = i + 1
        return i

    def add_sequence(
        self,
        tokens: Sequence[int],
        start_pos: int,
        seq_id: int,
        *,
        output_last: bool,
        output_all: bool = False,
    ) -> int:
        """Append a run of tokens of one sequence; returns the index of the last one."""
        last = len(tokens) - 1
        for k, token in enumerate(tokens):
            self.add(token, start_pos + k, seq_id, output_all or (output_last and k == last))
        return self.n_tokens - 1

    @property
    def free(self) -> int:
        return self.capacity - self.n_tokens

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            lib.llama_batch_free(self._raw)

    def __del__(self) -> None:
        self.close()
