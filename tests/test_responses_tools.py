"""Server tools in the OpenAI Responses API, with the official `openai` client against a
live server and the real default model: `mcp` (configured and by `server_url`),
`web_search` against the SearXNG fixture and `web_fetch` against the local site. The
first turn's call is forced (tool_choice, by grammar); the model answers freely after.
Every item and event is also validated strictly with the client's own types."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import (
    Response,
    ResponseFunctionWebSearch,
    ResponseOutputItem,
    ResponseOutputMessage,
    ResponseStreamEvent,
)
from openai.types.responses.response_output_item import McpCall, McpListTools
from pydantic import TypeAdapter

from kronk.agent.config import ToolsConfig, parse_mcp_servers
from kronk.agent.registry import ToolRegistry
from kronk.errors import InvalidRequestError
from support.live_server import LiveServer, live_server
from support.mcp_fixture import mcp_http_server, vault_code
from support.web_fixture import Site, web_site

FIXTURE = Path(__file__).resolve().parent / "support" / "mcp_fixture.py"
MODEL = "qwen"
FX = {"fx": {"command": sys.executable, "args": [str(FIXTURE), "stdio"]}}
# Strict validators (the client only constructs what it receives); Any, as the unions
# are narrowed by the assertions on `type`.
ITEM: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)
EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with web_site() as s:
        yield s


@pytest.fixture(scope="module")
def remote_url() -> Iterator[str]:
    with mcp_http_server() as url:
        yield url


@pytest.fixture(scope="module")
def server(default_model_path: Path, site: Site) -> Iterator[LiveServer]:
    settings = {
        "allow_addresses": ["127.0.0.1"],
        "max_rounds": 1,
        "search_url": site.url(""),
        "allow_remote_mcp": True,
    }
    extra = {"tool_settings": settings, "mcp_servers": FX}
    with live_server(
        {MODEL: default_model_path},
        load_defaults={"n_ctx": 2048, "n_seq_max": 1},
        settings_extra=extra,
    ) as srv:
        yield srv


def _responses(srv: LiveServer) -> Any:
    """The client's `responses` resource (Any: the tests send kronk's own tool types,
    which the client's parameter types do not list)."""
    return srv.openai().responses


def _mcp(label: str = "fx", **fields: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": label, "require_approval": "never", **fields}


def _create(srv: LiveServer, prompt: str, tools: list[Any], choice: Any) -> Response:
    rsp: Response = _responses(srv).create(
        model=MODEL, input=prompt, tools=tools, tool_choice=choice,
        temperature=0, max_output_tokens=64,
    )  # fmt: skip
    return rsp


def _strict(response: Response, whole: bool = True) -> list[Any]:
    """The output items of the response, validated strictly (not only constructed) by the
    client's types; with `whole`, the response too (not where it repeats kronk's own
    tool types, as web_fetch)."""
    if whole:
        Response.model_validate(response.model_dump(mode="json"))
    return [ITEM.validate_python(item.model_dump(mode="json")) for item in response.output]


def _answered(items: list[Any]) -> None:
    """The model answered after the tools: the last item is a message with text."""
    assert isinstance(items[-1], ResponseOutputMessage)
    assert items[-1].content[0].type == "output_text" and items[-1].content[0].text


def test_mcp_call_shows_the_list_and_the_call(server: LiveServer) -> None:
    tools = [_mcp(allowed_tools=["vault_lookup"])]
    choice = {"type": "mcp", "server_label": "fx", "name": "vault_lookup"}
    rsp = _create(server, "What is the vault code for ada?", tools, choice)
    items = _strict(rsp)
    listed, call = items[0], items[1]
    assert isinstance(listed, McpListTools) and listed.server_label == "fx"
    assert [t.name for t in listed.tools] == ["vault_lookup"]
    schema: Any = listed.tools[0].input_schema
    assert schema["required"] == ["name"]
    assert isinstance(call, McpCall) and call.server_label == "fx"
    assert call.name == "vault_lookup" and call.status == "completed" and call.error is None
    assert call.output == vault_code(json.loads(call.arguments)["name"])
    _answered(items)
    assert rsp.status in ("completed", "incomplete") and rsp.usage is not None
    assert rsp.tools[0].type == "mcp"


def test_mcp_call_stream_events(server: LiveServer) -> None:
    tools = [_mcp(allowed_tools=["vault_lookup"])]
    choice = {"type": "mcp", "server_label": "fx", "name": "vault_lookup"}
    with _responses(server).create(
        model=MODEL, input="What is the vault code for grace?", tools=tools,
        tool_choice=choice, temperature=0, max_output_tokens=64, stream=True,
    ) as stream:  # fmt: skip
        events = [EVENT.validate_python(e.model_dump(mode="json")) for e in stream]
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:6] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
        "response.output_item.done",
    ]  # fmt: skip
    start = kinds.index("response.mcp_call.in_progress") - 1
    assert kinds[start : start + 6] == [
        "response.output_item.added", "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
        "response.mcp_call.completed", "response.output_item.done",
    ]  # fmt: skip
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    output = final.response.output
    for event in events:  # every index and id points at the final response's item
        if event.type in ("response.output_item.added", "response.output_item.done"):
            assert output[event.output_index].id == event.item.id
        elif hasattr(event, "item_id") and hasattr(event, "output_index"):
            assert output[event.output_index].id == event.item_id
    added = events[start]
    assert added.item.type == "mcp_call" and added.item.arguments == ""
    done = events[start + 5].item
    assert done.type == "mcp_call" and done.output == vault_code(json.loads(done.arguments)["name"])
    assert events[start + 2].delta == done.arguments == events[start + 3].arguments


