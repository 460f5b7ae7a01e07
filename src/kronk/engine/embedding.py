"""Embeddings on the engine thread: inputs grouped into as few decodes as fit."""

from __future__ import annotations

import concurrent.futures
import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kronk.engine.checks import check_token_ids
from kronk.engine.config import EngineConfig
from kronk.errors import ContextFullError, InvalidRequestError, KronkError
from kronk.llama import Batch, ContextParams, LlamaContext, LlamaModel


@dataclass
class EmbedJob:
    inputs: list[list[int]]
    normalize: bool
    future: concurrent.futures.Future[list[npt.NDArray[np.float32]]]


class Embedder:
    """The embedding context of an engine: made at once for an embedding model, on first
    use for a chat model (which embeds with its last token)."""

    def __init__(self, model: LlamaModel, config: EngineConfig, *, eager: bool) -> None:
        self.model = model
        self.config = config
        self.ctx = embedding_context(model, config) if eager else None

    @property
    def n_ctx(self) -> int:
        return self.ctx.n_ctx if self.ctx is not None else self.config.n_ctx

    def limit(self) -> int:
        if self.ctx is not None:
            return self.ctx.n_batch
        return min(self.model.n_ctx_train, self.config.n_ctx)

    def check(self, inputs: list[list[int]], n_vocab: int) -> None:
        """Raise for input the engine could not embed (any thread)."""
        if not inputs:
            raise InvalidRequestError("input must not be empty", "input")
        limit = self.limit()
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise InvalidRequestError(f"input[{i}] is empty", "input")
            if len(tokens) > limit:
                raise ContextFullError(
                    f"input[{i}] has {len(tokens)} tokens; the embedding context holds {limit}",
                    len(tokens),
                    limit,
                )
            check_token_ids(tokens, n_vocab, "input")

    def run(self, job: EmbedJob) -> None:
        """Embed a job's inputs (engine thread); the outcome goes to its future."""
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            if self.ctx is None:
                self.ctx = embedding_context(self.model, self.config)
            job.future.set_result(embed_all(self.ctx, job.inputs, job.normalize))
        except KronkError as exc:
            job.future.set_exception(exc)
        except Exception as exc:
            job.future.set_exception(KronkError(f"embedding failed: {exc}"))

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.close()


def embedding_context(model: LlamaModel, config: EngineConfig) -> LlamaContext:
    n = min(model.n_ctx_train, config.n_ctx)
    # Encoders pool as their GGUF says; a decoder's last token sums up its input.
    pooling = "model" if model.pooling not in (None, "none") else "last"
    return LlamaContext(
        model,
        ContextParams(
            n_ctx=n,
            n_batch=n,
            n_ubatch=n,  # non-causal models need a whole input in one micro-batch
            n_seq_max=config.embedding_batch,
            n_threads=config.n_threads,
            n_threads_batch=config.n_threads_batch,
            embeddings=True,
            pooling=pooling,  # type: ignore[arg-type]
            kv_unified=True,
        ),
    )


def embed_all(
    ctx: LlamaContext, inputs: list[list[int]], normalize: bool
) -> list[npt.NDArray[np.float32]]:
    out: list[npt.NDArray[np.float32]] = []
    batch = Batch(ctx.n_batch, 1)
    try:
        group: list[list[int]] = []
        for tokens in itertools.chain(inputs, [None]):  # None flushes the last group
            full = tokens is None or (
                group
                and (
                    sum(map(len, group)) + len(tokens) > ctx.n_batch or len(group) == ctx.n_seq_max
                )
            )
            if full and group:
                out.extend(_embed_group(ctx, batch, group))
                group = []
            if tokens is not None:
                group.append(tokens)
    finally:
        batch.close()
    if normalize:
        out = [v / n if (n := float(np.linalg.norm(v))) > 0 else v for v in out]
    return out


def _embed_group(
    ctx: LlamaContext, batch: Batch, group: list[list[int]]
) -> list[npt.NDArray[np.float32]]:
    batch.clear()
    for seq_id, tokens in enumerate(group):
        # Pooling reads every token's output.
        batch.add_sequence(tokens, 0, seq_id, output_last=True, output_all=True)
    ctx.clear_memory()
    ctx.decode(batch)
    return [ctx.sequence_embedding(seq_id) for seq_id in range(len(group))]
