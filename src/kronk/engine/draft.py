"""A draft model: a smaller model with the target's vocabulary proposing tokens.

It has its own llama context with one KV stream per slot of the target, and follows
each slot's history lazily: only when a slot drafts is the draft's cache brought up to
the slot's tokens (a few tokens after a verified step). To bound what a slot that had
stopped drafting costs when it probes again, the draft model sees only the last
`window` tokens of a history (its positions start at 0 there): a draft needs the recent
text, and the target verifies every token anyway.

Drafting is greedy, one decode per drafted position for all drafting slots together,
and a slot stops early where the draft model's own top probability falls below `p_min`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from kronk.errors import InvalidRequestError
from kronk.llama import Batch, ContextParams, LlamaContext, LlamaModel, Vocab


class History(Sequence[int]):
    """A slot's tokens and its last sampled one, read in place: a draft model looks at
    the few tokens it lacks, so nothing here may copy the whole context each step."""

    def __init__(self, fed: list[int], last: int) -> None:
        self._fed = fed
        self._last = last

    def __len__(self) -> int:
        return len(self._fed) + 1

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return [self[i] for i in range(start, stop, step)]
        if index < 0:
            index += len(self)
        return self._last if index == len(self._fed) else self._fed[index]


@dataclass
class _Mirror:
    """What one draft sequence holds: `tokens` are history[offset:] as far as `valid`
    says, then the draft's own guesses."""

    offset: int = 0
    tokens: list[int] = field(default_factory=list)
    valid: int = 0


class DraftModel:
    """Drafts for the slots of one engine. Engine thread only."""

    def __init__(
        self,
        model: LlamaModel,
        target_vocab: Vocab,
        *,
        n_slots: int,
        window: int,
        draft_max: int,
        p_min: float,
        n_threads: int | None = None,
        type_k: str = "f16",
        type_v: str = "f16",
    ) -> None:
        why = target_vocab.mismatch(model.vocab)
        if why is not None:
            raise InvalidRequestError(
                f"draft model {model.name} cannot draft for this model: {why}", "draft_model"
            )
        self.model = model
        self.window = window
        self.p_min = p_min
        self._seq_cells = window + draft_max + 2
        n_batch = n_slots * (window + 1)
        self.ctx = LlamaContext(
            model,
            ContextParams(
                n_ctx=self._seq_cells * n_slots,
                n_batch=n_batch,
                n_ubatch=min(n_batch, 512),
                n_seq_max=n_slots,
                n_threads=n_threads,
                type_k=type_k,
                type_v=type_v,
                kv_unified=False,
            ),
        )
        self._batch = Batch(n_batch, 1)
        self._mirrors = [_Mirror() for _ in range(n_slots)]
        self.bytes = self.ctx.kv_cache_bytes  # its KV cache; the weights are the model's

    def close(self) -> None:
        self._batch.close()
        self.ctx.close()

    def forget(self, seq_id: int) -> None:
        """A new request in the slot: its history starts over."""
        self.ctx.seq_remove(seq_id)
        self._mirrors[seq_id] = _Mirror()

    def draft(self, wants: Sequence[tuple[int, Sequence[int], int]]) -> dict[int, list[int]]:
        """Draft up to k tokens after each `(seq_id, history, k)`; at least one each."""
        ctx, batch = self.ctx, self._batch
        batch.clear()
        index: dict[int, int] = {}
        for seq_id, history, _ in sorted(wants):  # llama.cpp passes: seq-id order
            index[seq_id] = self._catch_up(seq_id, history)
        ctx.decode(batch)
        drafts: dict[int, list[int]] = {seq_id: [] for seq_id, _, _ in wants}
        limits = {seq_id: k for seq_id, _, k in wants}
        while index:
            batch.clear()
            following: dict[int, int] = {}
            for seq_id, i in sorted(index.items()):
                token, p = self._top(i)
                out = drafts[seq_id]
                if out and p < self.p_min:
                    continue  # the rest would mostly be rejected
                out.append(token)
                if len(out) < limits[seq_id]:
                    mirror = self._mirrors[seq_id]
                    pos = len(mirror.tokens)
                    mirror.tokens.append(token)
                    following[seq_id] = batch.add(token, pos, seq_id, True)
            if following:
                ctx.decode(batch)
            index = following
        return drafts

    def _catch_up(self, seq_id: int, history: Sequence[int]) -> int:
        """Queue what the draft sequence lacks of `history` (its last token at least, for
        logits); returns the batch index of that last token."""
        m = self._mirrors[seq_id]
        n = len(history)
        limit = min(len(m.tokens), n - m.offset)
        while m.valid < limit and m.tokens[m.valid] == history[m.offset + m.valid]:
            m.valid += 1
        m.valid = min(m.valid, n - m.offset - 1)  # the last token is fed again for logits
        if n - m.offset > self.window:
            # The history outgrew the window: start again from its recent half, so this
            # happens once per window/2 tokens (a prefill, cheap next to decoding them).
            self.ctx.seq_remove(seq_id)
            m.offset, m.tokens, m.valid = max(0, n - self.window // 2), [], 0
        else:
            self.ctx.seq_remove(seq_id, m.valid, -1)
            del m.tokens[m.valid :]
        feed = list(history[m.offset + m.valid :])
        m.tokens.extend(feed)
        m.valid = len(m.tokens)
        return self._batch.add_sequence(feed, len(m.tokens) - len(feed), seq_id, output_last=True)

    def _top(self, index: int) -> tuple[int, float]:
        logits = self.ctx.logits(index)
        token = int(np.argmax(logits))
        top = float(logits[token])
        p = 1.0 / float(np.exp(logits - top).sum()) if self.p_min > 0 else 1.0
        return token, p if math.isfinite(p) else 0.0
