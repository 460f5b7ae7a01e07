"""kronk: a Python SDK and model server for fast local LLM inference on llama.cpp."""

from kronk.errors import (
    ContextFullError,
    EngineBusyError,
    EngineClosedError,
    GrammarError,
    InvalidModelFileError,
    InvalidRequestError,
    KronkError,
    ModelLoadError,
    TemplateError,
    UnsupportedFeatureError,
)
from kronk.sdk import AsyncChatStream, AsyncCompletionStream, ChatStream, CompletionStream, Kronk

__version__ = "0.1.0"

__all__ = [
    "AsyncChatStream",
    "AsyncCompletionStream",
    "ChatStream",
    "CompletionStream",
    "ContextFullError",
    "EngineBusyError",
    "EngineClosedError",
    "GrammarError",
    "InvalidModelFileError",
    "InvalidRequestError",
    "Kronk",
    "KronkError",
    "ModelLoadError",
    "TemplateError",
    "UnsupportedFeatureError",
    "__version__",
]
