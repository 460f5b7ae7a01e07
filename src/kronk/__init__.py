"""kronk: a Python SDK and model server for fast local LLM inference on llama.cpp."""

import logging

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

# A library prints nothing on its own: without this, Python's last-resort handler would
# write llama.cpp's load-time warnings (routed to `kronk.llama`) to stderr of every program
# that uses the SDK. Programs that configure logging still get every record.
logging.getLogger("kronk").addHandler(logging.NullHandler())

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