def test_mcp_error_is_shown_and_the_model_answers(server: LiveServer) -> None:
    choice = {"type": "mcp", "server_label": "fx", "name": "fail"}
    rsp = _create(server, "Run the fail tool.", [_mcp()], choice)
    items = _strict(rsp)
    listed = items[0]
    assert isinstance(listed, McpListTools)
    assert {"vault_lookup", "fail", "crash", "hang", "flood"} <= {t.name for t in listed.tools}
    (call,) = [i for i in items if isinstance(i, McpCall)]
    assert call.status == "failed" and call.output is None and call.error is not None
    assert call.error.type == "mcp_tool_execution_error"
    content: Any = call.error.content
    assert "failed on purpose" in content[0]["text"]
    _answered(items)


def test_remote_mcp_server_by_url(server: LiveServer, remote_url: str) -> None:
    tools = [
        _mcp("rx", server_url=remote_url, allowed_tools=["vault_lookup"],
             headers={"X-Kronk-Test": "1"}, authorization="secret-token"),
    ]  # fmt: skip
    choice = {"type": "mcp", "server_label": "rx", "name": "vault_lookup"}
    rsp = _create(server, "What is the vault code for linus?", tools, choice)
    items = _strict(rsp)
    assert isinstance(items[0], McpListTools) and items[0].server_label == "rx"
    (call,) = [i for i in items if isinstance(i, McpCall)]
    assert call.server_label == "rx" and call.status == "completed"
    assert call.output == vault_code(json.loads(call.arguments)["name"])
    echoed = rsp.tools[0]  # credentials are not repeated
    assert echoed.type == "mcp" and echoed.server_url == remote_url
    assert echoed.authorization is None and echoed.headers is None


