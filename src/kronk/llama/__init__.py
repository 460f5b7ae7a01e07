"""The binding facade: a thin, typed wrapper over llama.cpp's C API.

This package is the only code in kronk that touches ctypes or llama-cpp-python.
"""

from kronk.llama._lib import ensure_backend, supports_gpu_offload, system_info
from kronk.llama.batch import Batch
from kronk.llama.context import KV_CACHE_TYPES, ContextParams, LlamaContext, default_threads
from kronk.llama.gguf_check import validate_gguf
from kronk.llama.grammar import JSON_OBJECT_SCHEMA, json_schema_rules, json_schema_to_grammar
from kronk.llama.model import LlamaModel, ModelParams
from kronk.llama.sampler import SamplerChain, SamplingParams
from kronk.llama.vocab import SpecialTokens, Vocab

__all__ = [
    "JSON_OBJECT_SCHEMA",
    "KV_CACHE_TYPES",
    "Batch",
    "ContextParams",
    "LlamaContext",
    "LlamaModel",
    "ModelParams",
    "SamplerChain",
    "SamplingParams",
    "SpecialTokens",
    "Vocab",
    "default_threads",
    "ensure_backend",
    "json_schema_rules",
    "json_schema_to_grammar",
    "supports_gpu_offload",
    "system_info",
    "validate_gguf",
]
