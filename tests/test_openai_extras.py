"""OpenAI API gaps closed with the neutral core, on tiny random-weight models: routes
without the /v1 prefix, n > 1 choices, system_fingerprint, the Responses token count,
model aliases in /v1/models, and errors in OpenAI's shape outside any route."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from support.live_server import LiveServer, live_server

USER: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def srv(tiny_llama_path: Path) -> Iterator[LiveServer]:
    defaults = {"n_ctx": 512, "n_seq_max": 4, "n_threads": 1}
    aliases = {"gpt-4o-mini": "tiny", "gpt-*": "tiny"}
    with live_server({"tiny": tiny_llama_path}, load_defaults=defaults, aliases=aliases) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv: LiveServer) -> openai.OpenAI:
    return srv.openai()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", {"model": "tiny", "messages": USER, "max_tokens": 3}),
        ("/completions", {"model": "tiny", "prompt": "x", "max_tokens": 3}),
        ("/responses", {"model": "tiny", "input": "hello", "max_output_tokens": 3}),
    ],
)
def test_routes_answer_without_the_v1_prefix(srv: LiveServer, path: str, body: Any) -> None:
    with srv.http() as http:
        bare = http.post(path, json=body)
        prefixed = http.post(f"/v1{path}", json=body)
    assert bare.status_code == prefixed.status_code == 200, bare.text
    assert bare.json()["object"] == prefixed.json()["object"]
    with srv.http() as http:
        assert http.get("/models").json()["data"] == http.get("/v1/models").json()["data"]


def test_a_bare_base_url_client_works(srv: LiveServer) -> None:
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
    resp = client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    assert resp.choices[0].message.role == "assistant"


def test_n_choices_run_in_parallel(client: openai.OpenAI) -> None:
    sampled: Any = {"seed": 5, "temperature": 1.0, "extra_body": {"ignore_eos": True}}
    resp = client.chat.completions.create(model="tiny", messages=USER, max_tokens=6, n=3, **sampled)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    single = client.chat.completions.create(model="tiny", messages=USER, max_tokens=6, **sampled)
    assert resp.usage is not None and single.usage is not None
    # The prompt counts once; every choice's tokens count.
    assert resp.usage.prompt_tokens == single.usage.prompt_tokens
    assert resp.usage.completion_tokens == 3 * 6
    # Choice 0 is the request's own seed: the same answer as n=1 with that seed.
    assert resp.choices[0].message.content == single.choices[0].message.content


def test_n_choices_stream_with_their_indexes(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=USER,
            max_tokens=4,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1


def test_completions_n_times_prompts(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="tiny", prompt=["a", "b"], n=2, max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert resp.usage is not None and resp.usage.completion_tokens == 12


def test_system_fingerprint_everywhere(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    assert chat.system_fingerprint and chat.system_fingerprint.startswith("fp_kronk-")
    assert "llama.cpp-" in chat.system_fingerprint
    chunks = list(
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=2, stream=True)
    )
    assert {c.system_fingerprint for c in chunks} == {chat.system_fingerprint}
    text = client.completions.create(model="tiny", prompt="x", max_tokens=2)
    assert text.system_fingerprint == chat.system_fingerprint


def test_responses_input_tokens_count_the_prompt(srv: LiveServer) -> None:
    body: Any = {
        "model": "tiny",
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": "hello"}],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    }
    with srv.http() as http:
        counted = http.post("/v1/responses/input_tokens", json=body)
        answered = http.post("/v1/responses", json={**body, "max_output_tokens": 2})
    assert counted.status_code == 200, counted.text
    assert counted.json()["object"] == "response.input_tokens"
    assert counted.json()["input_tokens"] == answered.json()["usage"]["input_tokens"]


def test_aliases_resolve_and_are_listed(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gpt-4.1", messages=USER, max_tokens=2)
    assert resp.model == "tiny"  # the glob routed it
    ids = {m.id: m for m in client.models.list().data}
    assert "tiny" in ids and "gpt-4o-mini" in ids
    assert getattr(ids["gpt-4o-mini"], "alias_of", None) == "tiny"
    assert "gpt-*" not in ids  # a glob is no model name


def test_errors_outside_routes_are_openai_shaped(srv: LiveServer) -> None:
    with srv.http() as http:
        missing = http.get("/v1/nothing-here")
        wrong = http.get("/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and "error" in wrong.json()
