"""`Kronk`: chat with a local GGUF model through an API that feels like OpenAI's.

    from kronk import Kronk

    with Kronk("model.gguf") as k:
        resp = k.chat(messages=[{"role": "user", "content": "What is 2+2?"}], temperature=0)
        print(resp.choices[0].message.content)

Every method is thread-safe; concurrent calls are batched together by the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from kronk.chat.request import ChatPreparer, Messages, Tools
from kronk.chat.tools import (
    validate_tools,
)
from kronk.chat.turn import ChatTurn, TextTurn
from kronk.engine.engine import Engine, EngineConfig, EngineStats
from kronk.engine.request import GenerationRequest
from kronk.engine.speculative import SpeculativeConfig
from kronk.errors import EngineClosedError, InvalidRequestError, UnsupportedFeatureError
from kronk.llama import (
    LlamaModel,
    ModelParams,
    SamplingParams,
)
from kronk.llama.model import LoadProgress
from kronk.openai_objects import ChatCompletionBuilder, CompletionBuilder
from kronk.options import ChatOptions, CompletionOptions, parse_options
from kronk.streams import (
    AsyncChatStream,
    AsyncCompletionStream,
    AsyncEventStream,
    ChatStream,
    CompletionStream,
    EventStream,
)
from kronk.telemetry.tracing import record_engine_phases
from kronk.types import (
    ChatCompletion,
    Completion,
    CreateEmbeddingResponse,
    Embedding,
    EmbeddingUsage,
    ModelInfo,
)

log = logging.getLogger("kronk")

EmbeddingInput = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]


class Kronk:
    """One loaded model and its engine. Close it (or use `with`) to free the model."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        model_id: str | None = None,
        n_ctx: int = 4096,
        n_seq_max: int = 4,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_gpu_layers: int = -1,
        use_mmap: bool = True,
        use_mlock: bool = False,
        cache_type_k: str = "f16",
        cache_type_v: str = "f16",
        flash_attn: str = "auto",
        batch_invariant: bool = False,
        max_queue: int = 64,
        queue_timeout: float | None = None,
        prompt_cache_bytes: int = 1 << 30,
        chat_template: str | Path | None = None,
        sampling_defaults: Mapping[str, Any] | None = None,
        load_progress: LoadProgress | None = None,
        speculative: SpeculativeConfig | str | bool | None = "auto",
        draft_model: str | Path | None = None,
        draft_max: int | None = None,
    ) -> None:
        """Load `model_path` (a GGUF file) and start its engine.

        `n_ctx` is the context window of each of the `n_seq_max` parallel slots (capped at
        the model's training context). `chat_template` is a path to a Jinja file that
        replaces the model's own template. `sampling_defaults` (e.g. from a catalog entry)
        sit between llama.cpp's defaults and each call's parameters. A request waits for a
        slot among `max_queue` others, and fails with EngineBusyError after `queue_timeout`
        seconds of waiting (None: no limit). `prompt_cache_bytes`
        bounds the host memory that keeps KV states of long prompts that lost their slot
        (0 turns that cache off).

        `batch_invariant=True` makes greedy output a function of the prompt and
        parameters alone: never of other requests or of what the caches hold. It turns
        off llama.cpp's repacked CPU weights and (for `flash_attn="auto"`) flash
        attention, feeds each prompt chunk in a pass of its own and generating sequences
        in passes of fewer than 8 tokens, and reuses cached KV only where a fresh
        prefill would compute the same numbers (`engine/invariance.py`). Measured on the
        default model it costs about 14% of prompt processing, and 6% of generation with
        4 streams, 32% with 8 (two passes a step). It also makes
        `speculative="auto"` mean "off": an explicit mode is honoured, with at most 6
        draft tokens a step (more would round differently from plain decoding).

        `speculative` (docs/speculative.md): "auto" (n-gram drafts, plus `draft_model`'s
        when given, each used only where it pays), "ngram", "draft", "off" (or False), or
        a `SpeculativeConfig`; `draft_max` caps the draft tokens a slot verifies a step.
        Output is the same either way. `draft_model` is a GGUF with this model's vocabulary.
        """
        if batch_invariant and speculative == "auto":
            speculative = "off"  # see above: invariance is what was asked for
        spec = SpeculativeConfig.of(speculative)
        spec = dataclasses.replace(
            spec,
            draft_model=str(draft_model) if draft_model is not None else spec.draft_model,
            draft_max=draft_max if draft_max is not None else spec.draft_max,
        )
        spec.validate()
        params = ModelParams(
            n_gpu_layers=n_gpu_layers,
            use_mmap=use_mmap,
            use_mlock=use_mlock,
            repack=not batch_invariant,
        )
        self.model = LlamaModel.load(model_path, params, progress=load_progress)
        self.draft_model: LlamaModel | None = None
        engine: Engine | None = None
        try:
            if spec.uses_draft_model and spec.draft_model is not None:
                self.draft_model = LlamaModel.load(spec.draft_model, params)
            self.model_id = model_id or Path(model_path).stem
            self._defaults = parse_options(ChatOptions, sampling_defaults or {}).sampling_params(
                SamplingParams()
            )
            self._defaults.validate(self.model.vocab.n_tokens)  # bad defaults fail the load
            n_ctx_train = self.model.n_ctx_train
            if n_ctx_train > 0 and n_ctx > n_ctx_train:
                log.info(
                    "n_ctx %d exceeds the model's training context; using %d", n_ctx, n_ctx_train
                )
                n_ctx = n_ctx_train
            self.engine = engine = Engine(
                self.model,
                EngineConfig(
                    n_ctx=n_ctx,
                    n_seq_max=n_seq_max,
                    n_batch=n_batch,
                    n_ubatch=n_ubatch,
                    n_threads=n_threads,
                    n_threads_batch=n_threads_batch,
                    type_k=cache_type_k,
                    type_v=cache_type_v,
                    flash_attn=flash_attn,
                    max_queue=max_queue,
                    queue_timeout=queue_timeout,
                    prompt_cache_bytes=prompt_cache_bytes,
                    speculative=spec,
                    batch_invariant=batch_invariant,
                ),
                draft_model=self.draft_model,
            )
            # Each request's engine phases become spans under the span it was made in.
            engine.add_listener(partial(record_engine_phases, self.model_id))
            self._chat = ChatPreparer(
                self.model,
                self.model_id,
                self._defaults,
                embedding_only=engine.embedding_only,
                template_override=chat_template,
            )
            self.tool_format = self._chat.tool_format
        except BaseException:
            if engine is not None:
                engine.close()
            if self.draft_model is not None:
                self.draft_model.close()
            self.model.close()
            raise
        self._closed = False
        # Calls that use the model (its vocab, metadata) hold it open: close() waits for
        # them, and after close() they raise instead of touching freed llama.cpp memory.
        self._users = 0
        self._lifecycle = threading.Condition()

    @contextmanager
    def _open(self) -> Iterator[None]:
        with self._lifecycle:
            if self._closed:
                raise EngineClosedError(f"{self.model_id} was closed")
            self._users += 1
        try:
            yield
        finally:
            with self._lifecycle:
                self._users -= 1
                if self._users == 0:
                    self._lifecycle.notify_all()

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine (running requests end as cancelled) and free the model.

        Idempotent. Calls made afterwards raise `EngineClosedError`."""
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            while self._users:  # e.g. a prompt being tokenized on another thread
                self._lifecycle.wait()
        self.engine.close()
        if self.draft_model is not None:
            self.draft_model.close()
        self.model.close()

    def __enter__(self) -> Kronk:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- chat ------------------------------------------------------------------------

    def chat(
        self,
        messages: Messages,
        *,
        tools: Tools | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> ChatCompletion:
        """A chat completion (OpenAI's `chat.completions.create` without `stream`).

        `tools`, `tool_choice` and `parallel_tool_calls` are OpenAI's: calls come back in
        `message.tool_calls` with `finish_reason` "tool_calls". `tool_choice` "required" or
        {"type": "function", "function": {"name": ...}} is enforced with a grammar.
        """
        with self.chat_stream(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        ) as stream:
            for _ in stream:
                pass
            return stream.result()

    def chat_stream(
        self,
        messages: Messages,
        *,
        tools: Tools | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> ChatStream:
        """Stream chat completion chunks. Closing the stream (or leaving `with`) cancels it.

        Tool calls stream as OpenAI's do: `delta.tool_calls` with a call's index, id and name
        first, then fragments of its arguments.
        """
        events = self.chat_events(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        )
        return ChatStream(events, ChatCompletionBuilder(self.model_id))

    def chat_events(
        self,
        messages: Messages,
        *,
        tools: Tools | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> EventStream:
        """Stream the turn's protocol-neutral events (`kronk.chat.events`): reasoning and
        content deltas, tool calls as they are written, and a `TurnFinished` with the stop
        reason and usage. Every protocol the server speaks is built from these."""
        request, turn = self._prepare_chat(
            messages, tools, tool_choice, parallel_tool_calls, params
        )
        return EventStream(self.engine, request, turn)

    async def achat(
        self,
        messages: Messages,
        *,
        tools: Tools | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> ChatCompletion:
        stream = self.achat_stream(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        )
        async with stream:
            async for _ in stream:
                pass
        return stream.result()

    def achat_stream(
        self,
        messages: Messages,
        *,
        tools: Tools | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> AsyncChatStream:
        """Async `chat_stream`. The prompt is prepared in a worker thread when the stream
        starts (`await stream.start()`, or its first read): bad input raises there."""
        events = self.achat_events(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        )
        return AsyncChatStream(events, ChatCompletionBuilder(self.model_id))

    def achat_events(
        self,
        messages: Messages,
        *,
        tools: Tools | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> AsyncEventStream:
        """Async `chat_events`, prepared in a worker thread when the stream starts."""
        prepare = partial(
            self._prepare_chat, messages, tools, tool_choice, parallel_tool_calls, params
        )
        return AsyncEventStream(self.engine, prepare)

    def count_chat_tokens(
        self,
        messages: Messages,
        *,
        tools: Tools | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> int:
        """The prompt tokens a chat request with these messages and tools would take."""
        with self._open():
            return self._chat.count_tokens(messages, tools, chat_template_kwargs or {})

    def _prepare_chat(
        self,
        messages: Messages,
        tools: Tools | None,
        tool_choice: str | Mapping[str, Any] | None,
        parallel_tool_calls: bool,
        params: Mapping[str, Any],
    ) -> tuple[GenerationRequest, ChatTurn]:
        with self._open():
            return self._chat.prepare(messages, tools, tool_choice, parallel_tool_calls, params)

    def render_chat(
        self,
        messages: Messages,
        *,
        tools: Tools | None = None,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text the model's chat template makes of `messages`."""
        with self._open():
            return self._chat.render(messages, tools, validate_tools(tools), template_kwargs)

    # -- raw completion and fill-in-the-middle -----------------------------------------

    def complete(
        self, prompt: str | Sequence[int], *, suffix: str | None = None, **params: Any
    ) -> Completion:
        """Raw text completion; with `suffix`, fill in the middle between `prompt` and
        `suffix` using the model's FIM tokens."""
        with self.complete_stream(prompt, suffix=suffix, **params) as stream:
            for _ in stream:
                pass
            return stream.result()

    def complete_stream(
        self, prompt: str | Sequence[int], *, suffix: str | None = None, **params: Any
    ) -> CompletionStream:
        with self._open():
            request = self._completion_request(prompt, suffix, params)
            builder = CompletionBuilder(self.model_id, echo=self.echo_text(prompt, params))
        return CompletionStream(EventStream(self.engine, request, TextTurn()), builder)

    async def acomplete(
        self, prompt: str | Sequence[int], *, suffix: str | None = None, **params: Any
    ) -> Completion:
        stream = self.acomplete_stream(prompt, suffix=suffix, **params)
        async with stream:
            async for _ in stream:
                pass
        return stream.result()

    def acomplete_stream(
        self, prompt: str | Sequence[int], *, suffix: str | None = None, **params: Any
    ) -> AsyncCompletionStream:
        """Async `complete_stream`, prepared in a worker thread when the stream starts."""
        with self._open():
            builder = CompletionBuilder(self.model_id, echo=self.echo_text(prompt, params))
        return AsyncCompletionStream(
            self.acomplete_events(prompt, suffix=suffix, **params), builder
        )

    def acomplete_events(
        self, prompt: str | Sequence[int], *, suffix: str | None = None, **params: Any
    ) -> AsyncEventStream:
        """A raw completion's neutral events (content deltas and `TurnFinished`)."""

        def prepare() -> tuple[GenerationRequest, TextTurn]:
            with self._open():
                return self._completion_request(prompt, suffix, params), TextTurn()

        return AsyncEventStream(self.engine, prepare)

    def echo_text(self, prompt: str | Sequence[int], params: Mapping[str, Any]) -> str:
        """The prompt text a completion with these `params` starts with ("" unless
        `echo` is true)."""
        if params.get("echo") is not True:
            return ""
        if isinstance(prompt, str):
            return prompt
        return self.model.vocab.detokenize(_token_list(prompt, "prompt"))

    def _completion_request(
        self, prompt: str | Sequence[int], suffix: str | None, params: Mapping[str, Any]
    ) -> GenerationRequest:
        opts = parse_options(CompletionOptions, params)
        if opts.logprobs is not None and not 0 <= opts.logprobs <= 5:
            raise InvalidRequestError("logprobs must be between 0 and 5", "logprobs")
        if opts.echo and suffix is not None:
            raise InvalidRequestError("echo cannot be used with suffix", "echo")
        if suffix is not None:
            tokens = self._fim_prompt(prompt, suffix)
        elif isinstance(prompt, str):
            tokens = self._chat.tokenize_prompt(prompt)
        else:
            tokens = _token_list(prompt, "prompt")
        return GenerationRequest(
            prompt=tokens,
            sampling=opts.sampling_params(self._defaults),
            max_tokens=opts.max_new_tokens() if opts.max_new_tokens() is not None else 16,
            stop=opts.stop_list(),
            logprobs=opts.logprobs,
            ignore_eos=bool(opts.ignore_eos),
            speculative=opts.speculative is not False,
        )

    def _fim_prompt(self, prompt: str | Sequence[int], suffix: str) -> list[int]:
        special = self.model.vocab.special
        if special.fim_pre is None or special.fim_suf is None or special.fim_mid is None:
            raise UnsupportedFeatureError(
                f"{self.model_id} has no fill-in-the-middle tokens; suffix needs a FIM-trained "
                "model such as Qwen2.5-Coder",
                "suffix",
            )
        if not isinstance(prompt, str):
            raise InvalidRequestError("suffix needs a text prompt", "prompt")
        vocab = self.model.vocab
        # Prefix-suffix-middle order, as llama-server builds it.
        tokens = [special.fim_pre, *vocab.tokenize(prompt, add_special=False)]
        tokens += [special.fim_suf, *vocab.tokenize(suffix, add_special=False), special.fim_mid]
        if vocab.add_bos and special.bos is not None:
            tokens.insert(0, special.bos)
        return tokens

    # -- embeddings ----------------------------------------------------------------------

    def embed(self, inputs: EmbeddingInput, *, normalize: bool = True) -> CreateEmbeddingResponse:
        """Embed one text or many (batched together). Vectors are L2-normalised unless
        `normalize=False`."""
        with self._open():
            token_lists = self._embedding_tokens(inputs)
            vectors = self.engine.embed(token_lists, normalize=normalize)
        return self._embedding_response(token_lists, vectors)

    async def aembed(
        self, inputs: EmbeddingInput, *, normalize: bool = True
    ) -> CreateEmbeddingResponse:
        # All of it in a worker thread: tokenizing long inputs would stall the event loop,
        # and a close() on the loop's thread must not wait for a coroutine it blocks.
        return await asyncio.to_thread(self.embed, inputs, normalize=normalize)

    def _embedding_tokens(self, inputs: EmbeddingInput) -> list[list[int]]:
        if isinstance(inputs, str):
            items: list[Any] = [inputs]
        elif isinstance(inputs, Sequence) and inputs and all(isinstance(t, int) for t in inputs):
            items = [list(inputs)]
        elif isinstance(inputs, Sequence):
            items = list(inputs)
        else:
            raise InvalidRequestError(
                "input must be a string, a list of strings or token ids", "input"
            )
        out: list[list[int]] = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                if not item:
                    raise InvalidRequestError(f"input[{i}] is an empty string", "input")
                out.append(self.model.vocab.tokenize(item, add_special=True))
            else:
                out.append(_token_list(item, "input"))
        return out

    def _embedding_response(
        self, token_lists: list[list[int]], vectors: Sequence[Any]
    ) -> CreateEmbeddingResponse:
        n_tokens = sum(map(len, token_lists))
        return CreateEmbeddingResponse(
            data=[Embedding(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)],
            model=self.model_id,
            usage=EmbeddingUsage(prompt_tokens=n_tokens, total_tokens=n_tokens),
        )

    # -- tokens and info -----------------------------------------------------------------

    def tokenize(
        self, text: str, *, add_special: bool = False, parse_special: bool = False
    ) -> list[int]:
        if not isinstance(text, str):
            raise InvalidRequestError("text must be a string", "text")
        with self._open():
            return self.model.vocab.tokenize(
                text, add_special=add_special, parse_special=parse_special
            )

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        if isinstance(tokens, str) or not all(isinstance(t, int) for t in tokens):
            raise InvalidRequestError("tokens must be a list of token ids", "tokens")
        with self._open():
            try:
                return self.model.vocab.detokenize(list(tokens), special=special)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), "tokens") from None

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def model_info(self) -> ModelInfo:
        with self._open():
            return self._model_info()

    def _model_info(self) -> ModelInfo:
        m = self.model
        caps: list[str] = []
        if self.engine.embedding_only:
            caps.append("embedding")
        else:
            caps += ["chat", "completion"]
            if m.vocab.special.has_fim:
                caps.append("fim")
            if self._chat.supports_tools:
                caps.append("tools")
            if self._chat.thinks:
                caps.append("reasoning")
        return ModelInfo(
            id=self.model_id,
            path=str(m.path),
            architecture=m.architecture,
            description=m.description,
            n_params=m.n_params,
            size_bytes=m.size_bytes,
            n_ctx_train=m.n_ctx_train,
            n_ctx=self.engine.n_ctx,
            n_slots=self.engine.config.n_seq_max,
            n_embd=m.n_embd,
            n_swa=m.n_swa,
            has_chat_template=m.chat_template is not None,
            capabilities=caps,
            metadata={k: v for k, v in m.metadata().items() if not k.startswith("tokenizer.ggml.")},
        )


# -- helpers -------------------------------------------------------------------------------------


def _token_list(value: Any, param: str) -> list[int]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not all(isinstance(t, int) for t in value)
    ):
        raise InvalidRequestError(f"{param} must be text or a list of token ids", param)
    return list(value)


__all__ = ["Kronk"]
