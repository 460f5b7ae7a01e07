"""Speculative decoding inside continuous batching: settings, acceptance, cost, the plan.

A generating slot may feed its last token plus a draft of k more; the target model
verifies every slot's draft in the step's one `llama_decode`, and the engine keeps the
longest prefix its own sampler chain agrees with (see `Engine._verify`). Whether that
pays depends on two measured things, kept here:

- per slot, how many draft tokens get accepted (`Acceptance`: a per-token rate for a
  draft model's drafts, the accepted share for bursty n-gram drafts), and how long its
  n-gram drafts have earned the right to be (`SlotDrafting.ramp`);
- per engine, what a step costs. With one KV stream per slot llama.cpp splits a batch
  into compute passes (`split_equal`: each pass takes the same number of tokens from a
  run of consecutive sequence ids), and on a CPU a pass costs a read of all weights plus
  compute per token. The engine fits `seconds = passes * t_pass + tokens * t_token` to
  its own steps, and also learns what a pass of each size costs, because that is not
  linear: llama.cpp's CPU kernels change with the batch size, and on the machines
  measured a pass of 64 tokens took less time than one of 40. Each candidate plan's
  passes are simulated and priced with what was measured.

Each step the plan picks one draft length K for the step (every slot drafts
`min(K, what it has, its ramp, what its acceptance justifies)`; the ramp bounds the time a
draft may risk, so it allows any draft whose pass costs no more than a pass of `ramp`
tokens) to maximise expected tokens per
second, K = 0 (plain decoding) included, so speculation turns itself off where it does
not pay and backs off when many slots already keep the compute busy. A slot that stopped
drafting probes now and then with a short draft, so a change (an edit reaching the part
that copies its input) is noticed.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kronk.engine.ngram import NgramMode
from kronk.errors import InvalidRequestError

SpecMode = Literal["auto", "ngram", "ngram-simple", "draft", "off"]
SPEC_MODES: tuple[SpecMode, ...] = ("auto", "ngram", "ngram-simple", "draft", "off")
DRAFT_MAX_LIMIT = 64  # more verified tokens a step than this never paid in any measurement
# Tokens that must match before an n-gram draft, by drafter (kronk.engine.ngram): a long
# match for the anchored drafter's long drafts, llama.cpp's ngram-simple size for it.
NGRAM_SIZES: dict[NgramMode, int] = {"anchored": 12, "simple": 4}


@dataclass(frozen=True)
class SpeculativeConfig:
    """How a model drafts. `auto`: n-gram lookup, plus the draft model when one is given,
    adaptive. `ngram` / `draft`: only that source (still adaptive unless `adaptive` is
    False); `ngram-simple`: n-gram drafts as llama.cpp's ngram-simple makes them (the
    latest earlier occurrence of the last 4 tokens) instead of the anchored drafter.
    `off`: plain decoding."""

    mode: SpecMode = "auto"
    draft_max: int = 64  # most draft tokens a slot feeds in one step
    # Tokens that must match for an n-gram draft (llama.cpp's size_n); None: the
    # drafter's own (NGRAM_SIZES).
    ngram_size: int | None = None
    draft_model: str | None = None  # path of a GGUF with the target's vocabulary
    draft_window: int = 512  # the draft model sees at most this many recent tokens
    draft_p_min: float = 0.3  # stop a model draft where its own top probability is lower
    adaptive: bool = True  # False: always draft as much as there is (for measurements)
    probe_interval: int = 16  # steps without drafts before a slot tries a short one
    shared_ngrams: int = 0  # n-grams remembered across requests (0: each request alone)

    def validate(self) -> None:
        if self.mode not in SPEC_MODES:
            raise InvalidRequestError(
                f"speculative must be one of {', '.join(SPEC_MODES)}; got {self.mode!r}",
                "speculative",
            )
        if not 1 <= self.draft_max <= DRAFT_MAX_LIMIT:
            raise InvalidRequestError(
                f"draft_max must be between 1 and {DRAFT_MAX_LIMIT}; got {self.draft_max}",
                "draft_max",
            )
        if not 1 <= self.match_size <= 64:
            raise InvalidRequestError("ngram_size must be between 1 and 64", "ngram_size")
        if self.mode == "draft" and not self.draft_model:
            raise InvalidRequestError(
                "speculative 'draft' needs a draft model (draft_model)", "draft_model"
            )
        if self.draft_window < 8:
            raise InvalidRequestError("draft_window must be at least 8", "draft_window")
        if not 0 <= self.draft_p_min < 1:
            raise InvalidRequestError("draft_p_min must be in [0, 1)", "draft_p_min")
        if self.probe_interval < 1 or self.shared_ngrams < 0:
            raise InvalidRequestError("probe_interval must be >= 1, shared_ngrams >= 0")

    @property
    def uses_ngram(self) -> bool:
        return self.mode in ("auto", "ngram", "ngram-simple")

    @property
    def ngram_mode(self) -> NgramMode:
        return "simple" if self.mode == "ngram-simple" else "anchored"

    @property
    def match_size(self) -> int:
        """Tokens that must match for an n-gram draft."""
        return self.ngram_size if self.ngram_size is not None else NGRAM_SIZES[self.ngram_mode]

    @property
    def uses_draft_model(self) -> bool:
        return self.mode in ("auto", "draft") and self.draft_model is not None

    @classmethod
    def of(cls, value: SpeculativeConfig | str | bool | None) -> SpeculativeConfig:
        """Accept the SDK's shorthands: a mode name, True (auto), False/None (off)."""
        if isinstance(value, SpeculativeConfig):
            return value
        if value is True:
            return cls()
        if value is False or value is None:
            return cls(mode="off")
        mode = value.strip().lower()
        if mode not in SPEC_MODES:
            raise InvalidRequestError(
                f"speculative must be one of {', '.join(SPEC_MODES)}; got {value!r}",
                "speculative",
            )
        return cls(mode=mode)


