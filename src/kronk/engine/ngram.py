"""N-gram lookup drafts: propose what followed where the current suffix occurred before.

Two drafters, both over the request's own prompt and output:

- `simple` (like llama.cpp's `--spec-type ngram-simple`, with 4 tokens): when the last
  `n` tokens appeared earlier, the tokens that followed their latest occurrence are the
  draft.
- `anchored` (after llama.cpp's `ngram-mod`): a draft starts only after a long match
  (the last `n` tokens, 12 by default, found earlier), then follows that source token by
  token for as long as the output keeps copying it, so drafts can be long (up to 64
  tokens) and precise. Where the output leaves the source (a renamed identifier), the
  drafter re-anchors as soon as the last few tokens are found again a little further on
  in the same source, instead of waiting for another long match.

That pays when the answer copies its input (an edit of a file, a quoted passage).
llama.cpp scans the history for every draft; here an index from each n-gram to the
position after its latest occurrence is kept up to date as tokens arrive, so a draft
costs a dict lookup (while following a source, not even that) and the engine's per-step
work does not grow with the context.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

NgramMode = Literal["anchored", "simple"]


def continuation(seq: Sequence[int], at: int, limit: int) -> list[int]:
    """Up to `limit` tokens from `seq[at]` on. A source that reaches the end of the
    history is a loop of period len - at (a repeated line, a table): go on around it
    rather than stop short."""
    draft = list(seq[at : at + limit])
    period = len(seq) - at
    while len(draft) < limit:
        draft.extend(seq[at : at + min(period, limit - len(draft))])
    return draft


class NgramIndex:
    """One request's token history and the n-grams in it (the `simple` drafter)."""

    def __init__(self, n: int, tokens: Sequence[int]) -> None:
        self.n = n
        self.tokens: list[int] = []
        # n-gram -> index (into `tokens`) of the token that followed its latest occurrence.
        self._after: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens. An n-gram is indexed once the token after it is known, so the
        history's own suffix is never its own match."""
        start = len(self.tokens)
        self.tokens.extend(tokens)
        n, seq, after = self.n, self.tokens, self._after
        for end in range(max(start, n), len(seq)):
            after[tuple(seq[end - n : end])] = end

    def match(self) -> int | None:
        """Index of the token that followed the latest earlier occurrence of the last n."""
        if len(self.tokens) < self.n:
            return None
        return self._after.get(tuple(self.tokens[-self.n :]))

    def source(self) -> int | None:
        """Index of the history token the next draft starts from (None: no draft)."""
        return self.match()

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens from the source, if there is one."""
        at = self.source() if limit > 0 else None
        return continuation(self.tokens, at, limit) if at is not None else []


class AnchoredNgrams(NgramIndex):
    """The `anchored` drafter: long matches start a source, the output's progress through
    it moves the draft along, short local matches re-anchor after a change."""

    def __init__(
        self, n: int, tokens: Sequence[int], *, reanchor: int = 2, window: int = 64
    ) -> None:
        self.reanchor = reanchor  # tokens that must match again near where the copy broke
        self.window = window  # how far (source tokens, output tokens) re-anchoring looks
        self._source: int | None = None  # index of the token the source offers next
        self._since = 0  # history length when `_source` was last checked
        self._lost: int | None = None  # source index where the output left it
        self._lost_since = 0  # history length then
        super().__init__(n, tokens)

    def source(self) -> int | None:
        seq, size = self.tokens, len(self.tokens)
        if self._source is not None:
            at, since = self._source, self._since
            for i in range(size - since):
                if seq[since + i] != seq[at + i]:  # the output left the source here
                    self._source = None
                    self._lost, self._lost_since = at + i, since + i
                    break
            else:
                self._source, self._since = at + size - since, size
                return self._source
        found = self.match()
        if found is None:
            found = self._reanchored()
        if found is not None:
            self._source, self._since, self._lost = found, size, None
        return found

    def _reanchored(self) -> int | None:
        """Where the last `reanchor` tokens occur again in the source shortly after the
        point the output left it (the rest of a line after a renamed word)."""
        lost, seq, r = self._lost, self.tokens, self.reanchor
        size = len(seq)
        if lost is None or size - self._lost_since > self.window:
            self._lost = None  # too far from the break: only a long match starts again
            return None
        if size - self._lost_since < r:
            return None
        tail = seq[size - r :]
        for end in range(lost + r, min(lost + self.window, size - 1)):
            if seq[end - r : end] == tail:
                return end
        return None


def ngram_drafter(mode: NgramMode, n: int, tokens: Sequence[int]) -> NgramIndex:
    """A request's n-gram drafter over its history so far."""
    return AnchoredNgrams(n, tokens) if mode == "anchored" else NgramIndex(n, tokens)


class SharedNgrams:
    """Continuations seen in earlier requests, for drafts a request's own history lacks
    (the same boilerplate, the same file asked about twice). Bounded: least recently used
    n-grams go first."""

    def __init__(self, n: int, max_entries: int, length: int) -> None:
        self.n = n
        self.max_entries = max_entries
        self.length = length  # tokens kept after each n-gram
        self._next: OrderedDict[tuple[int, ...], tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._next)

    def learn(self, tokens: Sequence[int]) -> None:
        """Remember the continuations in a finished request's tokens (once per request)."""
        if self.max_entries <= 0:
            return
        n, length, table = self.n, self.length, self._next
        for end in range(n, len(tokens) - 1):
            key = tuple(tokens[end - n : end])
            table[key] = tuple(tokens[end : end + length])
            table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def draft(self, suffix: Sequence[int], limit: int) -> list[int]:
        if limit <= 0 or len(suffix) < self.n:
            return []
        found = self._next.get(tuple(suffix[-self.n :]))
        return list(found[:limit]) if found else []
