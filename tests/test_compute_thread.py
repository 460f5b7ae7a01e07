"""Every llama.cpp decode in the process runs on one thread (kronk/llama/compute.py says
why: OpenMP slows every decode once more than one long-lived thread has decoded)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kronk.errors import DecodeError
from kronk.llama import Batch, ContextParams, LlamaContext, LlamaModel, compute
from kronk.llama.compute import on_compute_thread


def test_calls_from_any_thread_run_on_one_thread_and_nest() -> None:
    seen: list[int] = []

    def record() -> None:
        seen.append(on_compute_thread(threading.get_ident))

    threads = [threading.Thread(target=record) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record()
    assert len(seen) == 5 and len(set(seen)) == 1
    assert seen[0] != threading.get_ident()
    # A call made on the compute thread runs at once instead of waiting for itself.
    assert on_compute_thread(lambda: on_compute_thread(threading.get_ident)) == seen[0]


def test_errors_come_back_to_the_caller() -> None:
    def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        on_compute_thread(fail)


def test_decodes_of_two_contexts_from_two_threads_run_on_the_compute_thread(
    tiny_llama_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = LlamaModel.load(tiny_llama_path)
    where: list[str] = []
    real = compute._executor.submit

    def spy(fn, *args):  # type: ignore[no-untyped-def]
        where.append(threading.current_thread().name)
        return real(fn, *args)

    monkeypatch.setattr(compute._executor, "submit", spy)
    decoded: list[int] = []
    refused: list[str] = []

    def decode_once() -> None:
        ctx = LlamaContext(model, ContextParams(n_ctx=64, n_threads=1))
        batch = Batch(8, 1)
        try:
            batch.add_sequence([1, 2, 3], 0, 0, output_last=True)
            ctx.decode(batch)
            decoded.append(int(ctx.logits(2).argmax()))
            batch.clear()
            batch.add_sequence([4], 7, 0, output_last=True)  # a gap: llama.cpp refuses it
            try:
                ctx.decode(batch)
            except DecodeError as exc:  # llama.cpp's reason, logged on the compute thread
                refused.append(str(exc))
        finally:
            batch.close()
            ctx.close()

    try:
        threads = [threading.Thread(target=decode_once, name=f"caller-{i}") for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        model.close()
    assert len(decoded) == 2 and decoded[0] == decoded[1]
    assert len(refused) == 2 and all("positions" in why for why in refused)
    assert sorted(set(where)) == ["caller-0", "caller-1"]  # both handed their decodes over
