"""An API fuzz: schemathesis generates requests from the server's own OpenAPI schema
(`/openapi.json`, fetched from a live server), valid and invalid ones, for every route.

Every answer must be below 500, and every 4xx must be in the shape of the protocol
whose path it is: OpenAI's `{"error": {"message", "type", ...}}`, Anthropic's
`{"type": "error", "error": {"type", "message"}}`, Ollama's `{"error": "..."}`.

The server runs on a tiny generated model (milliseconds a request) in a throwaway home,
so the routes that write to the home (delete, copy, import, keys) are fuzzed too. Left
out: pulls (they reach the network) and the streams of server events that never end
on their own (`/manage/running/events`). Half the generated bodies name the served
model, so requests reach the engine rather than stopping at "model not found", and
every token limit is capped so a request stays short.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, GenerationMode
from starlette.routing import BaseRoute

from kronk.models.resolver import StaticResolver
from kronk.pool import ModelPool
from kronk.server.app import create_app
from kronk.server.settings import ServerSettings
from support.live_server import LiveServer, live_server

MODEL = "tiny"
EMBEDDER = "tiny-embed"
MAX_EXAMPLES = 12  # per operation and generation mode: a few minutes on two cores
TOKEN_CAP = 8
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "num_predict")

# Not fuzzed, and why.
EXCLUDED: dict[tuple[str, str], str] = {
    ("POST", "/api/pull"): "downloads from the network",
    ("POST", "/manage/pull"): "downloads from the network",
    ("GET", "/manage/running/events"): "a stream of server events that never ends",
}


@pytest.fixture(scope="module")
def server(
    tiny_llama_path: Path, tiny_bert_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("fuzz-home")
    defaults = {"n_ctx": 256, "n_seq_max": 4, "n_threads": 1}
    with live_server(
        {MODEL: tiny_llama_path, EMBEDDER: tiny_bert_path},
        load_defaults=defaults,
        home=home,
        preload=MODEL,
    ) as srv:
        yield srv


def flatmap_body(_ctx: Any, body: Any) -> st.SearchStrategy[Any]:
    """Half the bodies name a served model; every token limit is capped."""
    if not isinstance(body, dict):
        return st.just(body)
    capped = dict(body)
    for key in TOKEN_LIMITS:
        if isinstance(capped.get(key), int) and not isinstance(capped[key], bool):
            capped[key] = min(capped[key], TOKEN_CAP)
    options = capped.get("options")
    if isinstance(options, dict) and isinstance(options.get("num_predict"), int):
        capped["options"] = {**options, "num_predict": min(options["num_predict"], TOKEN_CAP)}
    if "model" not in capped:
        return st.just(capped)
    return st.sampled_from([capped, {**capped, "model": MODEL}, {**capped, "model": EMBEDDER}])


def app_schema() -> dict[str, Any]:
    """The document `/openapi.json` serves (the models served do not change it; the test
    below checks the live server's against it)."""
    app = create_app(ModelPool(StaticResolver({})), settings=ServerSettings(home=Path("/nowhere")))
    return app.openapi()


def fuzz_schema() -> BaseSchema:
    loaded = schemathesis.openapi.from_dict(app_schema())
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES
    )
    loaded.hook(flatmap_body)
    for method, path in EXCLUDED:
        loaded = loaded.exclude(method=method, path=path)
    return loaded


schema = fuzz_schema()


def protocol_of(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/api/"):
        return "ollama"
    return "openai"


def shape_problem(path: str, body: Any) -> str | None:
    """Why `body` is not an error in the protocol's shape (None when it is)."""
    protocol = protocol_of(path)
    if protocol == "ollama":
        ok = isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
        return None if ok else "Ollama errors are {'error': '<message>'}"
    if protocol == "anthropic":
        error = body.get("error") if isinstance(body, dict) else None
        ok = (
            body.get("type") == "error"
            and isinstance(error, dict)
            and isinstance(error.get("type"), str)
            and isinstance(error.get("message"), str)
        )
        return None if ok else "Anthropic errors are {'type': 'error', 'error': {type, message}}"
    error = body.get("error") if isinstance(body, dict) else None
    ok = (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
        and {"param", "code"} <= error.keys()
    )
    return None if ok else "OpenAI errors are {'error': {message, type, param, code}}"


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_every_route_answers_below_500_in_its_protocols_shape(
    case: Case, server: LiveServer
) -> None:
    response = case.call(base_url=server.base_url, timeout=60)
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    if 400 <= response.status_code < 500:
        try:
            body = response.json()
        except json.JSONDecodeError:
            pytest.fail(f"an error that is not JSON: {where}")
        problem = shape_problem(case.path, body)
        assert problem is None, f"{problem}: {where}"


def all_routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, through included routers (FastAPI keeps those as one entry each)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from all_routes(included.routes) if included is not None else (route,)


def test_every_route_is_in_the_schema(server: LiveServer) -> None:
    """What the app serves is what /openapi.json describes (so the fuzz reaches it), but
    for what is not a JSON API: Prometheus text, MCP's own protocol, the UI, the docs."""
    not_json_apis = {"/metrics", "/mcp", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
    with httpx.Client(base_url=server.base_url) as http:
        described = http.get("/openapi.json").json()
    assert described == app_schema()  # the document fuzzed is the one served
    served: set[tuple[str, str]] = set()
    for route in all_routes(server.app.routes):
        path = re.sub(r":\w+}", "}", getattr(route, "path", ""))  # {id:path} -> {id}
        for method in getattr(route, "methods", None) or ():
            if path and method != "HEAD" and path not in not_json_apis:
                served.add((method.lower(), path))
    assert {
        ("post", "/v1/messages"),
        ("post", "/chat/completions"),
        ("post", "/api/chat"),
    } <= served
    listed = {(m, p) for p, operations in described["paths"].items() for m in operations}
    assert served - listed == set()
    # Invalid input is answered with a 400 in the protocol's shape, and said so.
    for path, operations in described["paths"].items():
        for operation in operations.values():
            assert "422" not in operation["responses"], path
            if "400" in operation["responses"]:
                example = operation["responses"]["400"]["content"]["application/json"]
                assert shape_problem(path, example["example"]) is None, path


# -- what the fuzz found, pinned -------------------------------------------------------------


def test_a_huge_n_is_refused_at_once(server: LiveServer) -> None:
    """n = 3003401 stalled the server building a request per choice; now a 400."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 3003401}
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
