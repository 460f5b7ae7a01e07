"""The catalog's capabilities are enforced: a model is not asked for what it can't do."""

from __future__ import annotations

from pathlib import Path

from kronk.models.resolver import ResolvedModel
from support.live_server import live_server


def test_catalog_capabilities_are_enforced(tiny_llama_path: Path, tiny_bert_path: Path) -> None:
    models = {
        "chatty": ResolvedModel("chatty", tiny_llama_path, capabilities=frozenset({"chat"})),
        "embedder": ResolvedModel(
            "embedder", tiny_bert_path, capabilities=frozenset({"embedding"})
        ),
    }
    with live_server(models, load_defaults={"n_ctx": 128, "n_threads": 1}) as srv:
        http = srv.http()
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        refused = http.post("/v1/chat/completions", json={"model": "embedder", **chat})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "model"
        assert "does not support" in refused.json()["error"]["message"]
        assert srv.pool.loaded() == []  # refused before loading anything
        refused = http.post("/v1/embeddings", json={"model": "chatty", "input": "hello"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
        assert (
            http.post("/v1/chat/completions", json={"model": "chatty", **chat}).status_code == 200
        )
        assert (
            http.post("/v1/embeddings", json={"model": "embedder", "input": "x"}).status_code == 200
        )
