"""Speculative decoding without a model: the plan, its cost model, n-gram drafts, and
the settings that reach the engine from the server, the pool and the catalog."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kronk import InvalidRequestError
from kronk.engine.ngram import NgramIndex, SharedNgrams
from kronk.engine.speculative import (
    Acceptance,
    Candidate,
    SlotDrafting,
    SpeculativeConfig,
    StepCost,
    count_passes,
    expected_tokens,
    plan_drafts,
)

# -- the plan ------------------------------------------------------------------------


def test_passes_follow_llama_cpp_split_of_one_stream_per_slot() -> None:
    assert count_passes([(0, 1), (1, 1), (2, 1)], 512) == 1
    assert count_passes([(0, 5), (1, 5), (2, 5)], 512) == 1  # equal drafts: one pass
    assert count_passes([(0, 5), (1, 1)], 512) == 2  # a longer run goes on alone
    assert count_passes([(0, 1), (2, 1)], 512) == 2  # ids not consecutive
    assert count_passes([(0, 3), (1, 1), (2, 3)], 512) == 3
    assert count_passes([(0, 600)], 512) == 2  # n_ubatch bounds a pass


def fitted_cost(t_pass: float, t_token: float) -> StepCost:
    cost = StepCost()
    for passes, tokens in ((1, 1), (1, 4), (1, 9), (2, 12), (1, 17)):
        cost.record(passes, tokens, passes * t_pass + tokens * t_token)
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
    good = plan_drafts([Candidate(0, slot(0.95), 16, 100)], [], cost, 16, 512)
    assert good[0] >= 8
    bad = plan_drafts([Candidate(0, slot(0.05), 16, 100)], [], cost, 16, 512)
    assert bad == {}
    # Limits (max_tokens, context) and what the source has always bound the draft.
    assert plan_drafts([Candidate(0, slot(0.95), 3, 100)], [], cost, 16, 512) == {0: 3}
    assert plan_drafts([Candidate(0, slot(0.95), 16, 2)], [], cost, 16, 512) == {0: 2}


def test_the_plan_backs_off_when_many_slots_keep_the_compute_busy() -> None:
    cost = fitted_cost(0.020, 0.004)

    def total_draft(n_slots: int) -> int:
        candidates = [Candidate(i, slot(0.6), 16, 100) for i in range(n_slots)]
        return sum(plan_drafts(candidates, [], cost, 16, 512).values())

    one, eight = total_draft(1), total_draft(8) / 8
    assert one > 0
    assert eight < one


def test_rejected_drafts_turn_drafting_off_with_ever_rarer_probes() -> None:
    cost = fitted_cost(0.020, 0.004)
    state = SlotDrafting(Acceptance())
    drafting_steps = []
    for step in range(600):
        k = plan_drafts([Candidate(0, state, 8, 100)], [], cost, 8, 512).get(0, 0)
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


def test_speculative_settings_are_validated() -> None:
    assert SpeculativeConfig.of("NGRAM").mode == "ngram"
    assert SpeculativeConfig.of(False).mode == "off"
    assert SpeculativeConfig.of(True).mode == "auto"
    with pytest.raises(InvalidRequestError, match="speculative must be one of"):
        SpeculativeConfig.of("sometimes")
    with pytest.raises(InvalidRequestError, match="draft_max"):
        SpeculativeConfig(draft_max=0).validate()


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
    from kronk.pool import ModelPool

    small, big = tmp_path / "small.gguf", tmp_path / "big.gguf"
    small.write_bytes(b"GGUF")
    big.write_bytes(b"GGUF")
    pool = ModelPool(StaticResolver.from_paths({"small": small, "big": big}))
    assert pool._with_draft_path("big", {"draft_model": "small"})["draft_model"] == small
    assert pool._with_draft_path("big", {"draft_model": str(small)})["draft_model"] == small
    off = pool._with_draft_path("big", {"speculative": "off", "draft_model": "small"})
    assert "draft_model" not in off
    assert "draft_model" not in pool._with_draft_path("small", {"draft_model": "small"})
    # No catalog behind a static resolver: `draft` without a named draft loads none here,
    # and the SDK then refuses with "needs a draft model".
    assert "draft_model" not in pool._with_draft_path("big", {"speculative": "draft"})


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
