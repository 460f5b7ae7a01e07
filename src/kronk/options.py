"""Request parameters, validated once for the SDK and every protocol adapter.

Names follow OpenAI's API; llama.cpp's extra samplers use llama-server's names.
Unknown parameters are an error, not silently ignored: a typo like `temprature`
should not quietly give a different answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kronk.errors import InvalidRequestError

if TYPE_CHECKING:  # the llama.cpp binding stays unloaded for those who only validate
    from kronk.llama import SamplingParams

MAX_CHOICES = 128  # `n`: OpenAI's own limit


class SamplingOptions(BaseModel):
    """The parameters every generation request takes, with their bounds: the one
    declaration that the SDK and every protocol adapter (OpenAI, Anthropic, Ollama)
    validate against, each mapping its own names onto these. None means "the model's
    default"."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer max_tokens
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repeat_penalty: float | None = Field(None, ge=0)
    repeat_last_n: int | None = Field(None, ge=-1)
    dry_multiplier: float | None = Field(None, ge=0)
    dry_base: float | None = Field(None, ge=1)
    dry_allowed_length: int | None = Field(None, ge=0)
    dry_penalty_last_n: int | None = Field(None, ge=-1)
    dry_sequence_breakers: list[str] | None = None
    xtc_probability: float | None = Field(None, ge=0, le=1)
    xtc_threshold: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string, like OpenAI) -> bias
    stop: str | list[str] | None = None
    grammar: str | None = None  # GBNF
    ignore_eos: bool | None = None
    # False: no speculative drafts for this request (docs/speculative.md); the output is
    # the same either way, so this only trades speed, e.g. to measure plain decoding.
    speculative: bool | None = None
    # Choices; the server runs n > 1 as parallel requests, each a request of its own (a
    # million of them stalled the server before any was refused).
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    user: str | None = None  # accepted for OpenAI compatibility; unused

    def max_new_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling_params(
        self, defaults: SamplingParams, *, grammar: str | None = None
    ) -> SamplingParams:
        """Merge these options over `defaults` into the sampler chain's parameters."""
        if self.n != 1:
            raise InvalidRequestError(
                "the SDK makes one choice per call (n=1); call it n times, or use the "
                "server, which runs n > 1 in parallel slots",
                "n",
            )
        fields = {
            name: getattr(self, name)
            for name in SCALAR_SAMPLER_FIELDS
            if getattr(self, name) is not None
        }
        if self.dry_sequence_breakers is not None:
            fields["dry_sequence_breakers"] = tuple(self.dry_sequence_breakers)
        if self.logit_bias:
            fields["logit_bias"] = _parse_logit_bias(self.logit_bias)
        grammar = grammar if grammar is not None else self.grammar
        if grammar is not None:
            if self.grammar is not None and grammar is not self.grammar:
                raise InvalidRequestError(
                    "use either grammar or response_format, not both", "grammar"
                )
            fields["grammar"] = grammar
        from kronk.llama import SamplingParams

        return SamplingParams(**{**vars(defaults), **fields})


# Template variables the request itself provides (see ChatTemplate.render).
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt"})


class ChatOptions(SamplingOptions):
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # extra variables for the template

    @field_validator("chat_template_kwargs")
    @classmethod
    def _no_reserved_template_variables(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # kronk sets these itself from the request; a second value would be ambiguous.
        reserved = sorted(set(value or ()) & RESERVED_TEMPLATE_VARIABLES)
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} cannot be set here; they come from the request"
            )
        return value


# The sampler parameters (what shapes each token), as opposed to the limits and
# bookkeeping fields above: what a protocol passes through to Kronk by name.
SAMPLER_FIELDS = tuple(
    name
    for name in SamplingOptions.model_fields
    if name not in ("max_tokens", "max_completion_tokens", "n", "user")
)
# Those of them that are single numbers: what a catalog entry or config file may set as a
# model's sampling defaults.
SCALAR_SAMPLER_FIELDS = tuple(
    name
    for name in SAMPLER_FIELDS
    if name
    not in ("stop", "grammar", "logit_bias", "dry_sequence_breakers", "ignore_eos", "speculative")
)


def sampler_kwargs(options: SamplingOptions) -> dict[str, Any]:
    """The sampler parameters set in `options`, as Kronk keyword arguments."""
    values = {name: getattr(options, name) for name in SAMPLER_FIELDS}
    return {name: value for name, value in values.items() if value is not None}


class CompletionOptions(SamplingOptions):
    logprobs: int | None = None  # legacy API: number of alternatives per token
    echo: bool = False


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def parse_options(cls: type[OptionsT], params: Mapping[str, Any]) -> OptionsT:
    """Validate `params` into `cls`, turning pydantic's errors into one InvalidRequestError."""
    try:
        return cls.model_validate(dict(params))
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            raise InvalidRequestError(f"unknown parameter {param!r}", param) from None
        raise InvalidRequestError(f"invalid value for {param!r}: {err['msg']}", param) from None


def _parse_logit_bias(bias: Mapping[str, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(
                f"logit_bias keys must be token ids; got {key!r}", "logit_bias"
            ) from None
        if not (math.isfinite(value) or value == -math.inf):
            raise InvalidRequestError(f"logit_bias for {key} must be a number", "logit_bias")
        # OpenAI's range is [-100, 100]; -100 means "never".
        out[token] = -math.inf if value <= -100 else float(value)
    return out
