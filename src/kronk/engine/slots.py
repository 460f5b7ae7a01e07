"""Slots and the requests in them, and how a prompt's cached prefix reaches its slot."""

from __future__ import annotations

from dataclasses import dataclass, field

from kronk.engine.config import SlotState
from kronk.engine.detokenizer import IncrementalDecoder
from kronk.engine.invariance import reusable_prefix
from kronk.engine.ngram import NgramIndex
from kronk.engine.prompt_cache import PromptCache, common_prefix
from kronk.engine.request import GenerationRequest, RequestHandle
from kronk.engine.speculative import SlotDrafting
from kronk.engine.stops import StopMatcher
from kronk.llama import LlamaContext, SamplerChain


@dataclass
class Active:
    """A request in a slot: its progress, sampler and output processing."""

    handle: RequestHandle
    chain: SamplerChain
    submitted: float
    admitted: float
    prompt_done: int  # prompt tokens already in the KV cache
    cached: int
    decoder: IncrementalDecoder = field(default_factory=IncrementalDecoder)
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    generated: int = 0
    next_token: int | None = None  # sampled, not yet fed to the model
    batch_index: int | None = None  # where its logits are in the current batch
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    cache_lookup_seconds: float = 0.0  # telemetry: choosing the slot and placing cached KV
    detokenize_seconds: float = 0.0  # telemetry: pieces, UTF-8 assembly and stop matching
    # Speculative decoding: the request's drafting state (None: it never drafts), its
    # history indexed for n-gram drafts, and the draft fed in the current step.
    drafting: SlotDrafting | None = None
    ngrams: NgramIndex | None = None
    draft: list[int] = field(default_factory=list)
    draft_from_model: bool = False

    @property
    def request(self) -> GenerationRequest:
        return self.handle.request


@dataclass
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what this sequence's KV cache holds
    active: Active | None = None


def slot_state(slot: Slot) -> SlotState:
    """What `slot` is doing, read on the engine thread or under the engine's lock."""
    a = slot.active
    held = len(slot.tokens)
    if a is None:
        return SlotState("cached" if held else "idle", tokens=held)
    total = len(a.request.prompt)
    if a.prompt_done < total:
        return SlotState("prefilling", tokens=held, done=a.prompt_done, total=total)
    return SlotState("generating", tokens=held, done=total, total=total, generated=a.generated)


@dataclass
class Placement:
    """Brings a prompt's longest cached prefix into a slot (the engine thread's)."""

    ctx: LlamaContext
    slots: list[Slot]
    prompt_cache: PromptCache
    min_gain: int  # tokens a copy or restore must save over the slot's own cache
    n_swa: int  # the model's sliding window (0: none)
    # Batch-invariant mode: reuse only KV that a prefill of the prompt would compute the
    # same way (engine/invariance.py).
    invariant: bool = False

    def place(self, slot: Slot, prompt: list[int]) -> int:
        """Prepare `slot`'s KV cache for `prompt`, reusing every prefix kronk still holds.

        In order: the slot's own cache; another slot sharing a longer prefix (its KV is
        copied, as llama.cpp's `parallel -pps` does for a shared system prompt); a state
        saved in host memory. Returns how many prompt tokens need no prefill.
        """
        ctx = self.ctx
        own = common_prefix(slot.tokens, prompt)
        if (
            own < len(slot.tokens)
            and self.prompt_cache.worth_saving(slot.tokens)
            and not self._held_elsewhere(slot)
        ):
            # The slot is about to lose the rest of a long sequence: keep it in host memory.
            self.prompt_cache.put(slot.tokens, ctx.seq_state_get(slot.seq_id))
        others = [s for s in self.slots if s is not slot and s.tokens]
        donor = max(others, key=lambda s: self._shared(s, prompt), default=None)
        donor_len = self._shared(donor, prompt) if donor is not None else 0
        saved, saved_len = self.prompt_cache.best_match(prompt)
        gain = self.min_gain
        if donor is not None and donor_len >= own + gain and donor_len >= saved_len:
            ctx.seq_remove(slot.seq_id)
            ctx.seq_copy(donor.seq_id, slot.seq_id)  # whole sequence; trimmed below
            slot.tokens = donor.tokens[:donor_len]
        elif saved is not None and saved_len >= own + gain:
            ctx.seq_remove(slot.seq_id)
            if ctx.seq_state_set(slot.seq_id, saved.state):
                slot.tokens = list(saved.tokens)
                self.prompt_cache.take(saved)
            else:
                slot.tokens = []
        return self._trim(slot, prompt)

    def coming_soon(self, prompt: list[int]) -> bool:
        """Whether a slot still prefilling will soon hold a longer prefix of `prompt` than
        any cache holds now (by `min_gain` tokens or more). A prompt that waits for it then
        copies that prefix instead of prefilling it again: a burst of requests sharing a
        new system prompt prefills it once, not once per slot. It never waits long: the
        older request's prefill goes first anyway."""
        coming = max(
            (
                common_prefix(s.active.request.prompt, prompt)
                for s in self.slots
                if s.active is not None and s.active.next_token is None
            ),
            default=0,
        )
        if coming < self.min_gain:
            return False
        held = max((common_prefix(s.tokens, prompt) for s in self.slots), default=0)
        held = max(held, self.prompt_cache.best_match(prompt)[1])
        return coming >= held + self.min_gain

    def keep(self, slot: Slot, n: int) -> None:
        """Forget all but the first `n` tokens of the slot's KV cache."""
        if n == 0 or not self.ctx.seq_remove(slot.seq_id, n, -1):
            self.ctx.seq_remove(slot.seq_id)
            n = 0
        del slot.tokens[n:]

    def _shared(self, slot: Slot, prompt: list[int]) -> int:
        """How much of `prompt` another slot's cache holds that may be copied from it. In
        batch-invariant mode not the tokens a running request generated: they were
        computed one per pass, and a prompt holding them computes them as a chunk."""
        shared = common_prefix(slot.tokens, prompt)
        if self.invariant and slot.active is not None:
            shared = min(shared, slot.active.prompt_done)
        return shared

    def _held_elsewhere(self, slot: Slot) -> bool:
        """Whether another slot's cache holds all of `slot`'s tokens (e.g. it was copied)."""
        n = len(slot.tokens)
        return any(s is not slot and s.tokens[:n] == slot.tokens for s in self.slots)

    def _trim(self, slot: Slot, prompt: list[int]) -> int:
        """Trim the slot's KV cache to the part of `prompt` it holds; return its length."""
        keep = common_prefix(slot.tokens, prompt)
        keep = min(keep, len(prompt) - 1)  # the last prompt token must be decoded for logits
        if self.invariant:
            keep = reusable_prefix(len(prompt), keep)
        if (
            keep > 0
            and self.n_swa > 0
            and self.ctx.seq_pos_min(slot.seq_id) > max(0, keep - self.n_swa)
        ):
            keep = 0  # the sliding window already dropped positions the new tokens would attend to
        self.keep(slot, keep)
        return len(slot.tokens)
