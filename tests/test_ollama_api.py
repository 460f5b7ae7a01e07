"""The Ollama-compatible API (`/api/...`), driven over real sockets by the official
`ollama` client and, for what it cannot send, httpx.

Mechanics (shapes, streams, keep_alive, errors, model management) run on tiny
random-weight models; behaviour (answers, fill-in-the-middle, structured output, tool
calls) on the real default model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from kronk.models.resolver import ResolvedModel
from kronk.models.store import ModelStore
from support.file_server import FileServer
from support.live_server import LiveServer, live_server
from support.tiny_gguf import CHATML, THINKING_TEMPLATE

N_CTX = 256
USER = [{"role": "user", "content": "hello"}]
IGNORE = {"ignore_eos": True, "temperature": 0}
FOUR = {"num_predict": 4, **IGNORE}


@pytest.fixture(scope="module")
def srv(
    tiny_llama_path: Path, tiny_bert_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("ollama-api")
    thinking = folder / "thinking.jinja"
    thinking.write_text(THINKING_TEMPLATE)
    models: dict[str, Path | ResolvedModel] = {
        "tiny": tiny_llama_path,
        "bert": tiny_bert_path,
        "thinker": ResolvedModel(
            id="thinker", path=tiny_llama_path, load_options={"chat_template": str(thinking)}
        ),
    }
    defaults = {"n_ctx": N_CTX, "n_seq_max": 2, "n_threads": 1}
    with live_server(models, load_defaults=defaults, home=folder / "home") as s:
        yield s


@pytest.fixture(scope="module")
def client(srv: LiveServer) -> ollama.Client:
    return ollama.Client(host=srv.base_url, timeout=120)


def loaded(srv: LiveServer) -> dict[str, dict[str, Any]]:
    with srv.http() as http:
        return {m["name"]: m for m in http.get("/api/ps").json()["models"]}


def ndjson_lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


# -- chat and generate: shapes ---------------------------------------------------------------


def test_chat_reply_has_ollamas_shape_and_counts(client: ollama.Client) -> None:
    reply = client.chat(model="tiny", messages=USER, stream=False, options=FOUR)

    assert reply.model == "tiny" and reply.done is True and reply.done_reason == "length"
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count == 4 and reply.prompt_eval_count is not None
    assert reply.prompt_eval_count > 0
    assert reply.total_duration is not None and reply.eval_duration is not None
    # Nanoseconds: a whole request on the tiny model takes well under a minute and more
    # than a microsecond.
    assert 1_000 < reply.eval_duration <= reply.total_duration < 60 * 10**9
    assert reply.created_at is not None and reply.created_at.endswith("Z")


def test_chat_streams_ndjson_by_default(srv: LiveServer) -> None:
    body = {"model": "tiny", "messages": USER, "options": FOUR}  # no "stream": Ollama streams
    with srv.http() as http:
        response = http.post("/api/chat", json=body)

    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson_lines(response)
    *deltas, last = lines
    assert deltas and all(line["done"] is False for line in deltas)
    assert last["done"] is True and last["done_reason"] == "length" and last["eval_count"] == 4
    assert last["message"] == {"role": "assistant", "content": ""}
    assert "".join(line["message"]["content"] for line in deltas)


def test_generate_accepts_name_tag_and_streams_through_the_client(client: ollama.Client) -> None:
    parts = list(client.generate(model="tiny:latest", prompt="hello", options=FOUR, stream=True))

    assert parts[-1].done is True and parts[-1].eval_count == 4
    assert all(p.model == "tiny:latest" for p in parts)  # the name as the client sent it
    assert "".join(p.response or "" for p in parts)


def test_generate_raw_and_fill_in_the_middle_on_the_tiny_model(client: ollama.Client) -> None:
    raw = client.generate(model="tiny", prompt="abc", raw=True, options=FOUR)
    fim = client.generate(model="tiny", prompt="def f(", suffix="):\n", options=FOUR)

    assert raw.done and raw.eval_count == 4
    assert fim.done and fim.eval_count == 4 and fim.response


def test_format_constrains_chat_templated_and_raw_output(client: ollama.Client) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    eight = {**FOUR, "num_predict": 8}
    chat = client.chat(model="tiny", messages=USER, format=schema, options=eight)
    templated = client.generate(model="tiny", prompt="hi", format="json", options=eight)
    raw = client.generate(model="tiny", prompt="hi", raw=True, format=schema, options=eight)

    def compact(text: str | None) -> str:
        return "".join((text or "").split())

    # Eight tokens of a random model: not a whole object, but the grammar starts one.
    assert compact(chat.message.content).startswith('{"a"')
    assert compact(templated.response).startswith("{")
    assert compact(raw.response).startswith('{"a"')


def test_think_splits_reasoning_into_the_thinking_field(client: ollama.Client) -> None:
    thinking = client.chat(model="thinker", messages=USER, think=True, options=FOUR)
    plain = client.chat(model="thinker", messages=USER, think=False, options=FOUR)

    # The template opens a think block the random model never closes: all of it is thinking.
    assert thinking.message.thinking and not thinking.message.content
    assert plain.message.content and not plain.message.thinking
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="tiny", messages=USER, think=True, options=FOUR)
    assert info.value.status_code == 400 and "does not support thinking" in info.value.error


def test_huge_num_predict_is_capped_by_the_context(client: ollama.Client) -> None:
    reply = client.generate(model="tiny", prompt="hi", options={"num_predict": 10**30, **IGNORE})

    assert reply.done_reason == "length"
    assert reply.eval_count is not None and reply.prompt_eval_count is not None
    assert reply.prompt_eval_count + reply.eval_count <= N_CTX


# -- keep_alive -------------------------------------------------------------------------------


def test_keep_alive_sets_the_models_idle_time(srv: LiveServer, client: ollama.Client) -> None:
    client.chat(model="tiny", messages=USER, options=FOUR, keep_alive="10m")
    ten_minutes = loaded(srv)["tiny"]
    client.chat(model="tiny", messages=USER, options=FOUR, keep_alive=-1)
    forever = loaded(srv)["tiny"]
    client.chat(model="tiny", messages=USER, options=FOUR, keep_alive=90)
    seconds = loaded(srv)["tiny"]

    assert ten_minutes["expires_at"] - ten_minutes["last_used"] == pytest.approx(600)
    assert forever["expires_at"] is None
    assert seconds["expires_at"] - seconds["last_used"] == pytest.approx(90)


def test_keep_alive_zero_unloads_after_the_request(srv: LiveServer, client: ollama.Client) -> None:
    client.chat(model="tiny", messages=USER, options=FOUR)
    assert "tiny" in loaded(srv)

    reply = client.chat(model="tiny", messages=USER, options=FOUR, keep_alive=0)

    assert reply.done and "tiny" not in loaded(srv)


def test_an_empty_request_loads_and_keep_alive_zero_unloads(
    srv: LiveServer, client: ollama.Client
) -> None:
    client.generate(model="thinker", keep_alive=0)  # make sure it starts unloaded
    assert "thinker" not in loaded(srv)

    load = client.generate(model="thinker")
    present = "thinker" in loaded(srv)
    unload = client.chat(model="thinker", messages=[], keep_alive=0)

    assert (load.done, load.done_reason, present) == (True, "load", True)
    assert (unload.done, unload.done_reason) == (True, "unload")
    assert "thinker" not in loaded(srv)


# -- embeddings -------------------------------------------------------------------------------


def test_embed_returns_normalised_vectors(client: ollama.Client) -> None:
    result = client.embed(model="bert", input=["the cat sat", "a dog ran"])
    short = client.embed(model="bert", input="the cat sat", dimensions=8)
    legacy = client.embeddings(model="bert", prompt="the cat sat")

    assert len(result.embeddings) == 2 and result.prompt_eval_count
    first = result.embeddings[0]
    assert math.isclose(sum(x * x for x in first), 1.0, rel_tol=1e-4)
    (vector,) = short.embeddings
    assert len(vector) == 8 and math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)
    # The older endpoint does not normalise (as Ollama's): same direction, other length.
    norm = math.sqrt(sum(x * x for x in legacy.embedding))
    assert not math.isclose(norm, 1.0, rel_tol=1e-3)
    assert [x / norm for x in legacy.embedding] == pytest.approx(first, abs=1e-4)


def test_embed_truncates_long_input_unless_told_not_to(srv: LiveServer) -> None:
    long_text = "word " * 2000  # far beyond the 256-token context
    with srv.http() as http:
        cut = http.post("/api/embed", json={"model": "bert", "input": long_text})
        refused = http.post(
            "/api/embed", json={"model": "bert", "input": long_text, "truncate": False}
        )

    assert cut.status_code == 200 and len(cut.json()["embeddings"]) == 1
    assert cut.json()["prompt_eval_count"] <= N_CTX
    assert refused.status_code == 400 and "truncate" in refused.json()["error"]


# -- models ------------------------------------------------------------------------------------


def test_tags_lists_models_with_details(
    client: ollama.Client, tiny_llama_path: Path, tiny_bert_path: Path
) -> None:
    models = {m.model: m for m in client.list().models}

    assert set(models) == {"tiny", "bert", "thinker"}
    tiny = models["tiny"]
    assert tiny.size == tiny_llama_path.stat().st_size and tiny.digest
    assert tiny.details is not None and tiny.details.family == "llama"
    assert tiny.details.format == "gguf" and tiny.details.quantization_level
    bert = models["bert"].details
    assert bert is not None and bert.family == "bert"


def test_show_describes_a_model_without_loading_it(srv: LiveServer, client: ollama.Client) -> None:
    client.generate(model="bert", keep_alive=0)
    shown = client.show("tiny")
    bert = client.show("bert:latest")
    thinker = client.show("thinker")

    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 512
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.capabilities == ["completion", "insert"]
    assert shown.template == CHATML
    assert shown.details is not None and shown.details.family == "llama"
    assert bert.capabilities == ["embedding"]
    assert thinker.template == THINKING_TEMPLATE and "thinking" in (thinker.capabilities or [])
    assert "bert" not in loaded(srv)
    with pytest.raises(ollama.ResponseError) as info:
        client.show("no-such-model")
    assert info.value.status_code == 404


def test_ps_answers_ollamas_shape_with_kronks_fields(
    srv: LiveServer, client: ollama.Client
) -> None:
    client.chat(model="tiny", messages=USER, options=FOUR)

    (model,) = [m for m in client.ps().models if m.model == "tiny"]
    raw = loaded(srv)["tiny"]

    # size: the memory estimate the pool loaded it by (the prompt-cache budget included).
    assert model.name == "tiny" and model.size == raw["memory_estimate"]["total"]
    assert model.size > raw["memory_bytes"] + 2**30 - 1
    assert model.details is not None and model.details.family == "llama"
    assert model.context_length == N_CTX and model.expires_at is not None
    assert raw["slots"] == 2 and raw["status"] == "ready" and raw["digest"]


def test_version(srv: LiveServer) -> None:
    with srv.http() as http:
        version = http.get("/api/version").json()["version"]
    assert [int(part) for part in version.split(".")] >= [0, 5, 0]


# -- pull and delete ---------------------------------------------------------------------------


def test_pull_streams_progress_and_delete_removes(
    srv: LiveServer, client: ollama.Client, tiny_llama_path: Path
) -> None:
    data = tiny_llama_path.read_bytes()
    with FileServer() as files:
        url = files.add("/files/pulled.gguf", data)
        progress = list(client.pull(url, stream=True))
        again = client.pull(url)  # present already: nothing fetched again
        fetched = len(files.requests_for("/files/pulled.gguf"))

    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    downloads = [p for p in progress if p.status == "pulling pulled.gguf"]
    assert downloads and downloads[-1].completed == downloads[-1].total == len(data)
    assert downloads[-1].digest == "pulled.gguf"
    assert again.status == "success" and fetched == 1
    store = ModelStore(srv.state.settings.home)
    assert [m.id for m in store.list_local()] == ["pulled"]

    assert client.delete("pulled").status == "success"
    assert store.list_local() == []
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("pulled")
    assert info.value.status_code == 404


def test_a_failed_pull_ends_with_an_error(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.pull("no-such-catalog-model", stream=True))
    with pytest.raises(ollama.ResponseError) as whole:
        client.pull("no-such-catalog-model")

    assert "no-such-catalog-model" in streamed.value.error
    assert whole.value.status_code == 404 and "no-such-catalog-model" in whole.value.error


def test_copy_adds_a_name_for_the_same_model(srv: LiveServer, client: ollama.Client) -> None:
    assert client.copy("tiny", "my-tiny:latest").status == "success"
    listed = {m.model for m in client.list().models}
    reply = client.chat(model="my-tiny:latest", messages=USER, options=FOUR)
    loaded_names = set(loaded(srv))

    assert "my-tiny" in listed and reply.done and reply.model == "my-tiny:latest"
    assert "my-tiny" not in loaded_names and "tiny" in loaded_names  # one loaded copy
    assert client.delete("my-tiny").status == "success"  # only the name goes
    assert "my-tiny" not in {m.model for m in client.list().models}
    assert client.show("tiny").details is not None
    with pytest.raises(ollama.ResponseError) as gone:
        client.chat(model="my-tiny", messages=USER, options=FOUR)
    with pytest.raises(ollama.ResponseError) as unknown:
        client.copy("no-such-model", "other")
    assert gone.value.status_code == unknown.value.status_code == 404


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/api/chat", "{not json", 400, "JSON"),
        ("/api/chat", {"model": "tiny", "messages": "hello"}, 400, "messages"),
        ("/api/chat", {"messages": USER}, 400, "model"),
        ("/api/chat", {"model": "nope", "messages": USER}, 404, "nope"),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "robot"}]}, 400, "role"),
        (
            "/api/chat",
            {"model": "tiny", "messages": USER, "options": {"temprature": 1}},
            400,
            "temprature",
        ),
        (
            "/api/chat",
            {"model": "tiny", "messages": USER, "options": {"top_p": 7}},
            400,
            "options.top_p",
        ),
        (
            "/api/chat",
            {"model": "tiny", "messages": USER, "options": {"num_predict": 0}},
            400,
            "num_predict",
        ),
        ("/api/chat", {"model": "tiny", "messages": USER, "keep_alive": "soon"}, 400, "keep_alive"),
        ("/api/chat", {"model": "tiny", "messages": USER, "format": "xml"}, 400, "format"),
        ("/api/chat", {"model": "tiny", "messages": USER, "bogus": 1}, 400, "bogus"),
        (
            "/api/chat",
            {"model": "tiny", "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
            400,
            "image",
        ),
        ("/api/generate", {"model": "tiny", "prompt": "hi", "images": ["aGk="]}, 400, "image"),
        (
            "/api/generate",
            {"model": "tiny", "prompt": "hi", "template": "{{ .Prompt }}"},
            400,
            "template",
        ),
        ("/api/generate", {"model": "tiny", "prompt": "hi", "context": [1, 2]}, 400, "context"),
        ("/api/generate", {"model": "tiny", "prompt": 5}, 400, "prompt"),
        ("/api/embed", {"model": "bert", "input": [1, 2]}, 400, "input"),
        ("/api/show", {}, 400, "model"),
        ("/api/copy", {"source": "tiny"}, 400, "destination"),
        ("/api/nope", {}, 404, "Not Found"),
    ],
)
def test_bad_input_gets_ollamas_error_shape(
    srv: LiveServer, path: str, body: Any, status: int, says: str
) -> None:
    with srv.http() as http:
        if isinstance(body, str):
            response = http.post(path, content=body, headers={"content-type": "application/json"})
        else:
            response = http.post(path, json=body)

    assert response.status_code == status, response.text
    error = response.json()
    assert list(error) == ["error"] and isinstance(error["error"], str)
    assert says.lower() in error["error"].lower()


def test_a_wrong_method_is_a_405_in_ollamas_shape(srv: LiveServer) -> None:
    with srv.http() as http:
        response = http.get("/api/chat")
    assert response.status_code == 405 and list(response.json()) == ["error"]


def test_a_prompt_too_long_is_a_400_before_any_line_is_streamed(srv: LiveServer) -> None:
    """Ollama has no 413: a prompt too long for the context is a 400, and it fails before
    the stream starts, so it gets a status rather than an error line."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi " * 400}]}
    with srv.http() as http:
        response = http.post("/api/chat", json=body)
    assert response.status_code == 400 and "error" in response.json()