class Acceptance:
    """What recent verifications kept, as decayed counts: each adds its drafted and
    accepted tokens and, when it stopped at a rejection, one miss.

    Two readings of them. `rate` is a per-token acceptance (accepted / (accepted +
    misses), the estimate of a geometric run length): right for a draft model, whose
    every token is a fresh guess. `share` is the accepted share of drafted tokens: right
    for n-gram drafts, which are bursty (a copied passage is right to its end, then a
    changed name is wrong), where a geometric model would keep drafts needlessly short.
    """

    DECAY = 0.9  # a verification's weight halves after about 7 more

    def __init__(self, accepted: float = 1.0, missed: float = 1.0, drafted: float = 2.0) -> None:
        self.accepted = accepted
        self.missed = missed
        self.drafted = drafted

    @property
    def rate(self) -> float:
        return self.accepted / (self.accepted + self.missed)

    @property
    def share(self) -> float:
        return min(1.0, self.accepted / self.drafted) if self.drafted > 0 else 0.0

    def record(self, drafted: int, accepted: int) -> None:
        self.accepted = self.accepted * self.DECAY + accepted
        self.missed = self.missed * self.DECAY + (1.0 if accepted < drafted else 0.0)
        self.drafted = self.drafted * self.DECAY + drafted

    def expected(self, k: int, *, bursty: bool) -> float:
        """Tokens a step yields on average with k drafted."""
        if bursty:
            return 1.0 + self.share * max(k, 0)
        return expected_tokens(self.rate, k)


def expected_tokens(rate: float, k: int) -> float:
    """Tokens a step yields on average with k drafted at per-token acceptance `rate`."""
    if k <= 0:
        return 1.0
    if rate >= 1.0:
        return float(k + 1)
    return (1.0 - rate ** (k + 1)) / (1.0 - rate)