def test_web_search_call(server: LiveServer, site: Site) -> None:
    with _responses(server).create(
        model=MODEL, input="Search the web for orchid growing.",
        tools=[{"type": "web_search"}], tool_choice={"type": "web_search_preview"},
        temperature=0, max_output_tokens=64, stream=True,
    ) as stream:  # fmt: skip
        events = [EVENT.validate_python(e.model_dump(mode="json")) for e in stream]
    kinds = [e.type for e in events]
    start = kinds.index("response.web_search_call.in_progress") - 1
    assert kinds[start : start + 5] == [
        "response.output_item.added", "response.web_search_call.in_progress",
        "response.web_search_call.searching", "response.web_search_call.completed",
        "response.output_item.done",
    ]  # fmt: skip
    call = events[start + 4].item
    assert isinstance(call, ResponseFunctionWebSearch) and call.status == "completed"
    assert call.action.type == "search" and call.action.query == site.queries[-1]
    assert [s.url for s in call.action.sources or ()] == [site.url(f"/r{i}") for i in (1, 2, 3)]


def test_web_fetch_call_and_a_refused_fetch(server: LiveServer, site: Site) -> None:
    url = site.url("/notes.txt")
    forced = {"type": "function", "name": "web_fetch"}  # or kronk's {"type": "web_fetch"}
    rsp = _create(server, f"Fetch {url} and quote it.", [{"type": "web_fetch"}], forced)
    (call,) = [i for i in _strict(rsp, False) if isinstance(i, ResponseFunctionWebSearch)]
    assert call.status == "completed" and call.action.type == "open_page"
    assert call.action.url == url and site.paths[-1] == "/notes.txt"
    refused = _create(
        server, "Fetch http://10.0.0.1/secret now.", [{"type": "web_fetch"}], {"type": "web_fetch"}
    )
    (call,) = [i for i in _strict(refused, False) if isinstance(i, ResponseFunctionWebSearch)]
    assert call.status == "failed" and call.action.type == "open_page"
    assert "private" in (call.model_extra or {})["error"]  # kronk's extension: why


