"""Streaming detection of stop strings in generated text.

Text arrives a token at a time, and a stop string can span several tokens, so text that might
still turn out to be the start of a stop string is held back rather than emitted: a client must
never see half of "User:" and then have it retracted.

Matching uses one Aho-Corasick automaton over all stop strings. Its state is, by construction,
the longest suffix of the stream that is a prefix of some stop string, which is exactly the text
to hold back; so each character costs amortised O(1) whatever the number of stop strings, and a
push costs O(len(text) + longest stop string) with no rescanning of earlier output.

When several stop strings could match, the one that is complete first wins (generation stops as
soon as any stop string appears, as it does token by token); among those completing on the same
character the longest wins, so no part of a completed stop string is ever emitted. The result
therefore does not depend on how the text was split into pushes.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Hold back possible stop-string prefixes and cut the stream at the first stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        # Trie of the stop strings; node 0 is the root (the empty prefix).
        self._goto: list[dict[str, int]] = [{}]
        self._depth: list[int] = [0]
        # Length of the longest stop string that is a suffix of the node's prefix (0: none).
        self._match_len: list[int] = [0]
        self._fail: list[int] = [0]
        for stop in dict.fromkeys(s for s in stops if s):
            self._add(stop)
        self._link()
        self._state = 0
        self._held = ""  # the last `_depth[_state]` characters of the stream, not yet emitted
        self._matched: str | None = None

    @property
    def stopped(self) -> bool:
        """Whether a stop string has matched; everything after it is dropped."""
        return self._matched is not None

    @property
    def matched(self) -> str | None:
        """The stop string that ended the stream (Anthropic reports it), or None."""
        return self._matched

    def push(self, text: str) -> tuple[str, bool]:
        """Feed generated text; return (text safe to emit now, whether a stop string matched)."""
        if self._matched is not None:
            return "", True
        if len(self._goto) == 1:  # no stop strings: nothing to hold back
            return text, False
        goto, fail, match_len = self._goto, self._fail, self._match_len
        state = self._state
        for index, char in enumerate(text):
            while state and char not in goto[state]:
                state = fail[state]
            state = goto[state].get(char, 0)
            if match_len[state]:
                stream = self._held + text
                end = len(self._held) + index + 1
                start = end - match_len[state]
                self._matched = stream[start:end]
                self._held = ""
                self._state = 0
                return stream[:start], True
        self._state = state
        stream = self._held + text
        keep = self._depth[state]
        self._held = stream[len(stream) - keep :]
        return stream[: len(stream) - keep], False

    def flush(self) -> str:
        """Return the held-back text at the end of generation (empty after a stop matched)."""
        held = self._held
        self._held = ""
        self._state = 0
        return held

    def _add(self, stop: str) -> None:
        node = 0
        for char in stop:
            child = self._goto[node].get(char)
            if child is None:
                child = len(self._goto)
                self._goto[node][char] = child
                self._goto.append({})
                self._depth.append(self._depth[node] + 1)
                self._match_len.append(0)
                self._fail.append(0)
            node = child
        self._match_len[node] = len(stop)

    def _link(self) -> None:
        """Set failure links breadth-first, and inherit matches along them."""
        queue = list(self._goto[0].values())  # depth 1: they fail to the root, as initialised
        for node in queue:  # the queue grows while we iterate: a breadth-first walk
            for char, child in self._goto[node].items():
                queue.append(child)
                fallback = self._fail[node]
                while fallback and char not in self._goto[fallback]:
                    fallback = self._fail[fallback]
                self._fail[child] = self._goto[fallback].get(char, 0)
                if not self._match_len[child]:
                    # A node's own stop string is longer than any inherited one.
                    self._match_len[child] = self._match_len[self._fail[child]]