def pass_sizes(runs: Sequence[tuple[int, int]], n_ubatch: int) -> list[int]:
    """Tokens of each compute pass llama.cpp makes for a batch of `(seq_id, tokens)` runs
    in seq-id order, with one KV stream per sequence (`llama_batch_allocr::split_equal`,
    sequential): a pass takes an equal share from each sequence of a run of consecutive
    ids that still has tokens, as many as the shortest has (and n_ubatch allows)."""
    ids = [s for s, _ in runs]
    left = [n for _, n in runs]
    sizes: list[int] = []
    first = 0
    while first < len(left):
        if left[first] == 0:
            first += 1
            continue
        end = first + 1
        while end < len(left) and left[end] > 0 and ids[end] == ids[end - 1] + 1:
            end += 1
        width = end - first
        take = max(1, min(min(left[first:end]), n_ubatch // width))
        for i in range(first, end):
            left[i] -= take
        sizes.append(take * width)
    return sizes


class StepCost:
    """Decode seconds of a step, learned from the engine's own steps in two ways.

    - A linear fit, `passes * t_pass + tokens * t_token`, from every step. A ridge term
      keeps t_token near `PRIOR_RATIO * t_pass` until steps of different sizes say
      otherwise (plain decoding alone always has passes = tokens / slots).
    - The seconds of a pass of each size seen in a step of one pass. A pass is priced
      between the nearest sizes measured on either side, or beyond the last from it at
      `t_token` a token; with nothing measured, by the linear fit.
    """

    DECAY = 0.98
    PRIOR_RATIO = 0.25  # a token of compute against a read of the weights, on a CPU
    PRIOR_WEIGHT = 1.0
    SIZE_WEIGHT = 0.3  # a new measurement's weight against what its size had

    def __init__(self) -> None:
        self._pp = self._pn = self._nn = self._py = self._ny = 0.0
        self.t_pass = 0.0
        self.t_token = 0.0
        self.samples = 0
        self._by_size: dict[int, float] = {}  # pass tokens -> seconds
        self._sizes: list[int] = []  # its keys, sorted

    def record(self, sizes: Sequence[int], seconds: float) -> None:
        """A step of passes of these sizes took `seconds`."""
        passes, tokens = len(sizes), sum(sizes)
        if passes == 0:
            return
        if passes == 1:
            old = self._by_size.get(tokens)
            if old is None:
                bisect.insort(self._sizes, tokens)
                self._by_size[tokens] = seconds
            else:
                self._by_size[tokens] = old + self.SIZE_WEIGHT * (seconds - old)
        d = self.DECAY
        self._pp = self._pp * d + passes * passes
        self._pn = self._pn * d + passes * tokens
        self._nn = self._nn * d + tokens * tokens
        self._py = self._py * d + passes * seconds
        self._ny = self._ny * d + tokens * seconds
        self.samples += 1
        r, lam = self.PRIOR_RATIO, self.PRIOR_WEIGHT
        a, b, c = self._pp + lam * r * r, self._pn - lam * r, self._nn + lam
        det = a * c - b * b
        if det <= 0:
            return
        t_pass = (c * self._py - b * self._ny) / det
        t_token = (a * self._ny - b * self._py) / det
        # A fit from noisy steps can go negative; neither cost can.
        self.t_pass = max(t_pass, 0.0)
        self.t_token = max(t_token, 0.02 * self.t_pass, 1e-6)

    @property
    def measured_sizes(self) -> list[int]:
        """Pass sizes timed so far, smallest first."""
        return list(self._sizes)

    def pass_seconds(self, tokens: int) -> float:
        known, sizes = self._by_size, self._sizes
        if tokens in known:
            return known[tokens]
        if not sizes:
            return self.t_pass + tokens * self.t_token
        i = bisect.bisect(sizes, tokens)
        if 0 < i < len(sizes):
            lo, hi = sizes[i - 1], sizes[i]
            return known[lo] + (known[hi] - known[lo]) * (tokens - lo) / (hi - lo)
        near = sizes[i - 1] if i else sizes[0]
        return max(known[near] + (tokens - near) * self.t_token, tokens * self.t_token)

    def seconds(self, sizes: Sequence[int]) -> float:
        return sum(self.pass_seconds(n) for n in sizes)

    def within(self, ramp: int, limit: int) -> int:
        """The longest draft up to `limit` whose pass (the draft and the token before
        it) costs no more than a pass with a draft of `ramp`."""
        if limit <= ramp:
            return limit
        budget = self.pass_seconds(ramp + 1)
        for k in range(limit, ramp, -1):
            if self.pass_seconds(k + 1) <= budget:
                return k
        return ramp


@dataclass
class SlotDrafting:
    """One request's drafting state."""

    acceptance: Acceptance
    enabled: bool = True  # the request allows speculation
    # Steps since it last drafted; a new request starts due for a probe, so a prompt that
    # the answer copies is noticed at once.
    idle_steps: int = 16
    probe_every: int = 16
    # The n-gram draft it may feed next, as the time its pass may take (any draft whose
    # pass costs no more than one of `ramp` tokens, `StepCost.within`): doubled by a
    # draft kept whole, back to what the last one kept after a cut, so a source that
    # keeps breaking never costs a long verification (a probe of 2 kept whole would
    # otherwise buy a draft of 48).
    ramp: int = 8
    drafted: int = 0
    accepted: int = 0

    def record(self, drafted: int, accepted: int, probe_interval: int) -> None:
        """A verification of `drafted` tokens kept `accepted`."""
        self.acceptance.record(drafted, accepted)
        # A probe that found nothing waits twice as long for the next one.
        self.probe_every = probe_interval if accepted else min(self.probe_every * 2, 256)
        if accepted == drafted:
            self.ramp = min(max(self.ramp, 2 * drafted), DRAFT_MAX_LIMIT)
        else:
            self.ramp = max(2, accepted + 1)


@dataclass
class Candidate:
    """A generating slot as the plan sees it."""

    seq_id: int
    state: SlotDrafting
    available: int  # draft tokens a source can offer now (a model: up to its limit)
    limit: int  # most draft tokens this slot may feed (max_tokens, context, batch)
    from_model: bool = False  # drafted by the draft model (which costs a decode a token)


def plan_drafts(
    candidates: Sequence[Candidate],
    cost: StepCost,
    draft_max: int,
    n_ubatch: int,
    *,
    adaptive: bool = True,
    model_step_seconds: float = 0.0,
) -> dict[int, int]:
    """Draft length per seq id for this step (absent: no draft).

    The step's batch holds the generating sequences alone (prompt chunks go in a decode
    of their own before it). A draft model's cost, `model_step_seconds` per drafted
    position (all its slots decode together), is added for every K it would have to
    draft.
    """
    if not candidates:
        return {}
    limits = {c.seq_id: min(c.available, c.limit, draft_max) for c in candidates}
    if not adaptive:
        return {s: k for s, k in limits.items() if k > 0}
    for c in candidates:
        if not c.from_model:  # a draft model's drafts are bounded by their rate (`_cap`)
            limits[c.seq_id] = cost.within(c.state.ramp, limits[c.seq_id])
    probes: dict[int, int] = {}
    caps: dict[int, int] = {}
    for c in candidates:
        acceptance = c.state.acceptance
        caps[c.seq_id] = (
            _cap(acceptance.rate, cost, limits[c.seq_id])
            if c.from_model
            else _cap_linear(acceptance.share, cost, limits[c.seq_id])
        )
        if (
            caps[c.seq_id] == 0
            and limits[c.seq_id] > 0
            and c.state.idle_steps >= c.state.probe_every
        ):
            probes[c.seq_id] = min(2, limits[c.seq_id])
    if cost.samples == 0:
        return probes  # no step measured yet: nothing to weigh a draft against
    best: dict[int, int] = {}
    best_rate = -1.0
    options = sorted(
        {0, *(k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k <= draft_max)}
    )
    for k_step in options:
        ks = {c.seq_id: probes.get(c.seq_id, min(k_step, caps[c.seq_id])) for c in candidates}
        runs = sorted((s, 1 + k) for s, k in ks.items())
        seconds = cost.seconds(pass_sizes(runs, n_ubatch))
        seconds += model_step_seconds * max(
            (ks[c.seq_id] for c in candidates if c.from_model), default=0
        )
        gained = sum(
            c.state.acceptance.expected(ks[c.seq_id], bursty=not c.from_model) for c in candidates
        )
        rate = gained / seconds if seconds > 0 else 0.0
        if rate > best_rate * 1.001:  # ties go to the shorter draft
            best, best_rate = ks, rate
    return {s: k for s, k in best.items() if k > 0}


def _cap_linear(share: float, cost: StepCost, limit: int) -> int:
    """N-gram drafts: each draft token is kept with about the same chance `share`, so a
    draft pays to its full length or not at all (compare `_cap`)."""
    if limit <= 0 or cost.samples == 0:
        return 0
    return limit if share > cost.t_token / (cost.t_pass + cost.t_token) else 0


def _cap(rate: float, cost: StepCost, limit: int) -> int:
    """The longest draft whose last token still repays its own compute: the k-th draft
    token is used with probability rate^k and costs t_token against t_pass + t_token for
    a plain step's token."""
    if limit <= 0 or cost.samples == 0:
        return 0
    threshold = cost.t_token / (cost.t_pass + cost.t_token)
    if rate <= threshold:
        return 0
    if rate >= 1.0:
        return limit
    return max(0, min(limit, int(math.log(threshold) / math.log(rate))))