@pytest.mark.parametrize(
    ("url", "why"),
    [("http://10.0.0.1/mcp", "private"), ("http://169.254.169.254/mcp", "metadata")],
)
def test_remote_mcp_to_a_private_address_is_refused(server: LiveServer, url: str, why: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _create(server, "hi", [_mcp("rx", server_url=url)], "auto")
    error = caught.value.body
    assert isinstance(error, dict) and why in error["message"] and error["param"] == "tools"


@pytest.fixture(scope="module")
def plain(tiny_llama_path: Path) -> Iterator[LiveServer]:
    """Default tool settings (no remote MCP); the tools are refused before any model
    is loaded, so the tiny model suffices."""
    with live_server(
        {"tiny": tiny_llama_path}, settings_extra={"mcp_servers": FX}
    ) as srv:  # fmt: skip
        yield srv


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (_mcp(require_approval="always"), "require_approval must be 'never'"),
        (_mcp(require_approval={"always": {"tool_names": ["fail"]}}), "never"),
        (_mcp("nope"), "unknown MCP server 'nope'"),
        (_mcp(server_url="http://127.0.0.1:9/mcp", server_label="rx"), "allow_remote_mcp"),
        (_mcp(allowed_tools=["gone"]), "no tool 'gone'"),
        (_mcp(connector_id="connector_gmail"), "connectors"),
        (_mcp(authorization="t"), "server_url"),
        ({"type": "web_search", "filters": {"allowed_domains": ["a.org"]}}, "filters"),
        ({"type": "file_search", "vector_store_ids": ["v"]}, "'file_search' are not supported"),
    ],
)
def test_bad_server_tools_are_400s(plain: LiveServer, tool: dict[str, Any], message: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _responses(plain).create(model="tiny", input="hi", tools=[tool])
    assert caught.value.status_code == 400
    error = caught.value.body
    assert isinstance(error, dict) and message in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_a_label_twice_is_a_400(plain: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _responses(plain).create(model="tiny", input="hi", tools=[_mcp(), _mcp()])
    assert "appears twice" in str(caught.value.body)


def test_remote_urls_the_settings_do_not_allow_are_refused() -> None:
    prefixes = ("https://mcp.example.org/",)
    config = ToolsConfig(
        allow_remote_mcp=True, remote_mcp_urls=prefixes, mcp_servers=parse_mcp_servers(FX)
    )
    cases = [
        ("rx", "https://elsewhere.example.org/mcp", "remote_mcp_urls"),
        ("fx", "https://mcp.example.org/mcp", "configured server"),
        ("rx", "file:///etc/passwd", "must be http"),
        ("a__b", "https://mcp.example.org/mcp", "bad MCP server label"),
    ]

    async def run() -> list[str]:
        registry = ToolRegistry(config)
        errors = []
        for label, url, _ in cases:
            with pytest.raises(InvalidRequestError) as caught:
                await registry.remote_tools(label, url)
            errors.append(str(caught.value))
        await registry.aclose()
        return errors

    for (_, _, why), error in zip(cases, asyncio.run(run()), strict=True):
        assert why in error


def test_server_tool_items_sent_back_as_input(server: LiveServer) -> None:
    """Clients (the Agents SDK) send a response's output items back as input: the MCP
    call and its output reach the prompt; the list and web items are taken and left out."""
    code = vault_code("ada")
    call = {
        "type": "mcp_call", "id": "mcp_1", "server_label": "fx", "name": "vault_lookup",
        "arguments": '{"name": "ada"}', "output": code, "status": "completed",
    }  # fmt: skip
    listed = {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "fx", "tools": []}
    web = {"type": "web_search_call", "id": "ws_1", "status": "completed",
           "action": {"type": "search", "query": "x"}}  # fmt: skip
    ask = {"role": "user", "content": "And the code again?"}
    with server.http() as http:

        def count(items: list[dict[str, Any]]) -> int:
            rsp = http.post("/v1/responses/input_tokens", json={"model": MODEL, "input": items})
            assert rsp.status_code == 200, rsp.text
            tokens: int = rsp.json()["input_tokens"]
            return tokens

        first = {"role": "user", "content": "What is the vault code for ada?"}
        bare = count([first, ask])
        tools = [_mcp(allowed_tools=["vault_lookup"])]
        rsp = http.post("/v1/responses/input_tokens",
                        json={"model": MODEL, "input": [first, ask], "tools": tools})  # fmt: skip
        assert rsp.json()["input_tokens"] > bare + 20  # the MCP tool's schema is counted
        assert count([first, listed, web, ask]) == bare
        with_call = count([first, listed, call, web, ask])
        assert with_call > bare + len(code) // 4  # the call and its output are in the prompt
        bad = http.post("/v1/responses", json={
            "model": MODEL, "input": [first, {"type": "mcp_call", "name": "x"}],
        })  # fmt: skip
    assert bad.status_code == 400 and "mcp_call needs" in bad.json()["error"]["message"]


def test_server_wide_tools_are_not_added_to_responses_or_anthropic(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    """`--tools` is for the APIs whose clients cannot name server tools (Chat Completions,
    Ollama); Responses and Messages requests get only what they name. Seen through the
    `tools` grant, which a request needs exactly when it gets server tools."""
    from kronk.server.security.keys import KeyStore
    from kronk.server.security.tokens import create_token, parse_endpoints

    store = KeyStore(tmp_path / "keys")
    store.create()
    token = create_token(store, parse_endpoints("chat,responses"), duration_s=600)
    headers = {"authorization": f"Bearer {token}"}
    hi = [{"role": "user", "content": "hi"}]
    with live_server(
        {"tiny": tiny_llama_path},
        load_defaults={"n_ctx": 256},
        home=tmp_path,
        auth="all",
        settings_extra={"tools": ("web_fetch",)},
    ) as srv:

        def post(path: str, body: dict[str, Any]) -> int:
            rsp = httpx.post(srv.base_url + path, json=body, headers=headers, timeout=120)
            return rsp.status_code

        chat = {"model": "tiny", "max_tokens": 1, "messages": hi}
        assert post("/v1/chat/completions", chat) == 403  # offered: needs the grant
        responses = {"model": "tiny", "input": "hi", "max_output_tokens": 1}
        assert post("/v1/responses", responses) == 200
        assert post("/v1/messages", chat) == 200
