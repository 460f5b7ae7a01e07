"""Separate a reasoning model's thinking from its answer, while the text streams.

Reasoning models (DeepSeek-R1, Qwen3, ...) write `<think>…</think>` before the answer. The
block is recognised only at the start of the output (after optional whitespace), as llama.cpp
and Ollama do: a later `<think>` is ordinary content, so a model that writes about the tag (a
coder explaining XML, say) does not have its answer swallowed. Some templates already end the
prompt with `<think>`; for those the output starts inside the reasoning (`starts_in_reasoning`).

Whitespace is trimmed where models put it for layout: around the reasoning, and at the start of
the content after the end tag ("</think>\\n\\n"). Text before the end tag is held back only while
it may still be part of the tag (or trailing whitespace), so streaming adds no delay otherwise.
Streaming and `split_reasoning` give the same result for any split of the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Text newly available on each channel. Reasoning always precedes content in the output."""

    reasoning: str = ""
    content: str = ""


class _Phase(Enum):
    BEGIN = auto()  # at the start of the output: a start tag may still come
    REASONING = auto()
    CONTENT = auto()


class ReasoningParser:
    """Streaming splitter of model output into reasoning and content: `push`, then `flush`."""

    def __init__(
        self,
        start_tag: str = "<think>",
        end_tag: str = "</think>",
        starts_in_reasoning: bool = False,
    ) -> None:
        if not start_tag or not end_tag:
            raise ValueError("reasoning tags must not be empty")
        if start_tag[0].isspace():
            # Leading whitespace before the start tag is skipped, so it cannot be part of it.
            raise ValueError("the reasoning start tag must not begin with whitespace")
        self._start_tag = start_tag
        self._end_tag = end_tag
        self._starts_in_reasoning = starts_in_reasoning
        self._phase = _Phase.BEGIN
        self._saw_reasoning = starts_in_reasoning
        self._leading_ws = ""  # BEGIN: whitespace before a possible start tag
        self._partial = ""  # BEGIN/REASONING: text that may still be the tag
        self._reasoning_started = False  # REASONING: leading whitespace already skipped
        self._trailing_ws = ""  # REASONING: whitespace that is only emitted if text follows
        self._strip_content_start = False  # CONTENT: skip whitespace after the end tag

    @property
    def saw_reasoning(self) -> bool:
        """Whether the output has (had) a reasoning block, even an empty one."""
        return self._saw_reasoning

    @property
    def in_reasoning(self) -> bool:
        """Whether text pushed now would be reasoning (or still undecided at the start)."""
        if self._phase is _Phase.BEGIN:
            return self._starts_in_reasoning
        return self._phase is _Phase.REASONING

    def push(self, text: str) -> ReasoningDelta:
        """Feed generated text; return what is now known to be reasoning or content."""
        reasoning = content = ""
        if self._phase is _Phase.BEGIN:
            text = self._push_begin(text)
        if self._phase is _Phase.REASONING:
            reasoning, text = self._push_reasoning(text)
        if self._phase is _Phase.CONTENT:
            content = self._push_content(text)
        return ReasoningDelta(reasoning, content)

    def flush(self) -> ReasoningDelta:
        """Return what is held back at the end of generation."""
        if self._phase is _Phase.BEGIN:
            leftover = self._leading_ws + self._partial
            self._leading_ws = self._partial = ""
            if not self._starts_in_reasoning:
                self._phase = _Phase.CONTENT
                return ReasoningDelta(content=leftover)
            self._phase = _Phase.REASONING
            return ReasoningDelta(reasoning=self._reasoning_text(leftover, final=True))
        if self._phase is _Phase.REASONING:
            # The end tag never came (output cut off): what looked like its start is reasoning.
            leftover = self._partial
            self._partial = ""
            return ReasoningDelta(reasoning=self._reasoning_text(leftover, final=True))
        return ReasoningDelta()

    def _push_begin(self, text: str) -> str:
        """Decide whether the output opens with the start tag; return text left to process."""
        if not self._partial:
            rest = text.lstrip()
            self._leading_ws += text[: len(text) - len(rest)]
            text = rest
            if not text:
                return ""
        candidate = self._partial + text
        if candidate.startswith(self._start_tag):
            self._leading_ws = self._partial = ""
            self._enter_reasoning()
            return candidate[len(self._start_tag) :]
        if self._start_tag.startswith(candidate):
            self._partial = candidate
            return ""
        # Not a start tag: everything so far belongs to the phase the output begins in.
        leftover = self._leading_ws + candidate
        self._leading_ws = self._partial = ""
        if self._starts_in_reasoning:
            self._enter_reasoning()
        else:
            self._phase = _Phase.CONTENT
        return leftover

    def _enter_reasoning(self) -> None:
        self._phase = _Phase.REASONING
        self._saw_reasoning = True

    def _push_reasoning(self, text: str) -> tuple[str, str]:
        """Return (reasoning known so far, text after the end tag, which is content)."""
        buffer = self._partial + text  # the partial is shorter than the tag: O(len(text))
        tag_at = buffer.find(self._end_tag)
        if tag_at >= 0:
            self._partial = ""
            reasoning = self._reasoning_text(buffer[:tag_at], final=True)
            self._phase = _Phase.CONTENT
            self._strip_content_start = True
            return reasoning, buffer[tag_at + len(self._end_tag) :]
        keep = _longest_suffix_prefix(buffer, self._end_tag)
        self._partial = buffer[len(buffer) - keep :]
        return self._reasoning_text(buffer[: len(buffer) - keep], final=False), ""

    def _reasoning_text(self, text: str, *, final: bool) -> str:
        """Trim the reasoning's outer whitespace while streaming it."""
        if not self._reasoning_started:
            text = text.lstrip()
            if not text:
                return ""
            self._reasoning_started = True
        body = text.rstrip()
        if final:
            out = self._trailing_ws + body if body else ""
            self._trailing_ws = ""
            return out
        if not body:
            self._trailing_ws += text
            return ""
        out = self._trailing_ws + body
        self._trailing_ws = text[len(body) :]
        return out

    def _push_content(self, text: str) -> str:
        if self._strip_content_start:
            text = text.lstrip()
            if text:
                self._strip_content_start = False
        return text


def _longest_suffix_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[len(text) - length :]):
            return length
    return 0


def split_reasoning(
    text: str,
    start_tag: str = "<think>",
    end_tag: str = "</think>",
    starts_in_reasoning: bool = False,
) -> tuple[str | None, str]:
    """Split a complete output into (reasoning, content); reasoning is None if there was none."""
    parser = ReasoningParser(start_tag, end_tag, starts_in_reasoning)
    first = parser.push(text)
    last = parser.flush()
    reasoning = first.reasoning + last.reasoning if parser.saw_reasoning else None
    return reasoning, first.content + last.content
