"""Request parameters, validated once for the SDK and every protocol adapter.

Names follow OpenAI's API; llama.cpp's extra samplers use llama-server's names.
Unknown parameters are an error, not silently ignored: a typo like `temprature`
should not quietly give a different answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from kronk.errors import InvalidRequestError
from kronk.llama import SamplingParams


class SamplingOptions(BaseModel):
    """Parameters every generation request takes. None means "the model's default"."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    dry_multiplier: float | None = None
    dry_base: float | None = None
    dry_allowed_length: int | None = None
    dry_penalty_last_n: int | None = None
    dry_sequence_breakers: list[str] | None = None
    xtc_probability: float | None = None
    xtc_threshold: float | None = None
    seed: int | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string, like OpenAI) -> bias
    stop: str | list[str] | None = None
    grammar: str | None = None  # GBNF
    ignore_eos: bool = False
    n: int = 1
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
            raise InvalidRequestError("only n=1 is supported; send several requests instead", "n")
        fields = {
            name: getattr(self, name)
            for name in (
                "temperature",
                "top_p",
                "top_k",
                "min_p",
                "typical_p",
                "presence_penalty",
                "frequency_penalty",
                "repeat_penalty",
                "repeat_last_n",
                "dry_multiplier",
                "dry_base",
                "dry_allowed_length",
                "dry_penalty_last_n",
                "xtc_probability",
                "xtc_threshold",
                "seed",
            )
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
