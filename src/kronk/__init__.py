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
    ModelTooLargeError,
    TemplateError,
    UnsupportedFeatureError,
)
from kronk.sdk import Kronk
from kronk.streams import (
    AsyncChatStream,
    AsyncCompletionStream,
    AsyncEventStream,
    ChatStream,
    CompletionStream,
    EventStream,
)


def _version() -> str:
    # Set by setuptools-scm from the git tag when kronk was installed (editable installs
    # too); a source tree that was never installed has no metadata to ask.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kronk")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

# A library prints nothing on its own: without this, Python's last-resort handler would
# write llama.cpp's load-time warnings (routed to `kronk.llama`) to stderr of every program
# that uses the SDK. Programs that configure logging still get every record.
logging.getLogger("kronk").addHandler(logging.NullHandler())

__all__ = [
    "AsyncChatStream",
    "AsyncCompletionStream",
    "AsyncEventStream",
    "ChatStream",
    "CompletionStream",
    "ContextFullError",
    "EngineBusyError",
    "EngineClosedError",
    "EventStream",
    "GrammarError",
    "InvalidModelFileError",
    "InvalidRequestError",
    "Kronk",
    "KronkError",
    "ModelLoadError",
    "ModelTooLargeError",
    "TemplateError",
    "UnsupportedFeatureError",
    "__version__",
]
