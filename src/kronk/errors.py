"""Exceptions raised by kronk.

Every error a user can cause is a `KronkError` with a message that says what went
wrong and, where it helps, what to do. Protocol adapters (OpenAI, Anthropic) map
these classes onto their own status codes and error objects, so the class is the
contract: `InvalidRequestError` is the caller's fault (HTTP 400), `ContextFullError`
means the prompt does not fit (413), `EngineBusyError` means try later (503, with
Retry-After).
"""

from __future__ import annotations


class KronkError(Exception):
    """Base class of every error kronk raises on purpose."""


class ModelLoadError(KronkError):
    """A model file could not be loaded."""


class InvalidModelFileError(ModelLoadError):
    """The file is not a GGUF model llama.cpp can read (wrong magic, truncated, corrupt)."""


class InvalidRequestError(KronkError):
    """The request itself is wrong; `param` names the offending field when known."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class GrammarError(InvalidRequestError):
    """A GBNF grammar (or a JSON schema turned into one) did not parse."""


class UnsupportedFeatureError(InvalidRequestError):
    """The model cannot do what was asked (no FIM tokens, not an embedding model, ...)."""


class ContextFullError(KronkError):
    """The prompt plus the requested generation does not fit the context window."""

    def __init__(self, message: str, n_prompt: int, n_ctx: int) -> None:
        super().__init__(message)
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


class EngineBusyError(KronkError):
    """All slots are busy and the wait queue is full."""


class EngineClosedError(KronkError):
    """The engine was closed (model unloaded) before or while serving the request."""


class TemplateError(KronkError):
    """A chat template failed to render (bad template, or it raised on these messages)."""


class DecodeError(KronkError):
    """llama_decode failed for a reason other than a full context."""


class ModelIntegrityError(KronkError):
    """A downloaded or assembled model file has the wrong size or sha256 (corrupt or tampered)."""


class ModelNotFoundError(KronkError):
    """No model of that name is available locally (HTTP 404 for the server)."""

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message)
        self.model = model


class ConfigError(KronkError):
    """A setting (config file, environment variable or flag) has a bad value; the message
    names where it came from."""


class DownloadError(KronkError):
    """A model download failed (HTTP error, connection lost, another process downloading).

    `status` is the HTTP status when the server answered with an error. A partial
    download is kept where it can be resumed, so running the same pull again continues.
    """

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class CatalogError(KronkError):
    """A model catalog file could not be read or does not validate; the message says where."""


class ModelConversionError(KronkError):
    """A model folder could not be converted to GGUF: files missing or malformed, or an
    architecture, tokenizer or pooling mode the converter does not support."""


class ModelTooLargeError(KronkError):
    """The model's memory estimate exceeds the server's whole memory budget: it can never
    be loaded with these settings (the message names both)."""
