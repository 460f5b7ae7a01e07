"""Anthropic's server tools (web_search_20250305, web_fetch_20250910) and MCP connector
(`mcp_servers`) on a live server with the real default model, through the official
`anthropic` client: its typed blocks, the stream's events, usage, errors. The first
turn's call is forced (tool_choice by grammar); the rest is free.

Per-request rules (max_uses, domains, max_content_tokens, error codes) are checked on
`ToolRunner` with the real registry and the loopback site, no model needed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import (
    ServerToolUseBlock,
    TextBlock,
    WebFetchBlock,
    WebFetchToolResultBlock,
    WebSearchResultBlock,
    WebSearchToolResultBlock,
)
from anthropic.types.beta import BetaMCPToolResultBlock, BetaMCPToolUseBlock

from kronk.agent.config import ToolsConfig
from kronk.agent.registry import ToolRegistry
from kronk.agent.result import ToolResult
from kronk.server.anthropic.protocol import MessagesRequest
from kronk.server.anthropic.server_tools import BuiltinRules, ToolRunner
from support.live_server import LiveServer, live_server
from support.mcp_fixture import mcp_http_server, vault_code
from support.web_fixture import Site, web_site

FIXTURE = Path(__file__).resolve().parent / "support" / "mcp_fixture.py"
MODEL = "qwen"
FETCH: Any = {"type": "web_fetch_20250910", "name": "web_fetch"}
SEARCH: Any = {"type": "web_search_20250305", "name": "web_search"}
GREEDY = {"temperature": 0}
BETA = ["mcp-client-2025-04-04"]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with web_site() as s:
        yield s


@pytest.fixture(scope="module")
def server(default_model_path: Path, site: Site) -> Iterator[LiveServer]:
    extra = {
        # Offered to Chat Completions requests; an Anthropic request gets only what it names.
        "tools": ("mcp:fx/vault_lookup",),
        "tool_settings": {
            "allow_addresses": ["127.0.0.1"],
            "search_url": site.url("/"),
            "max_rounds": 1,  # the small model would call again and again
        },
        "mcp_servers": {"fx": {"command": sys.executable, "args": [str(FIXTURE), "stdio"]}},
    }
    with live_server(
        {MODEL: default_model_path},
        load_defaults={"n_ctx": 2048, "n_seq_max": 1},
        settings_extra=extra,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LiveServer) -> anthropic.Anthropic:
    return server.anthropic(timeout=300)


def _fx(*tools: str) -> Any:
    entry: dict[str, Any] = {"type": "url", "url": "stdio:fx", "name": "fx"}
    if tools:
        entry["tool_configuration"] = {"enabled": True, "allowed_tools": list(tools)}
    return [entry]


def _ask(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_web_fetch_gives_typed_blocks_and_counts_usage(
    client: anthropic.Anthropic, site: Site
) -> None:
    url = site.url("/notes.txt")
    message = client.messages.create(
        model=MODEL, max_tokens=64, messages=_ask(f"Fetch {url} and quote it."),
        tools=[{**FETCH, "max_uses": 2}], tool_choice={"type": "tool", "name": "web_fetch"},
        extra_body=GREEDY,
    )  # fmt: skip
    call, result, *rest = message.content
    assert isinstance(call, ServerToolUseBlock) and call.name == "web_fetch"
    assert call.id.startswith("srvtoolu_") and call.input == {"url": url}
    assert isinstance(result, WebFetchToolResultBlock) and result.tool_use_id == call.id
    fetched = result.content
    assert isinstance(fetched, WebFetchBlock) and fetched.url == url and fetched.retrieved_at
    assert fetched.content.source.data == "plain notes: KELP-4471"
    assert site.paths[-1] == "/notes.txt"
    # The model went on after the result: its answer follows, and the turn ended.
    assert rest and all(isinstance(b, TextBlock) for b in rest)
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_fetch_requests == 1
    assert message.usage.server_tool_use.web_search_requests == 0
    # The answer, sent back as history with a new question, is read as the model saw it.
    history: Any = [
        *_ask(f"Fetch {url} and quote it."),
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": "Thanks."},
    ]
    again = client.messages.create(model=MODEL, max_tokens=1, messages=history, tools=[FETCH])
    assert again.usage.input_tokens + (again.usage.cache_read_input_tokens or 0) > 0


def test_web_search_streams_blocks_in_order(client: anthropic.Anthropic, site: Site) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=_ask("Search the web for orchids."),
        tools=[SEARCH], tool_choice={"type": "tool", "name": "web_search"}, extra_body=GREEDY,
    ) as stream:  # fmt: skip
        events = [e for e in stream if e.type.startswith(("content_block", "message_delta"))]
        final = stream.get_final_message()
    starts = [e for e in events if e.type == "content_block_start"]
    assert [e.index for e in starts] == list(range(len(final.content)))
    kinds = [e.content_block.type for e in starts]
    assert kinds[:2] == ["server_tool_use", "web_search_tool_result"]
    assert starts[0].content_block.input == {}  # the input comes as a delta
    deltas = [e for e in events if e.type == "content_block_delta" and e.index == 0]
    assert [d.delta.type for d in deltas] == ["input_json_delta"]
    call, result = final.content[:2]
    assert isinstance(call, ServerToolUseBlock) and call.name == "web_search"
    query = call.input["query"]
    assert isinstance(query, str) and site.queries[-1] == query
    assert isinstance(result, WebSearchToolResultBlock) and result.tool_use_id == call.id
    hits = result.content
    assert isinstance(hits, list) and all(isinstance(h, WebSearchResultBlock) for h in hits)
    assert [h.url for h in hits] == [site.url(f"/r{i}") for i in (1, 2, 3)]
    assert hits[0].encrypted_content == f"SNIPPET-1-ORCHID about {query}"
    assert hits[0].title == f"Result 1 for {query}"
    # The result came whole at its start; every block was closed in turn.
    block = starts[1].content_block
    assert isinstance(block, WebSearchToolResultBlock) and block.content == result.content
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert stops == list(range(len(final.content)))
    assert final.usage.server_tool_use is not None
    assert final.usage.server_tool_use.web_search_requests == 1
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_mcp_connector_runs_a_configured_server(client: anthropic.Anthropic) -> None:
    message = client.beta.messages.create(
        model=MODEL, max_tokens=64, messages=_ask("What is the vault code for ada?"),
        mcp_servers=_fx("vault_lookup"), tool_choice={"type": "tool", "name": "vault_lookup"},
        betas=BETA, extra_body=GREEDY,
    )  # fmt: skip
    call, result = message.content[:2]
    assert isinstance(call, BetaMCPToolUseBlock) and call.id.startswith("mcptoolu_")
    assert call.name == "vault_lookup" and call.server_name == "fx"
    assert isinstance(result, BetaMCPToolResultBlock) and result.tool_use_id == call.id
    assert result.is_error is False
    name = call.input["name"]
    assert isinstance(name, str) and isinstance(result.content, list)
    assert result.content[0].text == vault_code(name)
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.server_tool_use is None  # MCP calls are not web requests


@pytest.mark.parametrize(("tool", "says"), [("fail", "failed on purpose"), ("crash", "")])
def test_a_failing_mcp_tool_is_an_error_result_and_the_model_answers(
    client: anthropic.Anthropic, tool: str, says: str
) -> None:
    # Without the beta header: the connector works either way. `crash` ends the stdio
    # server's process; the next request that needs it starts it again.
    message = client.beta.messages.create(
        model=MODEL, max_tokens=64, messages=_ask(f"Call the {tool} tool."),
        mcp_servers=_fx(tool), tool_choice={"type": "tool", "name": tool}, extra_body=GREEDY,
    )  # fmt: skip
    call, result, *rest = message.content
    assert isinstance(call, BetaMCPToolUseBlock) and call.name == tool
    assert isinstance(result, BetaMCPToolResultBlock) and result.is_error is True
    assert isinstance(result.content, list) and says in result.content[0].text
    assert result.content[0].text  # the reason, whatever it is
    assert rest and message.stop_reason in ("end_turn", "max_tokens")


def test_client_tools_still_go_back_to_the_client(client: anthropic.Anthropic) -> None:
    notify: Any = {"name": "notify", "description": "Tell the user something",
              "input_schema": {"type": "object", "properties": {"text": {"type": "string"}},
                               "required": ["text"]}}  # fmt: skip
    message = client.messages.create(
        model=MODEL, max_tokens=64, messages=_ask("Tell me hello."),
        tools=[notify, FETCH], tool_choice={"type": "tool", "name": "notify"}, extra_body=GREEDY,
    )  # fmt: skip
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "notify" and use.id.startswith("toolu_")
    assert not [b for b in message.content if b.type == "server_tool_use"]


def test_count_tokens_counts_the_server_tools_named_and_no_others(
    client: anthropic.Anthropic,
) -> None:
    # The server offers fx__vault_lookup to every Chat Completions request, not to an
    # Anthropic one: its prompt is what count_tokens counts, with the tools it names.
    # (One token: the turn ends before any call, so usage is the first turn's prompt.)
    def prompt(**extra: Any) -> tuple[int, Any]:
        messages = _ask("hello")
        count = client.messages.count_tokens(model=MODEL, messages=messages, **extra)
        message = client.messages.create(model=MODEL, max_tokens=1, messages=messages, **extra)
        usage = message.usage
        assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == count.input_tokens
        return count.input_tokens, usage.server_tool_use

    plain, plain_usage = prompt()
    fetch, fetch_usage = prompt(tools=[FETCH])
    assert fetch > plain and plain_usage is None
    assert fetch_usage is not None and fetch_usage.web_fetch_requests == 0


BAD = [
    ({"mcp_servers": [{"type": "url", "url": "http://x/mcp", "name": "nope"}]},
     "unknown MCP server 'nope' (fx); MCP servers named by URL are not allowed"),
    ({"mcp_servers": [{"type": "url", "url": "http://elsewhere/mcp", "name": "fx"}]},
     "configured with the URL 'stdio:fx'"),
    ({"mcp_servers": [{"type": "sse", "url": "stdio:fx", "name": "fx"}]}, "must be 'url'"),
    ({"mcp_servers": _fx("gone")}, "no tool 'gone'"),
    ({"tools": [{"type": "web_search_20260209", "name": "web_search"}]},
     "'web_search_20260209' is not supported"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "'bash_20250124' is not supported"),
    ({"tools": [{**SEARCH, "name": "search"}]}, "must be named 'web_search'"),
    ({"tools": [{**SEARCH, "max_uses": 0}]}, "max_uses must be a positive integer"),
    ({"tools": [{**SEARCH, "max_uses": "3"}]}, "max_uses must be a positive integer"),
    ({"tools": [{**FETCH, "max_uses": True}]}, "max_uses must be a positive integer"),
    ({"tools": [{**FETCH, "max_content_tokens": -5}]}, "max_content_tokens must be a positive"),
    ({"tools": [{**FETCH, "allowed_domains": ["a.org"], "blocked_domains": ["b.org"]}]},
     "not both"),
    ({"tools": [{**FETCH, "allowed_domains": ["https://a.org"]}]}, "without a scheme"),
    ({"tools": [FETCH, FETCH]}, "given twice"),
    ({"tools": [FETCH], "tool_choice": {"type": "tool", "name": "nothing"}},
     "tool_choice names 'nothing'"),
    ({"tools": [{"name": "plain"}]}, "needs an input_schema"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_server_tools_are_anthropic_400s(
    server: LiveServer, extra: dict[str, Any], message: str
) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": _ask("hi"), **extra}
    rsp = httpx.post(server.base_url + "/v1/messages", json=body, timeout=60)
    assert rsp.status_code == 400, rsp.text
    error = rsp.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"]


def test_history_with_server_blocks_is_what_the_model_saw() -> None:
    body = MessagesRequest.model_validate({
        "model": MODEL, "max_tokens": 4,
        "messages": [
            _ask("Look it up.")[0],
            {"role": "assistant", "content": [
                {"type": "text", "text": "Looking."},
                # One round of two calls, as kronk shows it: the calls, then the results.
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                 "input": {"query": "q"}},
                {"type": "mcp_tool_use", "id": "mcptoolu_2", "name": "vault_lookup",
                 "server_name": "fx", "input": {"name": "ada"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
                    {"type": "web_search_result", "url": "http://a.org/", "title": "A",
                     "encrypted_content": "snippet A", "page_age": None}]},
                {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "down"}]},
                {"type": "text", "text": "Found it."},
            ]},
            _ask("Thanks.")[0],
        ],
    })  # fmt: skip
    user, calls, search, mcp, answer, thanks = body.chat_messages()
    names = [c["function"]["name"] for c in calls["tool_calls"]]
    assert names == ["web_search", "fx__vault_lookup"]
    assert calls["content"] == "Looking."
    assert search == {"role": "tool", "tool_call_id": "srvtoolu_1", "content": json.dumps(
        [{"title": "A", "url": "http://a.org/", "snippet": "snippet A"}])}  # fmt: skip
    assert mcp == {"role": "tool", "tool_call_id": "mcptoolu_2", "content": "Error: down"}
    assert answer == {"role": "assistant", "content": "Found it."}
    assert user["role"] == thanks["role"] == "user"


# -- the per-request rules, on the real registry and the loopback site ----------------------


def _run(site: Site, rules: BuiltinRules, calls: list[tuple[str, dict[str, Any]]]) -> Any:
    config = ToolsConfig(allow_addresses=("127.0.0.1",), search_url=site.url("/"))
    registry = ToolRegistry(config)

    async def run() -> tuple[list[ToolResult], dict[str, int]]:
        specs = {s.name: s for s in await registry.resolve(["web_fetch", "web_search"])}
        runner = ToolRunner(registry, {"web_fetch": rules, "web_search": rules})
        out = [await runner.call(specs[name], json.dumps(args)) for name, args in calls]
        return out, runner.usage

    return asyncio.run(run())


def _code(result: ToolResult) -> str | None:
    assert isinstance(result.data, dict)
    code = result.data.get("error_code")
    return code if result.is_error else None


def test_max_uses_refuses_the_next_call_without_running_it(site: Site) -> None:
    before = len(site.paths)
    (first, second), usage = _run(site, BuiltinRules(max_uses=1), [
        ("web_fetch", {"url": site.url("/notes.txt")}),
        ("web_fetch", {"url": site.url("/page.html")}),
    ])  # fmt: skip
    assert not first.is_error and first.content == "plain notes: KELP-4471"
    assert _code(second) == "max_uses_exceeded"
    assert site.paths[before:] == ["/notes.txt"] and usage["web_fetch_requests"] == 1


def test_domains_are_applied_before_fetching_and_to_search_results(site: Site) -> None:
    before = len(site.paths)
    (fetch,), usage = _run(site, BuiltinRules(allowed=("example.org",)), [
        ("web_fetch", {"url": site.url("/notes.txt")})])  # fmt: skip
    assert _code(fetch) == "url_not_allowed" and len(site.paths) == before
    assert usage["web_fetch_requests"] == 0
    (search,), _ = _run(site, BuiltinRules(blocked=("127.0.0.1",)), [
        ("web_search", {"query": "tides"})])  # fmt: skip
    assert not search.is_error and search.data == [] and search.content == "no results"
    (kept,), _ = _run(site, BuiltinRules(allowed=("127.0.0.1/r2",)), [
        ("web_search", {"query": "tides"})])  # fmt: skip
    assert [r["url"] for r in kept.data] == [site.url("/r2")]


def test_fetch_failures_get_anthropic_error_codes(site: Site) -> None:
    results, usage = _run(site, BuiltinRules(max_content_tokens=10), [
        ("web_fetch", {"url": site.url("/blob.bin")}),
        ("web_fetch", {"url": site.url("/missing")}),
        ("web_fetch", {"url": "http://10.0.0.1/"}),
        ("web_fetch", {"url": site.url("/to-private")}),
        ("web_fetch", {}),
        ("web_fetch", {"url": site.url("/big.txt")}),  # over max_output_chars
        ("web_fetch", {"url": site.url("/page.html")}),
    ])  # fmt: skip
    codes = [_code(r) for r in results]
    assert codes == [
        "unsupported_content_type", "url_not_accessible", "url_not_allowed",
        "url_not_allowed", "invalid_tool_input", "content_too_large", None,
    ]  # fmt: skip
    page = results[-1]  # its markdown cut to max_content_tokens (4 characters a token)
    assert page.content.startswith("# Harbour report") and page.content.endswith(
        "[truncated to about 10 tokens]"
    )
    assert len(page.content) < 80 and "TIDE-93172-QX" not in page.content
    assert usage["web_fetch_requests"] == 6  # the one without a url never ran


def test_mcp_servers_by_url_where_the_settings_allow_them(default_model_path: Path) -> None:
    # A server the request names by URL, with its token: only with tools.allow_remote_mcp
    # (and the URL's address allowed, as web_fetch's are). Streamed, with the beta client.
    extra = {"tool_settings": {"allow_addresses": ["127.0.0.1"], "allow_remote_mcp": True,
                               "max_rounds": 1}}  # fmt: skip
    with (
        mcp_http_server() as url,
        live_server(
            {MODEL: default_model_path},
            load_defaults={"n_ctx": 2048, "n_seq_max": 1},
            settings_extra=extra,
        ) as srv,
    ):
        remote: Any = [{"type": "url", "url": url, "name": "remote", "authorization_token": "t",
                        "tool_configuration": {"allowed_tools": ["vault_lookup"]}}]  # fmt: skip
        with srv.anthropic(timeout=300).beta.messages.stream(
            model=MODEL, max_tokens=64, messages=_ask("What is the vault code for bob?"),
            mcp_servers=remote, tool_choice={"type": "tool", "name": "vault_lookup"},
            betas=BETA, extra_body=GREEDY,
        ) as stream:  # fmt: skip
            kinds = [e.content_block.type for e in stream if e.type == "content_block_start"]
            message = stream.get_final_message()
    assert kinds[:2] == ["mcp_tool_use", "mcp_tool_result"]
    call, result = message.content[:2]  # the beta client's accumulated, typed blocks
    assert isinstance(call, BetaMCPToolUseBlock) and call.server_name == "remote"
    assert isinstance(result, BetaMCPToolResultBlock) and not result.is_error
    assert isinstance(result.content, list)
    assert result.content[0].text == vault_code(str(call.input["name"]))


def test_server_tools_need_the_tools_grant(tiny_llama_path: Path, tmp_path: Path) -> None:
    from kronk.server.security.keys import KeyStore
    from kronk.server.security.tokens import create_token, parse_endpoints

    store = KeyStore(tmp_path / "keys")
    store.create()
    chat_only = create_token(store, parse_endpoints("chat"), duration_s=600)
    plain = {"model": "tiny", "max_tokens": 1, "messages": _ask("hi")}
    with live_server(
        {"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256}, home=tmp_path, auth="all"
    ) as srv:
        headers = {"x-api-key": chat_only}
        url = srv.base_url + "/v1/messages"
        for extra in ({"tools": [FETCH]}, {"mcp_servers": [], "tools": [SEARCH]}):
            refused = httpx.post(url, json={**plain, **extra}, headers=headers, timeout=60)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["type"] == "permission_error"
            assert "'tools'" in refused.json()["error"]["message"]
        assert httpx.post(url, json=plain, headers=headers, timeout=60).status_code == 200


def test_what_a_request_names_is_what_it_gets() -> None:
    from kronk.agent.config import parse_mcp_servers
    from kronk.server.anthropic.server_tools import requested_tools

    servers = {"fx": {"command": sys.executable}, "web": {"url": "http://127.0.0.1:9/mcp"}}
    registry = ToolRegistry(ToolsConfig(mcp_servers=parse_mcp_servers(servers)))

    def named(**extra: Any) -> Any:
        body = {"model": MODEL, "max_tokens": 1, "messages": _ask("hi"), **extra}
        return requested_tools(MessagesRequest.model_validate(body), registry)

    off = {"type": "url", "url": "stdio:fx", "name": "fx", "tool_configuration": {"enabled": False}}
    assert not named(mcp_servers=[off])  # left out: a plain turn
    web = {"type": "url", "url": "http://127.0.0.1:9/mcp/", "name": "web"}  # trailing / is fine
    got = named(mcp_servers=[*_fx("vault_lookup", "fail"), web], tools=[
        {**FETCH, "allowed_domains": ["Example.org/docs/"], "max_uses": 2}])  # fmt: skip
    assert got.configured == ["mcp:fx/vault_lookup", "mcp:fx/fail", "mcp:web"]
    assert got.builtins == {"web_fetch": BuiltinRules(max_uses=2, allowed=("example.org/docs",))}
    assert not got.remote
