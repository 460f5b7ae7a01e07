"""Speculative decoding without a model: the plan, its cost model, n-gram drafts, and
the settings that reach the engine from the server, the pool and the catalog."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kronk import InvalidRequestError
from kronk.engine.ngram import AnchoredNgrams, NgramIndex, SharedNgrams
from kronk.engine.speculative import (
    Acceptance,
    Candidate,
    SlotDrafting,
    SpeculativeConfig,
    StepCost,
    expected_tokens,
    pass_sizes,
    plan_drafts,
)

AUTO_CONFIG = SpeculativeConfig()

# -- the plan ------------------------------------------------------------------------


def test_passes_follow_llama_cpp_split_of_one_stream_per_slot() -> None:
    assert pass_sizes([(0, 1), (1, 1), (2, 1)], 512) == [3]
    assert pass_sizes([(0, 5), (1, 5), (2, 5)], 512) == [15]  # equal drafts: one pass
    assert pass_sizes([(0, 5), (1, 1)], 512) == [2, 4]  # a longer run goes on alone
    assert pass_sizes([(0, 1), (2, 1)], 512) == [1, 1]  # ids not consecutive
    assert pass_sizes([(0, 3), (1, 1), (2, 3)], 512) == [3, 2, 2]
    assert pass_sizes([(0, 600)], 512) == [512, 88]  # n_ubatch bounds a pass


def fitted_cost(t_pass: float, t_token: float) -> StepCost:
    cost = StepCost()
    for sizes in ([1], [4], [9], [6, 6], [17]):
        cost.record(sizes, len(sizes) * t_pass + sum(sizes) * t_token)
    return cost


def test_the_step_cost_model_recovers_what_steps_cost() -> None:
    cost = fitted_cost(0.020, 0.004)
    assert cost.t_pass == pytest.approx(0.020, rel=0.2)
    assert cost.t_token == pytest.approx(0.004, rel=0.2)


def slot(rate: float, idle: int = 0) -> SlotDrafting:
    total = 20.0
    acceptance = Acceptance(rate * total, (1 - rate) * total, drafted=total)
    return SlotDrafting(acceptance, idle_steps=idle)


def test_the_plan_drafts_long_where_drafts_are_accepted_and_not_where_rejected() -> None:
    cost = fitted_cost(0.020, 0.004)
    good = plan_drafts([Candidate(0, slot(0.95), 16, 100)], cost, 16, 512)
    assert good[0] >= 8
    bad = plan_drafts([Candidate(0, slot(0.05), 16, 100)], cost, 16, 512)
    assert bad == {}
    # Limits (max_tokens, context) and what the source has always bound the draft.
    assert plan_drafts([Candidate(0, slot(0.95), 3, 100)], cost, 16, 512) == {0: 3}
    assert plan_drafts([Candidate(0, slot(0.95), 16, 2)], cost, 16, 512) == {0: 2}


def test_the_plan_backs_off_when_many_slots_keep_the_compute_busy() -> None:
    cost = fitted_cost(0.020, 0.004)

    def total_draft(n_slots: int) -> int:
        candidates = [Candidate(i, slot(0.6), 16, 100) for i in range(n_slots)]
        return sum(plan_drafts(candidates, cost, 16, 512).values())

    one, eight = total_draft(1), total_draft(8) / 8
    assert one > 0
    assert eight < one


def test_rejected_drafts_turn_drafting_off_with_ever_rarer_probes() -> None:
    cost = fitted_cost(0.020, 0.004)
    state = SlotDrafting(Acceptance())
    drafting_steps = []
    for step in range(600):
        k = plan_drafts([Candidate(0, state, 8, 100)], cost, 8, 512).get(0, 0)
        state.idle_steps = 0 if k else state.idle_steps + 1
        if k:
            drafting_steps.append(step)
            state.acceptance.record(k, 0)
            state.probe_every = min(state.probe_every * 2, 256)
    assert 1 <= len(drafting_steps) <= 6
    gaps = [b - a for a, b in itertools.pairwise(drafting_steps)]
    assert gaps == sorted(gaps)  # probes thin out
    assert expected_tokens(0.0, 8) == 1.0 and expected_tokens(1.0, 3) == 4.0


# -- draft sources and settings ---


def test_ngram_drafts_follow_the_latest_occurrence_and_go_around_loops() -> None:
    index = NgramIndex(2, [1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2])
    assert index.draft(3) == [3, 5, 7]  # after the latest earlier "1 2"
    index.extend([8])
    assert index.draft(3) == []  # "2 8" never occurred
    loop = NgramIndex(2, [4, 5, 6, 4, 5])
    assert loop.draft(7) == [6, 4, 5, 6, 4, 5, 6]
    shared = SharedNgrams(2, max_entries=10, length=4)
    shared.learn([1, 2, 3, 4, 5, 6])
    assert shared.draft([9, 1, 2], 3) == [3, 4, 5]
    assert len(shared) <= 10


def copied(source: list[int], upto: int) -> AnchoredNgrams:
    """A request whose prompt holds `source` twice-free and whose answer so far copies
    its first `upto` tokens."""
    return AnchoredNgrams(12, [1, 2, 3, *source, 4, 5, *source[:upto]])


SOURCE = list(range(100, 200))  # a passage with no repeats (token ids as text)


def test_anchored_drafts_only_after_a_long_match_then_draft_long() -> None:
    assert copied(SOURCE, 11).draft(64) == []  # 11 tokens copied: not yet a long match
    index = copied(SOURCE, 12)
    assert index.draft(64) == SOURCE[12:76]  # the source's next 64 tokens
    # The simple drafter drafts after 4 tokens already, from the latest occurrence.
    assert NgramIndex(4, [1, *SOURCE, 4, *SOURCE[:4]]).draft(3) == SOURCE[4:7]
    short = AnchoredNgrams(12, [1, *SOURCE[:6], 9, *SOURCE[:6]])
    assert short.draft(64) == []  # a 6-token repeat is no anchor


def test_anchored_drafts_follow_their_source_as_the_output_copies_it() -> None:
    index = copied(SOURCE, 12)
    assert index.draft(8) == SOURCE[12:20]
    index.extend(SOURCE[12:17])  # 5 of the draft kept, then the target's own next token
    assert index.draft(8) == SOURCE[17:25]
    # A later copy of the same tokens (the answer so far) does not move the source.
    index.extend(SOURCE[17:40])
    assert index.draft(4) == SOURCE[40:44]


def test_anchored_drafts_reanchor_shortly_after_a_change() -> None:
    index = copied(SOURCE, 30)
    assert index.draft(8) == SOURCE[30:38]
    index.extend([7, 8])  # the answer renames SOURCE[30] to two other tokens
    assert index.draft(8) == []  # lost: nothing matches yet
    index.extend(SOURCE[31:33])  # then copies on: 2 tokens re-anchor right after the break
    assert index.draft(8) == SOURCE[33:41]
    # A deleted passage: the copy goes on a little further in the source.
    index.extend([7, *SOURCE[60:62]])
    assert index.draft(4) == SOURCE[62:66]
    # New text found nowhere, longer than re-anchoring looks: no draft until a long match.
    index.extend(range(500, 570))
    assert index.draft(4) == []
    index.extend(SOURCE[70:81])
    assert index.draft(4) == []  # 11 tokens: still short of a long match
    index.extend(SOURCE[81:82])
    assert index.draft(4) == SOURCE[82:86]


def test_anchored_drafts_go_around_a_loop() -> None:
    line = list(range(300, 306))
    index = AnchoredNgrams(12, [*line, *line, *line])
    assert index.draft(8) == [*line, *line[:2]]


def test_ngram_drafts_grow_as_they_are_kept_and_restart_short_after_a_cut() -> None:
    state = SlotDrafting(Acceptance())
    cost = fitted_cost(0.020, 0.004)
    assert plan_drafts([Candidate(0, state, 64, 100)], cost, 64, 512) == {0: 8}
    state.record(8, 8, 16)
    state.record(16, 16, 16)
    assert plan_drafts([Candidate(0, state, 64, 100)], cost, 64, 512) == {0: 32}
    state.record(32, 3, 16)  # cut at a changed name: the next draft is short again
    assert plan_drafts([Candidate(0, state, 64, 100)], cost, 64, 512) == {0: 4}
    # Not adaptive (measurements): as much as the source has.
    assert plan_drafts([Candidate(0, state, 64, 100)], cost, 64, 512, adaptive=False) == {0: 64}
    # A draft model's drafts are bounded by their per-token rate instead.
    model = plan_drafts([Candidate(0, state, 64, 100, from_model=True)], cost, 64, 512)
    assert model[0] > 4


def kernel_switch_cost() -> StepCost:
    """Decode times measured on a 2-core CPU with the default model: a pass of 65
    tokens costs less than one of 41 (llama.cpp changes kernels at 64)."""
    cost = StepCost()
    for tokens, ms in (
        (1, 40.3),
        (2, 52.7),
        (4, 72.7),
        (8, 125.7),
        (16, 216.7),
        (32, 407.9),
        (41, 510.5),
        (63, 800.1),
        (65, 461.6),
        (96, 612.7),
        (1, 40.3),
    ):
        cost.record([tokens], ms / 1000)
    return cost


def test_the_cost_of_a_pass_is_learned_by_its_size() -> None:
    cost = kernel_switch_cost()
    assert cost.pass_seconds(65) < cost.pass_seconds(41) < cost.pass_seconds(63)
    assert cost.pass_seconds(1) == pytest.approx(0.0403)
    assert cost.pass_seconds(12) == pytest.approx((0.1257 + 0.2167) / 2)  # between 8 and 16
    assert cost.pass_seconds(80) == pytest.approx(0.4616 + 15 * (0.6127 - 0.4616) / 31)
    assert cost.pass_seconds(128) > cost.pass_seconds(96)  # beyond: t_token a token more
    assert cost.seconds([1, 65]) == pytest.approx(cost.pass_seconds(1) + cost.pass_seconds(65))
    # Steps of several passes teach the linear fit only.
    before = cost.pass_seconds(9)
    cost.record([9, 9], 10.0)
    assert cost.pass_seconds(9) == before


def test_the_ramp_bounds_the_time_a_draft_risks_not_its_tokens() -> None:
    cost = kernel_switch_cost()
    state = SlotDrafting(Acceptance(), ramp=40)
    # A 64-token draft's pass costs less than a 40-token one's: it is allowed.
    assert plan_drafts([Candidate(0, state, 64, 100)], cost, 64, 512) == {0: 64}
    assert cost.within(40, 64) == 64 and cost.within(8, 64) == 8
    state.ramp = 8  # a fresh source: nothing longer costs as little as 8
    assert plan_drafts([Candidate(0, state, 64, 100)], cost, 64, 512) == {0: 8}


def test_sum_usage_adds_the_drafts_of_every_choice() -> None:
    from kronk.server.openai.routes import sum_usage
    from kronk.types import CompletionUsage

    usages = [
        CompletionUsage(
            prompt_tokens=10,
            completion_tokens=c,
            total_tokens=10 + c,
            draft_tokens=d,
            draft_accepted=a,
        )
        for c, d, a in ((20, 16, 12), (30, 8, 2))
    ]
    total = sum_usage(usages, same_prompt=True)
    assert (total.completion_tokens, total.draft_tokens, total.draft_accepted) == (50, 24, 14)


def test_speculative_settings_are_validated() -> None:
    assert SpeculativeConfig.of("NGRAM").mode == "ngram"
    assert SpeculativeConfig.of(False).mode == "off"
    assert SpeculativeConfig.of(True).mode == "auto"
    with pytest.raises(InvalidRequestError, match="speculative must be one of"):
        SpeculativeConfig.of("sometimes")
    with pytest.raises(InvalidRequestError, match="draft_max"):
        SpeculativeConfig(draft_max=0).validate()
    simple = SpeculativeConfig.of("ngram-simple")
    assert (simple.ngram_mode, simple.match_size, simple.uses_ngram) == ("simple", 4, True)
    assert (AUTO_CONFIG.ngram_mode, AUTO_CONFIG.match_size) == ("anchored", 12)
    with pytest.raises(InvalidRequestError, match="ngram_size"):
        SpeculativeConfig(ngram_size=0).validate()


def test_server_settings_carry_spec_draft_model_and_draft_max(tmp_path: Path) -> None:
    from kronk.errors import ConfigError
    from kronk.server.settings import ServerSettings

    home = tmp_path / "home"
    (home).mkdir()
    (home / "config.yaml").write_text(
        "models:\n  big:\n    spec: draft\n    draft-model: small\n    draft-max: 4\n"
    )
    settings = ServerSettings.load(
        {"home": home, "spec": "ngram", "draft_max": 8}, environ={"KRONK_DRAFT_MODEL": "x.gguf"}
    )
    defaults = settings.load_defaults()
    assert (defaults["speculative"], defaults["draft_max"]) == ("ngram", 8)
    assert defaults["draft_model"] == "x.gguf"
    big = settings.model_options()["big"]
    assert (big["speculative"], big["draft_model"], big["draft_max"]) == ("draft", "small", 4)
    with pytest.raises(ConfigError, match="spec"):
        ServerSettings.load({"home": home, "spec": "sometimes"}, environ={})
    with pytest.raises(ConfigError, match="draft_max"):
        ServerSettings.load({"home": home, "draft_max": 0}, environ={})


def test_the_pool_turns_a_draft_model_id_into_its_file(tmp_path: Path) -> None:
    from kronk.models.resolver import StaticResolver
    from kronk.pool.lease import with_draft_path

    small, big = tmp_path / "small.gguf", tmp_path / "big.gguf"
    small.write_bytes(b"GGUF")
    big.write_bytes(b"GGUF")
    resolver = StaticResolver.from_paths({"small": small, "big": big})
    assert with_draft_path(resolver, "big", {"draft_model": "small"})["draft_model"] == small
    assert with_draft_path(resolver, "big", {"draft_model": str(small)})["draft_model"] == small
    off = with_draft_path(resolver, "big", {"speculative": "off", "draft_model": "small"})
    assert "draft_model" not in off
    assert "draft_model" not in with_draft_path(resolver, "small", {"draft_model": "small"})
    # No catalog behind a static resolver: `draft` without a named draft loads none here,
    # and the SDK then refuses with "needs a draft model".
    assert "draft_model" not in with_draft_path(resolver, "big", {"speculative": "draft"})


def test_the_catalog_names_draft_models_that_exist() -> None:
    from kronk.errors import CatalogError
    from kronk.models.catalog import Catalog, parse_catalog, shipped_catalog

    catalog = Catalog(base=shipped_catalog())
    assert catalog.draft_model_of("qwen2.5-coder-1.5b-instruct") == "qwen2.5-coder-0.5b-instruct"
    assert catalog.draft_model_of("qwen2.5-coder-0.5b-instruct") is None
    text = (Path(__file__).parents[1] / "src/kronk/models/catalog.yaml").read_text()
    broken = text.replace("draft_model: qwen2.5-coder-0.5b-instruct", "draft_model: nope")
    with pytest.raises(CatalogError, match="draft_model 'nope' is not another model"):
        parse_catalog(broken, "test")
