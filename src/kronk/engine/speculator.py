"""The engine's drafting side: which slots draft how much this step, and from where.

`Engine._step` asks `Speculator.plan` for each generating slot's draft before building
the batch, feeds `[last token, *draft]` for each, and after the decode verifies each
draft with the slot's own sampler chain (`Engine._verify`), reporting back here. All of
it runs on the engine thread; per step it costs O(generating slots + drafted tokens).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from kronk.engine.config import EngineConfig, EngineStats
from kronk.engine.draft import DraftModel, History
from kronk.engine.ngram import SharedNgrams, ngram_drafter
from kronk.engine.slots import Active, Slot
from kronk.engine.speculative import (
    Acceptance,
    Candidate,
    SlotDrafting,
    StepCost,
    pass_sizes,
    plan_drafts,
)
from kronk.errors import InvalidRequestError
from kronk.llama import Batch, LlamaContext, LlamaModel


class Speculator:
    """Drafts for one engine's slots and learns what drafting costs and yields."""

    def __init__(
        self,
        config: EngineConfig,
        ctx: LlamaContext,
        n_ctx: int,
        target: LlamaModel,
        draft_model: LlamaModel | None,
        stats: EngineStats,
    ) -> None:
        self.spec = spec = config.speculative
        spec.validate()
        self._ctx = ctx
        self._n_ctx = n_ctx
        self._stats = stats
        self.cost = StepCost()
        self._draft_seconds_per_position = 0.0
        self._shared = (
            SharedNgrams(spec.match_size, spec.shared_ngrams, spec.draft_max)
            if spec.uses_ngram and spec.shared_ngrams
            else None
        )
        self.draft: DraftModel | None = None
        if spec.mode == "draft" and draft_model is None:
            raise InvalidRequestError(
                "speculative 'draft' needs a draft model (draft_model)", "draft_model"
            )
        if draft_model is not None and spec.mode in ("auto", "draft"):
            self.draft = DraftModel(
                draft_model,
                target.vocab,
                n_slots=config.n_seq_max,
                window=spec.draft_window,
                draft_max=spec.draft_max,
                p_min=spec.draft_p_min,
                n_threads=config.n_threads,
            )
            stats.draft_model_bytes = self.draft.bytes
        if spec.uses_ngram and spec.adaptive:
            self._calibrate()

    def close(self) -> None:
        if self.draft is not None:
            self.draft.close()

    def admit(self, slot: Slot, active: Active) -> None:
        """A request entered `slot`: give it drafting state if it may draft."""
        if not active.request.speculative:
            return
        spec = self.spec
        active.drafting = SlotDrafting(
            Acceptance(), idle_steps=spec.probe_interval, probe_every=spec.probe_interval
        )
        if self.draft is not None:
            self.draft.forget(slot.seq_id)

    def finish(self, active: Active) -> None:
        if self._shared is not None and active.ngrams is not None:
            self._shared.learn(active.ngrams.tokens)

    def accepted_token(self, active: Active, token: int) -> None:
        """A generated token the request goes on from (its history grows)."""
        if active.ngrams is not None:
            active.ngrams.extend((token,))

    def plan(
        self,
        generating: Sequence[tuple[Slot, Active]],
        spare: int,
    ) -> None:
        """Set each generating request's `draft` for this step (most stay empty)."""
        spec = self.spec
        offers: dict[int, list[int]] = {}
        candidates: list[Candidate] = []
        by_seq: dict[int, tuple[Slot, Active]] = {}
        for slot, a in generating:
            d = a.drafting
            if d is None or a.next_token is None:
                continue
            max_tokens = a.request.max_tokens
            # Never verify past max_tokens or the context: those tokens could not be kept.
            limit = min(
                (max_tokens - a.generated - 1) if max_tokens is not None else spec.draft_max,
                self._n_ctx - 2 - len(slot.tokens),
            )
            if limit <= 0:
                continue
            offer: list[int] = []
            if spec.uses_ngram:
                if a.ngrams is None:  # built here, off the submitters' lock, once
                    history = [*slot.tokens, a.next_token]
                    a.ngrams = ngram_drafter(spec.ngram_mode, spec.match_size, history)
                offer = a.ngrams.draft(spec.draft_max)
                if not offer and self._shared is not None:
                    offer = self._shared.draft(a.ngrams.tokens, spec.draft_max)
            from_model = not offer and self.draft is not None
            available = len(offer) if offer else spec.draft_max if from_model else 0
            offers[slot.seq_id] = offer
            by_seq[slot.seq_id] = (slot, a)
            candidates.append(Candidate(slot.seq_id, d, available, limit, from_model))
        chosen = plan_drafts(
            candidates,
            self.cost,
            spec.draft_max,
            self._ctx.n_ubatch,
            adaptive=spec.adaptive,
            model_step_seconds=self._draft_seconds_per_position,
        )
        wants: list[tuple[int, Sequence[int], int]] = []
        for c in candidates:
            k = min(chosen.get(c.seq_id, 0), spare)
            spare -= k
            slot, a = by_seq[c.seq_id]
            c.state.idle_steps = 0 if k else c.state.idle_steps + 1
            if k and c.from_model and a.next_token is not None:
                wants.append((c.seq_id, History(slot.tokens, a.next_token), k))
            elif k:
                a.draft, a.draft_from_model = offers[c.seq_id][:k], False
        if wants and self.draft is not None:
            start = time.perf_counter()
            drafted = self.draft.draft(wants)
            seconds = time.perf_counter() - start
            self._stats.draft_seconds += seconds
            positions = max(len(t) for t in drafted.values())
            if positions:
                per = seconds / positions
                old = self._draft_seconds_per_position
                self._draft_seconds_per_position = per if old == 0 else 0.8 * old + 0.2 * per
            for seq_id, tokens in drafted.items():
                _, a = by_seq[seq_id]
                a.draft, a.draft_from_model = tokens, True

    def verified(self, active: Active, drafted: int, accepted: int) -> None:
        """The target kept `accepted` of the `drafted` tokens it was given (the request's
        own counts are kept by the engine as it goes)."""
        d = active.drafting
        assert d is not None
        d.record(drafted, accepted, self.spec.probe_interval)
        self._stats.draft_tokens += drafted
        self._stats.draft_accepted += accepted

    def record_step(self, runs: Sequence[tuple[int, int]], seconds: float) -> None:
        """A decode of generating slots alone (no prompt chunk): a sample of its cost."""
        self.cost.record(pass_sizes(runs, self._ctx.n_ubatch), seconds)

    def _calibrate(self) -> None:
        """Time one pass of a full n-gram draft at load, so the plan knows what long
        drafts cost before any request pays to find out (what a pass costs per token can
        drop with its size, `StepCost`). The plain steps of the first requests measure
        the rest."""
        ctx = self._ctx
        n = min(self.spec.draft_max + 1, ctx.n_ubatch)
        batch = Batch(n, 1)
        try:
            batch.add_sequence([0] * n, 0, 0, output_last=True, output_all=True)
            start = time.perf_counter()
            ctx.decode(batch)
            self.cost.record([n], time.perf_counter() - start)
        finally:
            batch.close()
            ctx.clear_memory()
