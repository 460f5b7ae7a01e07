"""From an OpenAI-style chat request to what the engine runs: the rendered and tokenized
prompt, the sampler (with the grammar that enforces `tool_choice` or `response_format`),
and the `ChatTurn` that reads the output back.

`ChatPreparer` holds what this needs of one loaded model (its template, tool-call format,
sampling defaults and vocabulary); `Kronk` owns one and calls it under its lifecycle lock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kronk.chat.template import ChatTemplate
from kronk.chat.tools import (
    OUTPUT_MARKERS,
    Reasoning,
    ToolCallParser,
    ToolChoice,
    ToolFormat,
    ToolSpec,
    detect_tool_format,
    tool_call_grammar,
    tools_system_prompt,
    validate_tool_choice,
    validate_tools,
)
from kronk.chat.turn import ChatTurn
from kronk.engine.request import GenerationRequest
from kronk.errors import InvalidRequestError, UnsupportedFeatureError
from kronk.llama import JSON_OBJECT_SCHEMA, LlamaModel, SamplingParams, json_schema_to_grammar
from kronk.options import ChatOptions, parse_options
from kronk.telemetry.tracing import span

log = logging.getLogger("kronk")

Messages = Sequence[Mapping[str, Any]]
Tools = Sequence[Mapping[str, Any]]


class ChatPreparer:
    """Turns chat requests into engine requests for one model."""

    def __init__(
        self,
        model: LlamaModel,
        model_id: str,
        defaults: SamplingParams,
        *,
        embedding_only: bool,
        template_override: str | Path | None = None,
    ) -> None:
        self.model = model
        self.model_id = model_id
        self.defaults = defaults
        self.template = _load_template(model, template_override, embedding_only)
        self.tool_format = detect_tool_format(
            self.template.source if self.template is not None else None, model.architecture
        )
        self.marker_tokens = _single_token_markers(model)

    @property
    def supports_tools(self) -> bool:
        return self.template is not None and self.template.supports_tools

    @property
    def thinks(self) -> bool:
        """Whether the template writes reasoning between <think> tags."""
        return self.template is not None and "<think>" in self.template.source

    def tokenize_prompt(self, text: str) -> list[int]:
        vocab = self.model.vocab
        bos = vocab.special.bos
        # Templates often write the BOS text themselves; never add a second one.
        add_bos = vocab.add_bos and not (bos is not None and text.startswith(vocab.token_text(bos)))
        return vocab.tokenize(text, add_special=add_bos, parse_special=True)

    def render(
        self,
        messages: Messages,
        tools: Tools | None,
        specs: Sequence[ToolSpec],
        template_kwargs: Mapping[str, Any],
    ) -> str:
        if self.template is None:
            raise UnsupportedFeatureError(
                f"{self.model_id} is an embedding model; it cannot chat", "model"
            )
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
            raise InvalidRequestError("messages must be a non-empty list", "messages")
        if specs and not self.template.supports_tools:
            # The template cannot show tools: describe them in the system message instead.
            messages = _with_system_text(messages, tools_system_prompt(specs))
        return self.template.render(
            messages, tools=tools or None, add_generation_prompt=True, **template_kwargs
        )

    def count_tokens(
        self, messages: Messages, tools: Tools | None, template_kwargs: Mapping[str, Any]
    ) -> int:
        prompt = self.render(messages, tools, validate_tools(tools), template_kwargs)
        return len(self.tokenize_prompt(prompt))

    def prepare(
        self,
        messages: Messages,
        tools: Tools | None,
        tool_choice: str | Mapping[str, Any] | None,
        parallel_tool_calls: bool,
        params: Mapping[str, Any],
    ) -> tuple[GenerationRequest, ChatTurn]:
        opts = parse_options(ChatOptions, params)
        specs = validate_tools(tools)
        choice = validate_tool_choice(tool_choice, specs)
        if not isinstance(parallel_tool_calls, bool):
            raise InvalidRequestError(
                "parallel_tool_calls must be true or false", "parallel_tool_calls"
            )
        with span("kronk.template_render", model=self.model_id, messages=len(messages)):
            prompt = self.render(messages, tools, specs, opts.chat_template_kwargs or {})
        if opts.top_logprobs is not None and not opts.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true", "top_logprobs")
        starts_in_reasoning = prompt.rstrip().endswith("<think>")
        sampling = self._sampling(opts, specs, choice, parallel_tool_calls, starts_in_reasoning)
        with span("kronk.tokenize", model=self.model_id) as tokenize_span:
            prompt_tokens = self.tokenize_prompt(prompt)
            tokenize_span.set_attribute("kronk.prompt_tokens", len(prompt_tokens))
        request = GenerationRequest(
            prompt=prompt_tokens,
            sampling=sampling,
            max_tokens=opts.max_new_tokens(),
            stop=opts.stop_list(),
            logprobs=(opts.top_logprobs or 0) if opts.logprobs else None,
            ignore_eos=bool(opts.ignore_eos),
            render_special=self.marker_tokens,
            speculative=opts.speculative is not False,
        )
        parse_calls = bool(specs) and choice.mode != "none"
        tool_parser = (
            ToolCallParser(
                self.tool_format,
                tool_names=[spec.name for spec in specs],
                parallel=parallel_tool_calls,
                parse_calls=parse_calls,
            )
            if parse_calls or self.tool_format is ToolFormat.HARMONY
            else None
        )
        turn = ChatTurn(
            self.model_id, starts_in_reasoning=starts_in_reasoning, tool_parser=tool_parser
        )
        return request, turn

    def _sampling(
        self,
        opts: ChatOptions,
        specs: Sequence[ToolSpec],
        choice: ToolChoice,
        parallel: bool,
        starts_in_reasoning: bool,
    ) -> SamplingParams:
        """The sampler parameters, with the grammar that enforces `tool_choice` if any."""
        grammar = _response_format_grammar(opts.response_format)
        user_grammar = grammar is not None or opts.grammar is not None
        reasoning: Reasoning = (
            "open" if starts_in_reasoning else "optional" if self.thinks else "none"
        )
        if choice.forced:
            if user_grammar:
                raise InvalidRequestError(
                    "tool_choice 'required' or a named function cannot be combined with "
                    "response_format or grammar",
                    "tool_choice",
                )
            forced = tool_call_grammar(
                self.tool_format, specs, choice, parallel=parallel, reasoning=reasoning
            )
            assert forced is not None  # forced choices always have one
            return opts.sampling_params(self.defaults, grammar=forced.grammar)
        lazy = None
        if choice.mode == "auto" and specs and not user_grammar:
            try:
                lazy = tool_call_grammar(self.tool_format, specs, choice, parallel=parallel)
            except InvalidRequestError as exc:
                # Calls are still parsed (and repaired); they are just not enforced.
                log.info("no lazy tool-call grammar: %s", exc)
        if lazy is None:
            return opts.sampling_params(self.defaults, grammar=grammar)
        sampling = opts.sampling_params(self.defaults, grammar=lazy.grammar)
        return dataclasses.replace(sampling, grammar_triggers=lazy.triggers)


def _load_template(
    model: LlamaModel, override: str | Path | None, embedding_only: bool
) -> ChatTemplate | None:
    vocab = model.vocab
    special = vocab.special
    tokens = {
        "bos_token": vocab.token_text(special.bos) if special.bos is not None else "",
        "eos_token": vocab.token_text(special.eos) if special.eos is not None else "",
    }
    if override is not None:
        return ChatTemplate.from_file(override, **tokens)
    if embedding_only:
        return None
    source = model.chat_template
    return ChatTemplate(source, **tokens) if source else ChatTemplate.default(**tokens)


def _single_token_markers(model: LlamaModel) -> frozenset[int]:
    """The ids of output markers that this vocabulary has as one special token."""
    vocab = model.vocab
    ids = set()
    for marker in OUTPUT_MARKERS:
        tokens = vocab.tokenize(marker, add_special=False, parse_special=True)
        if len(tokens) == 1 and not vocab.is_eog(tokens[0]):
            ids.add(tokens[0])
    return frozenset(ids)


def _response_format_grammar(response_format: Mapping[str, Any] | None) -> str | None:
    """OpenAI's response_format -> a GBNF grammar (None for plain text)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_schema_to_grammar(JSON_OBJECT_SCHEMA)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(
                "response_format.json_schema.schema must be an object", "response_format"
            )
        return json_schema_to_grammar(schema)
    raise InvalidRequestError(
        f"response_format.type must be 'text', 'json_object' or 'json_schema'; got {kind!r}",
        "response_format",
    )


def _with_system_text(messages: Messages, text: str) -> list[Mapping[str, Any]]:
    """`messages` with `text` added to the system message (a new one if there is none)."""
    out = list(messages)
    first = out[0] if out else None
    if isinstance(first, Mapping) and first.get("role") == "system":
        content = first.get("content")
        if isinstance(content, str):
            out[0] = {**first, "content": f"{content}\n\n{text}"}
            return out
    return [{"role": "system", "content": text}, *out]


__all__ = ["ChatPreparer", "Messages", "Tools"]
