"""N-gram lookup drafts: propose what followed the last time the current suffix occurred.

The draft source of llama.cpp's `--spec-type ngram-simple`, over the request's own
prompt and output: when the last `n` tokens appeared earlier, the tokens that followed
them there are the draft. That pays when the answer copies its input (an edit of a
file, a quoted passage, code that repeats its own identifiers).

llama.cpp scans the whole history backwards for every draft; here an index from each
n-gram to the position after its latest occurrence is kept up to date as tokens arrive,
so a draft costs one dict lookup and the engine's per-step work does not grow with the
context.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class NgramIndex:
    """One request's token history and the n-grams in it."""

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

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the last n."""
        seq = self.tokens
        if limit <= 0 or len(seq) < self.n:
            return []
        at = self._after.get(tuple(seq[-self.n :]))
        if at is None:
            return []
        draft = seq[at : at + limit]
        # A match that reaches the end of the history is a loop of period len - at (a
        # repeated line, a table): go on around it rather than stop short.
        period = len(seq) - at
        while len(draft) < limit:
            draft.extend(seq[at : at + min(period, limit - len(draft))])
        return draft


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
