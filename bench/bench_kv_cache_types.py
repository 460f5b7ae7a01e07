"""KV cache types: memory against quality, on the default model.

For each cache type this measures the KV bytes per token (llama.cpp's own allocation
agrees), the perplexity of a fixed text (the source of Python's `json.decoder` module,
about 3k tokens, scored in 512-token windows), and how many of 64 greedily generated
tokens match the f16 cache's output. It writes a section of bench/RESULTS.md.

    .venv/bin/python bench/bench_kv_cache_types.py
"""

from __future__ import annotations

import inspect
import json.decoder
import math
import time

import numpy as np

from kronk.llama import Batch, ContextParams, LlamaContext, LlamaModel, SamplerChain, SamplingParams
from llama_tools import bench_arguments, chosen_model, publish

# (K type, V type): every type for both, then V-only quantization (K is the sensitive half).
TYPES = [(t, t) for t in ("f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")] + [
    ("f16", "q8_0"),
    ("f16", "q4_0"),
    ("q8_0", "q4_0"),
]
WINDOW = 512
PROMPT = "Write a Python function that parses a date string in several formats."


def perplexity(ctx: LlamaContext, tokens: list[int]) -> float:
    """exp(mean negative log-likelihood) over non-overlapping windows."""
    batch = Batch(WINDOW, 1)
    nll, count = 0.0, 0
    try:
        for start in range(0, len(tokens) - 1, WINDOW):
            window = tokens[start : start + WINDOW]
            ctx.seq_remove(0)
            batch.clear()
            batch.add_sequence(window, 0, 0, output_last=False, output_all=True)
            ctx.decode(batch)
            for i in range(len(window) - 1):
                logits = ctx.logits(i).astype(np.float64)
                top = logits.max()
                log_z = top + math.log(float(np.exp(logits - top).sum()))
                nll += log_z - logits[window[i + 1]]
                count += 1
    finally:
        batch.close()
    return math.exp(nll / count)


def greedy(ctx: LlamaContext, model: LlamaModel, n: int) -> list[int]:
    prompt = model.vocab.tokenize(PROMPT)
    chain = SamplerChain(model.vocab, SamplingParams(temperature=0))
    batch = Batch(len(prompt) + 1, 1)
    out: list[int] = []
    try:
        ctx.seq_remove(0)
        batch.add_sequence(prompt, 0, 0, output_last=True)
        ctx.decode(batch)
        pos = len(prompt)
        for _ in range(n):
            token = chain.sample(ctx.ptr, batch.n_tokens - 1)
            out.append(token)
            batch.clear()
            batch.add(token, pos, 0, True)
            pos += 1
            ctx.decode(batch)
    finally:
        batch.close()
        chain.close()
    return out


def main() -> int:
    args = bench_arguments(__doc__).parse_args()
    path = chosen_model(args)
    model = LlamaModel.load(path)
    text_tokens = model.vocab.tokenize(inspect.getsource(json.decoder))
    rows = []
    reference: list[int] = []
    for type_k, type_v in TYPES:
        kv_type = type_k if type_k == type_v else f"K {type_k} / V {type_v}"
        params = ContextParams(
            n_ctx=WINDOW + 128, n_batch=WINDOW, n_ubatch=WINDOW, type_k=type_k, type_v=type_v,
            flash_attn="on", n_threads=args.threads,
        )  # fmt: skip
        ctx = LlamaContext(model, params)
        try:
            start = time.perf_counter()
            ppl = perplexity(ctx, text_tokens)
            seconds = time.perf_counter() - start
            tokens = greedy(ctx, model, 64)
        finally:
            ctx.close()
        if kv_type == "f16":
            reference = tokens
        same = next(
            (i for i, (a, b) in enumerate(zip(tokens, reference, strict=True)) if a != b), 64
        )
        row = (kv_type, ctx.kv_bytes_per_token, ppl, same, seconds)
        rows.append(row)
        print(
            f"{kv_type:18} {row[1]:6.0f} B/token  ppl {ppl:7.4f}  greedy {same}/64  {seconds:.1f}s"
        )
    model.close()
    base = rows[0]
    lines = [
        "## kv_cache_types",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "- command: `.venv/bin/python bench/bench_kv_cache_types.py`",
        f"- model: `{path.name}`; text: Python's json/decoder.py source, "
        f"{len(text_tokens)} tokens, {WINDOW}-token windows; flash attention on; "
        f"{args.threads} threads",
        "",
        "| cache type | KV bytes/token | memory vs f16 | perplexity | vs f16 "
        "| greedy tokens equal to f16 (of 64) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kv_type, per_token, ppl, same, _ in rows:
        lines.append(
            f"| {kv_type} | {per_token:.0f} | {per_token / base[1]:.2f}× | {ppl:.4f} | "
            f"{(ppl / base[2] - 1) * 100:+.2f}% | {same} |"
        )
    publish("\n".join(lines) + "\n", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
