"""Tiny random-weight GGUF models, written on the spot.

They let tests drive the real llama.cpp (load, tokenize, decode, sample, embed) in
milliseconds and without downloads. The weights are noise, so the text they produce is
too; what is real is everything around the weights: architecture metadata, a BPE or
WordPiece tokenizer llama.cpp accepts, control tokens, a chat template and FIM tokens.

Tensor names and shapes follow the vendored llama.cpp (src/models/llama.cpp and
src/models/bert.cpp); GGUF shapes list the fastest-moving dimension first, so a numpy
array of shape (rows, cols) is a GGUF tensor of shape {cols, rows}.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGUFWriter, Keys, LlamaFileType, PoolingType, TokenType

# The HF-recommended ChatML template, as simple as a ChatML template gets.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A reasoning model's template (Qwen3 and DeepSeek-R1 style): the answer opens a think
# block, and `enable_thinking=False` renders it closed and empty instead.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}"
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
# Qwen-style tool-call markers: USER_DEFINED, so they parse as one token yet detokenize
# as text (a tool-call parser must see them).
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

LLAMA_N_EMBD = 64
LLAMA_N_LAYER = 2
LLAMA_N_HEAD = 4
LLAMA_N_HEAD_KV = 2
LLAMA_N_FF = 128

BERT_N_EMBD = 64
BERT_N_LAYER = 2
BERT_N_HEAD = 4
BERT_N_FF = 128
BERT_N_CTX_TRAIN = 512
BERT_TOKEN_TYPES = 2
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Words whose BPE merge chains go into the tiny vocab, so ordinary English, code and the
# ChatML role names tokenize into multi-byte tokens rather than one token per byte.
# Written in GPT-2's byte-to-unicode alphabet: "Ġ" is a space, "Ċ" a newline.
_BPE_WORDS = (
    # ASCII-only words first: llama.cpp logs the first 37 bytes of the merges list, and
    # llama-cpp-python's log callback chokes on a line cut inside a UTF-8 sequence.
    "Hello",
    "user",
    "assistant",
    "system",
    "You",
    "def",
    "ing",
    "er",
    "ful",
    "():",
    "Ġhello",
    "Ġworld",
    "Ġthe",
    "Ġand",
    "Ġto",
    "Ġof",
    "Ġis",
    "Ġin",
    "Ġit",
    "Ġyou",
    "Ġthat",
    "Ġa",
    "Ġhelp",
    "Ġassistant",
    "Ġare",
    "Ġdef",
    "Ġreturn",
    "Ġprint",
    "Ġimport",
    "Ġfor",
    "Ġif",
    "Ġ=",
    "ĠĠ",
    "ĠĠĠĠ",
    "ĊĊ",
)

# WordPiece vocab for the BERT model, spelled as convert_hf_to_gguf.py writes BERT vocabs:
# "##" is stripped from word continuations and "▁" is prefixed to word starts.
_WPM_WORDS = ("the", "and", "hello", "world", "is", "a", "of", "to", "in", "test", "embed")
_WPM_SUFFIXES = ("ing", "s", "ed", "ly", "er")
_WPM_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()[]{}/\\@#$%&*+=<>_"


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    n_ctx_train: int = 512,
    chat_template: str | None = CHATML,
    with_fim: bool = True,
) -> Path:
    """Write a 2-layer llama-architecture decoder with a byte-level BPE tokenizer.

    Specials: <|endoftext|> is BOS, EOS and PAD; <|im_end|> is EOT (the real Qwen2.5 makes
    it EOS instead); llama.cpp treats both as end-of-generation. With `with_fim`, the Qwen
    FIM tokens are present and named by the fim_*_token_id keys. Byte-identical for a given
    set of arguments.
    """
    tokens, token_types, merges = _bpe_vocab(with_fim)
    ids = {text: i for i, text in enumerate(tokens)}
    rng = np.random.default_rng(seed)
    head_dim = LLAMA_N_EMBD // LLAMA_N_HEAD

    def matrix(rows: int, cols: int) -> npt.NDArray[np.float16]:
        # Xavier-like scale keeps activations O(1), so logits have a real spread and
        # greedy decoding is not decided by float rounding.
        return _normal(rng, (rows, cols), cols**-0.5).astype(np.float16)

    writer = GGUFWriter(path=None, arch="llama")
    writer.add_type("model")
    writer.add_name(f"kronk tiny llama (seed {seed})")
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(LLAMA_N_EMBD)
    writer.add_block_count(LLAMA_N_LAYER)
    writer.add_feed_forward_length(LLAMA_N_FF)
    writer.add_head_count(LLAMA_N_HEAD)
    writer.add_head_count_kv(LLAMA_N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)  # llama.cpp requires n_rot == head size
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(tokens))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")  # same pre-tokenizer as the real default model
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids[ENDOFTEXT])
    writer.add_eos_token_id(ids[ENDOFTEXT])
    writer.add_pad_token_id(ids[ENDOFTEXT])
    writer.add_eot_token_id(ids[IM_END])
    writer.add_add_bos_token(False)
    if with_fim:
        writer.add_uint32(Keys.Tokenizer.FIM_PRE_ID, ids[FIM_PREFIX])
        writer.add_uint32(Keys.Tokenizer.FIM_SUF_ID, ids[FIM_SUFFIX])
        writer.add_uint32(Keys.Tokenizer.FIM_MID_ID, ids[FIM_MIDDLE])
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    n_q = head_dim * LLAMA_N_HEAD
    n_kv = head_dim * LLAMA_N_HEAD_KV
    # No output.weight: llama.cpp ties the LM head to token_embd, as Qwen2.5-0.5B does.
    embd = _normal(rng, (len(tokens), LLAMA_N_EMBD), 0.3).astype(np.float16)
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", _ones(LLAMA_N_EMBD))
    for i in range(LLAMA_N_LAYER):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", _ones(LLAMA_N_EMBD))
        writer.add_tensor(f"{blk}.attn_q.weight", matrix(n_q, LLAMA_N_EMBD))
        writer.add_tensor(f"{blk}.attn_k.weight", matrix(n_kv, LLAMA_N_EMBD))
        writer.add_tensor(f"{blk}.attn_v.weight", matrix(n_kv, LLAMA_N_EMBD))
        writer.add_tensor(f"{blk}.attn_output.weight", matrix(LLAMA_N_EMBD, n_q))
        writer.add_tensor(f"{blk}.ffn_norm.weight", _ones(LLAMA_N_EMBD))
        writer.add_tensor(f"{blk}.ffn_gate.weight", matrix(LLAMA_N_FF, LLAMA_N_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.weight", matrix(LLAMA_N_FF, LLAMA_N_EMBD))
        writer.add_tensor(f"{blk}.ffn_down.weight", matrix(LLAMA_N_EMBD, LLAMA_N_FF))
    return _write(writer, path)


def write_tiny_bert(path: Path, *, seed: int = 0) -> Path:
    """Write a 2-layer BERT encoder (mean pooling) with a lowercasing WordPiece vocab.

    Specials: [PAD]=0 [UNK]=1 [CLS]=2 (BOS) [SEP]=3 [MASK]=4; llama.cpp wraps input in
    [CLS] ... [SEP] when special tokens are added. Byte-identical for a given seed.
    """
    tokens = _wordpiece_vocab()
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> npt.NDArray[np.float16]:
        return _normal(rng, (rows, cols), cols**-0.5).astype(np.float16)

    def bias(n: int) -> npt.NDArray[np.float32]:
        return _normal(rng, (n,), 0.02)

    writer = GGUFWriter(path=None, arch="bert")
    writer.add_type("model")
    writer.add_name(f"kronk tiny bert (seed {seed})")
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_context_length(BERT_N_CTX_TRAIN)
    writer.add_embedding_length(BERT_N_EMBD)
    writer.add_block_count(BERT_N_LAYER)
    writer.add_feed_forward_length(BERT_N_FF)
    writer.add_head_count(BERT_N_HEAD)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(PoolingType.MEAN)

    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_type_count(BERT_TOKEN_TYPES)
    writer.add_token_list(tokens)
    writer.add_token_types(
        [TokenType.CONTROL if t in BERT_SPECIALS else TokenType.NORMAL for t in tokens]
    )
    writer.add_pad_token_id(tokens.index("[PAD]"))
    writer.add_unk_token_id(tokens.index("[UNK]"))
    writer.add_bos_token_id(tokens.index("[CLS]"))
    writer.add_sep_token_id(tokens.index("[SEP]"))
    writer.add_mask_token_id(tokens.index("[MASK]"))
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", True)

    embd = _normal(rng, (len(tokens), BERT_N_EMBD), 0.3).astype(np.float16)
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("token_types.weight", _normal(rng, (BERT_TOKEN_TYPES, BERT_N_EMBD), 0.3))
    writer.add_tensor("position_embd.weight", _normal(rng, (BERT_N_CTX_TRAIN, BERT_N_EMBD), 0.3))
    writer.add_tensor("token_embd_norm.weight", _ones(BERT_N_EMBD))
    writer.add_tensor("token_embd_norm.bias", np.zeros(BERT_N_EMBD, dtype=np.float32))
    for i in range(BERT_N_LAYER):
        blk = f"blk.{i}"
        for proj in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{blk}.{proj}.weight", matrix(BERT_N_EMBD, BERT_N_EMBD))
            writer.add_tensor(f"{blk}.{proj}.bias", bias(BERT_N_EMBD))
        writer.add_tensor(f"{blk}.attn_output_norm.weight", _ones(BERT_N_EMBD))
        writer.add_tensor(f"{blk}.attn_output_norm.bias", np.zeros(BERT_N_EMBD, np.float32))
        writer.add_tensor(f"{blk}.ffn_up.weight", matrix(BERT_N_FF, BERT_N_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.bias", bias(BERT_N_FF))
        writer.add_tensor(f"{blk}.ffn_down.weight", matrix(BERT_N_EMBD, BERT_N_FF))
        writer.add_tensor(f"{blk}.ffn_down.bias", bias(BERT_N_EMBD))
        writer.add_tensor(f"{blk}.layer_output_norm.weight", _ones(BERT_N_EMBD))
        writer.add_tensor(f"{blk}.layer_output_norm.bias", np.zeros(BERT_N_EMBD, np.float32))
    return _write(writer, path)


def write_truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Copy the first `fraction` of `src` to `dst`: what an interrupted download leaves."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def write_not_gguf(path: Path) -> Path:
    """Write a file that is plainly not GGUF (wrong magic), e.g. a saved HTML error page."""
    path = Path(path)
    path.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n" * 16)
    return path


# -- corrupting GGUF files field by field ----------------------------------------------------
#
# GGUFWriter refuses to write most broken files (an alignment of 0, a duplicate token), and
# those are exactly what the validation tests need: `GGUFParts` splits a file into its raw
# fields so that a test can change one and write the rest back unchanged.

_GGUF_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
GGUF_UINT32, GGUF_STRING, GGUF_ARRAY = 4, 8, 9


@dataclass
class GGUFTensorInfo:
    name: bytes
    dims: list[int]
    ggml_type: int
    offset: int


@dataclass
class GGUFParts:
    """A GGUF file as raw parts: metadata values stay encoded (type id + value bytes)."""

    version: int
    kv: dict[str, tuple[int, bytes]]
    tensors: list[GGUFTensorInfo]
    data: bytes  # everything after the header padding
    alignment: int = 32

    @classmethod
    def read(cls, path: Path) -> GGUFParts:
        raw = Path(path).read_bytes()
        pos = 4

        def unpack(fmt: str) -> int:
            nonlocal pos
            (value,) = struct.unpack_from(fmt, raw, pos)
            pos += struct.calcsize(fmt)
            return int(value)

        def skip(value_type: int) -> None:
            nonlocal pos
            if value_type in _GGUF_FIXED:
                pos += _GGUF_FIXED[value_type]
            elif value_type == GGUF_STRING:
                length = unpack("<Q")  # before `pos +=`, which would read pos first
                pos += length
            else:
                item_type, count = unpack("<I"), unpack("<Q")
                for _ in range(count):
                    skip(item_type)

        version, n_tensors, n_kv = unpack("<I"), unpack("<Q"), unpack("<Q")
        kv: dict[str, tuple[int, bytes]] = {}
        for _ in range(n_kv):
            length = unpack("<Q")
            key = raw[pos : pos + length].decode()
            pos += length
            value_type = unpack("<I")
            start = pos
            skip(value_type)
            kv[key] = (value_type, raw[start:pos])
        tensors = []
        for _ in range(n_tensors):
            length = unpack("<Q")
            name = raw[pos : pos + length]
            pos += length
            dims = [unpack("<Q") for _ in range(unpack("<I"))]
            tensors.append(GGUFTensorInfo(name, dims, unpack("<I"), unpack("<Q")))
        alignment = 32
        data_start = (pos + alignment - 1) // alignment * alignment
        return cls(version, kv, tensors, raw[data_start:], alignment)

    def write(self, path: Path, *, n_tensors: int | None = None) -> Path:
        """Write the parts back; `n_tensors` overrides the count the header claims."""
        out = bytearray(b"GGUF" + struct.pack("<I", self.version))
        count = len(self.tensors) if n_tensors is None else n_tensors
        out += struct.pack("<QQ", count, len(self.kv))
        for key, (value_type, value) in self.kv.items():
            out += gguf_string(key) + struct.pack("<I", value_type) + value
        for t in self.tensors:
            out += struct.pack("<Q", len(t.name)) + t.name + struct.pack("<I", len(t.dims))
            out += b"".join(struct.pack("<Q", d) for d in t.dims)
            out += struct.pack("<IQ", t.ggml_type, t.offset)
        out += b"\0" * (-len(out) % self.alignment)
        path = Path(path)
        path.write_bytes(bytes(out) + self.data)
        return path

    def strings(self, key: str) -> list[bytes]:
        """The items of a string-array value (e.g. the token list)."""
        value_type, raw = self.kv[key]
        item_type, count = struct.unpack_from("<IQ", raw)
        assert value_type == GGUF_ARRAY and item_type == GGUF_STRING
        items, pos = [], 12
        for _ in range(count):
            (length,) = struct.unpack_from("<Q", raw, pos)
            items.append(raw[pos + 8 : pos + 8 + length])
            pos += 8 + length
        return items


def gguf_string(text: str | bytes) -> bytes:
    """A GGUF string's encoding (length-prefixed); also a string value's bytes."""
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def gguf_u32(value: int) -> tuple[int, bytes]:
    return GGUF_UINT32, struct.pack("<I", value)


def gguf_str(text: str) -> tuple[int, bytes]:
    return GGUF_STRING, gguf_string(text)


def gguf_string_array(items: list[bytes]) -> tuple[int, bytes]:
    encoded = b"".join(gguf_string(item) for item in items)
    return GGUF_ARRAY, struct.pack("<IQ", GGUF_STRING, len(items)) + encoded


def _write(writer: GGUFWriter, path: Path) -> Path:
    # Write beside the target and rename, so a crash never leaves a half-written model
    # where a later test would pick it up as a finished one.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    writer.write_header_to_file(partial)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, path)
    return path


def _normal(
    rng: np.random.Generator, shape: tuple[int, ...], std: float
) -> npt.NDArray[np.float32]:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _ones(n: int) -> npt.NDArray[np.float32]:
    return np.ones(n, dtype=np.float32)


def _gpt2_byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: byte b is written as chars[b].

    Printable bytes stand for themselves; the rest map to U+0100 upwards, so every byte
    is one visible character (llama.cpp's BPE tokenizer reverses this exact table).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars: list[str] = []
    extra = 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _bpe_vocab(with_fim: bool) -> tuple[list[str], list[TokenType], list[str]]:
    """Byte tokens, then merged tokens, then specials (the order Qwen's vocab uses)."""
    tokens = _gpt2_byte_alphabet()
    known = set(tokens)
    merges: list[str] = []
    for word in _BPE_WORDS:
        # A left-to-right merge chain: "w o", "wo r", "wor l", "worl d".
        for end in range(2, len(word) + 1):
            merged = word[:end]
            if merged not in known:
                known.add(merged)
                tokens.append(merged)
                merges.append(f"{word[: end - 1]} {word[end - 1]}")
    token_types = [TokenType.NORMAL] * len(tokens)

    specials = [ENDOFTEXT, IM_START, IM_END]
    if with_fim:
        specials += [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]
    tokens += specials
    token_types += [TokenType.CONTROL] * len(specials)
    tokens += [TOOL_CALL_OPEN, TOOL_CALL_CLOSE]
    token_types += [TokenType.USER_DEFINED] * 2
    return tokens, token_types, merges


def _wordpiece_vocab() -> list[str]:
    candidates = [
        *BERT_SPECIALS,
        *("\u2581" + c for c in _WPM_CHARS),  # any word can start with any char...
        *_WPM_CHARS,  # ...and continue with any char, so nothing becomes [UNK]
        *("\u2581" + w for w in _WPM_WORDS),
        *_WPM_SUFFIXES,
    ]
    # llama.cpp refuses a vocab with duplicate entries; dict keeps the first of each.
    return list(dict.fromkeys(candidates))