# -- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(default_model_path: Path) -> Iterator[ollama.Client]:
    # batch_invariant: no repacked weights (as test_server_behaviour.py loads it).
    defaults = {"n_ctx": 2048, "n_seq_max": 1, "n_threads": 2, "batch_invariant": True}
    with live_server({"qwen": default_model_path}, load_defaults=defaults, preload="qwen") as s:
        yield ollama.Client(host=s.base_url, timeout=300)


def greedy(num_predict: int) -> dict[str, Any]:
    return {"temperature": 0, "num_predict": num_predict}


def test_real_chat_streams_an_answer(real: ollama.Client) -> None:
    question = [{"role": "user", "content": "What is the capital of France? One word."}]
    parts = list(real.chat(model="qwen", messages=question, options=greedy(8), stream=True))

    assert "Paris" in "".join(p.message.content or "" for p in parts)
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert all(not p.done for p in parts[:-1])


def test_real_generate_fills_in_the_middle(real: ollama.Client) -> None:
    reply = real.generate(
        model="qwen",
        prompt="def add(a, b):\n    return ",
        suffix="\n\nprint(add(1, 2))\n",
        options=greedy(8),
    )
    assert "a + b" in (reply.response or "") or "a+b" in (reply.response or "")


def test_real_format_json_and_schema(real: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    ask = [{"role": "user", "content": "Alice is 30 years old. Reply with her name and age."}]
    structured = real.chat(model="qwen", messages=ask, format=schema, options=greedy(32))
    plain_json = real.generate(
        model="qwen",
        prompt="Reply with a JSON object with one key, ok, set to true.",
        format="json",
        options=greedy(16),
    )

    assert json.loads(structured.message.content or "") == {"name": "Alice", "age": 30}
    assert isinstance(json.loads(plain_json.response or ""), dict)


def test_real_tool_call_and_its_result(real: ollama.Client) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city name"}},
                "required": ["city"],
            },
        },
    }
    ask = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    reply = real.chat(model="qwen", messages=ask, tools=[tool], options=greedy(40))

    (call,) = reply.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert "Paris" in call.function.arguments["city"]
    # The call and its result go back in Ollama's shapes, and the model reads the result.
    result = '{"temperature_c": 21, "sky": "sunny"}'
    follow: list[Any] = [
        *ask,
        reply.message,
        {"role": "tool", "content": result, "tool_name": "get_weather"},
    ]
    answer = real.chat(model="qwen", messages=follow, tools=[tool], options=greedy(24))
    assert "21" in (answer.message.content or "")
