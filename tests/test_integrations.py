"""The Python agent frameworks, driving kronk's server on the real default model.

Each test is one tool-using exchange run the framework's own way: the model must call
`secret_code`, the framework runs it, and the model must answer with what it returned,
a value it cannot guess. The OpenAI Agents SDK, PydanticAI, LangChain and LiteLLM speak
OpenAI's API to /v1; PydanticAI's AnthropicModel, langchain-anthropic and LiteLLM's
anthropic/ provider speak Anthropic's Messages API to /v1/messages.

The default model has 0.5B parameters, and each test gives it the two kinds of help it
needs through the framework's own hooks (docs/integrations.md shows the same code):

- the first turn forces the call (tool_choice "required" or the tool's name), so that
  the model calls the tool rather than guess;
- once the tool has answered, it is no longer offered: a model this small, offered a
  tool again, calls it again (or writes a call as text) instead of answering.

Each test imports its framework itself, so that collecting the suite does not import
them all (LiteLLM alone takes seconds), and so that the switches below are set first.

Nothing may leave the machine: an autouse fixture refuses, and records, every connection
and name lookup that is not loopback, and a test that tried one fails.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.live_server import LiveServer, live_server

# The id `kronk server` (and `make run`) serves the default model under.
MODEL = "qwen2.5-coder-0.5b-instruct"
SECRET = "kronk-7731"
QUESTION = "What is the secret code of Alice?"
# With this system prompt the 0.5B model answers from a tool result in a sentence of its
# own; "starting with 'The'" keeps it from writing the call out again as JSON even where a
# tool is still in the prompt (LiteLLM's anthropic/ provider always sends one).
INSTRUCTIONS = (
    "You are a helpful assistant. When a tool result arrives, answer the user's question "
    "with it in one sentence, starting with 'The'."
)
MAX_TOKENS = 60
TIMEOUT_S = 300.0  # generous: the CPU may be shared with other work
SECRET_CODE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "secret_code",
        "description": "Look up the secret code of a person.",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string", "description": "The person's name"}},
            "required": ["name"],
        },
    },
}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(scope="module")
def srv(default_model_path: Path) -> Iterator[LiveServer]:
    defaults = {"n_ctx": 2048, "n_seq_max": 2, "n_threads": 2}
    with live_server({MODEL: default_model_path}, load_defaults=defaults, preload=MODEL) as s:
        yield s


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Refuse every connection and name lookup that is not loopback, and fail the test
    that tried one: frameworks like to fetch price lists and send traces, and a test
    must not depend on, or leak to, the internet."""
    attempts: list[object] = []
    connect = socket.socket.connect
    connect_ex = socket.socket.connect_ex
    getaddrinfo = socket.getaddrinfo

    def is_loopback(address: object) -> bool:
        # Unix sockets (a str or bytes path) are local too.
        return not isinstance(address, tuple) or address[0] in LOOPBACK

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if not is_loopback(address):
            attempts.append(address)
            raise OSError(f"test_integrations: no connections outside loopback ({address})")
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        if not is_loopback(address):
            attempts.append(address)
            raise OSError(f"test_integrations: no connections outside loopback ({address})")
        return connect_ex(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK:
            attempts.append(name)
            raise socket.gaierror(f"test_integrations: no lookups outside loopback ({name})")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    # Tracing and price lists off where a framework has a switch for them.
    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    monkeypatch.setenv("LANGCHAIN_TRACING_V2", "false")
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    yield attempts
    assert not attempts, f"tried to reach outside the machine: {attempts}"


def check_exchange(calls: list[str], answer: str | None) -> None:
    """One call with the person's name, and an answer built on what the tool returned."""
    assert calls == ["Alice"], f"the tool was called with {calls}"
    assert answer is not None and SECRET in answer, f"the answer lacks the secret: {answer!r}"
    # An answer, not a tool call written out as JSON text.
    assert "{" not in answer, f"the answer is not prose: {answer!r}"


# -- OpenAI Agents SDK ------------------------------------------------------------------


def run_openai_agent(srv: LiveServer, api: str) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    calls: list[str] = []

    # Offered until it has answered (see the module docstring).
    @function_tool(is_enabled=lambda ctx, agent: not calls)
    def secret_code(name: str) -> str:
        """Look up the secret code of a person."""
        calls.append(name)
        return SECRET

    client = srv.async_openai(timeout=TIMEOUT_S)
    model = (
        OpenAIResponsesModel(model=MODEL, openai_client=client)
        if api == "responses"
        else OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    )
    agent = Agent(
        name="assistant",
        instructions=INSTRUCTIONS,
        model=model,
        tools=[secret_code],
        # reset_tool_choice (on by default) drops "required" once a tool has been used.
        model_settings=ModelSettings(temperature=0, tool_choice="required", max_tokens=MAX_TOKENS),
    )
    result = Runner.run_sync(agent, QUESTION, max_turns=3)
    check_exchange(calls, result.final_output)


def test_openai_agents_sdk_chat_completions(srv: LiveServer) -> None:
    run_openai_agent(srv, "chat_completions")


def test_openai_agents_sdk_responses(srv: LiveServer) -> None:
    # The SDK's default API: /v1/responses, with function_call items going back and forth.
    run_openai_agent(srv, "responses")


# -- PydanticAI ---------------------------------------------------------------------------


def run_pydantic_ai(model: Any) -> None:
    from pydantic_ai import Agent, ModelSettings, RunContext, Tool
    from pydantic_ai.tools import ToolDefinition

    calls: list[str] = []

    def secret_code(name: str) -> str:
        """Look up the secret code of a person."""
        calls.append(name)
        return SECRET

    async def until_called(ctx: RunContext[None], tool: ToolDefinition) -> ToolDefinition | None:
        return None if calls else tool

    def settings(ctx: RunContext[None]) -> ModelSettings:
        # Step 1 is the first model request: force the call there, and only there.
        tool_choice = "required" if ctx.run_step <= 1 else "auto"
        return ModelSettings(temperature=0, max_tokens=MAX_TOKENS, tool_choice=tool_choice)

    agent = Agent(
        model,
        instructions=INSTRUCTIONS,
        tools=[Tool(secret_code, prepare=until_called)],
        model_settings=settings,
    )
    result = agent.run_sync(QUESTION)
    check_exchange(calls, result.output)


def test_pydantic_ai_openai(srv: LiveServer) -> None:
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(openai_client=srv.async_openai(timeout=TIMEOUT_S))
    run_pydantic_ai(OpenAIChatModel(MODEL, provider=provider))


def test_pydantic_ai_anthropic(srv: LiveServer) -> None:
    import anthropic
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    # PydanticAI drops temperature under the anthropic client's default API version,
    # which no longer takes sampling parameters; the older version keeps it.
    client = anthropic.AsyncAnthropic(
        base_url=srv.base_url,
        api_key="unused",
        max_retries=0,
        timeout=TIMEOUT_S,
        default_headers={"anthropic-version": "2023-06-01"},
    )
    provider = AnthropicProvider(anthropic_client=client)
    run_pydantic_ai(AnthropicModel(MODEL, provider=provider))


# -- LangChain ------------------------------------------------------------------------------


def run_langchain(llm: Any) -> None:
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import tool

    calls: list[str] = []

    @tool
    def secret_code(name: str) -> str:
        """Look up the secret code of a person."""
        calls.append(name)
        return SECRET

    @wrap_model_call
    def call_then_answer(request: ModelRequest, handler: Any) -> ModelResponse:
        if any(isinstance(m, ToolMessage) for m in request.messages):
            return handler(request.override(tools=[], tool_choice=None))
        return handler(request.override(tool_choice="secret_code"))

    agent = create_agent(
        llm, [secret_code], system_prompt=INSTRUCTIONS, middleware=[call_then_answer]
    )
    result = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]})
    messages = result["messages"]
    kinds = [type(m).__name__ for m in messages]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"], kinds
    assert messages[1].tool_calls[0]["args"] == {"name": "Alice"}
    check_exchange(calls, messages[-1].text)


def test_langchain_openai(srv: LiveServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{srv.base_url}/v1",
        api_key="unused",
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=TIMEOUT_S,
    )
    run_langchain(llm)


def test_langchain_anthropic(srv: LiveServer) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(
        model=MODEL,
        base_url=srv.base_url,
        api_key="unused",
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=TIMEOUT_S,
    )
    run_langchain(llm)


# -- LiteLLM --------------------------------------------------------------------------------


def run_litellm(model: str, api_base: str) -> None:
    # LiteLLM is a client, not an agent: the loop is the caller's, as in its own docs.
    import litellm

    litellm.telemetry = False
    calls: list[str] = []

    def secret_code(name: str) -> str:
        calls.append(name)
        return SECRET

    common: dict[str, Any] = {
        "model": model,
        "api_base": api_base,
        "api_key": "unused",
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        "timeout": TIMEOUT_S,
        "num_retries": 0,
    }
    messages: list[Any] = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": QUESTION},
    ]
    first = litellm.completion(
        messages=messages, tools=[SECRET_CODE_TOOL], tool_choice="required", **common
    )
    message = first.choices[0].message
    assert message.tool_calls, f"no tool call: {message}"
    messages.append(message.model_dump(exclude_none=True))
    for call in message.tool_calls:
        assert call.function.name == "secret_code"
        result = secret_code(**json.loads(call.function.arguments))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    # The second request leaves the tool out, so the model answers. (LiteLLM's anthropic/
    # provider puts a dummy tool back in: the Messages API wants tools wherever the history
    # has tool blocks. INSTRUCTIONS keep the model answering in prose all the same.)
    second = litellm.completion(messages=messages, **common)
    check_exchange(calls, second.choices[0].message.content)


def test_litellm_openai(srv: LiveServer) -> None:
    run_litellm(f"openai/{MODEL}", f"{srv.base_url}/v1")


def test_litellm_anthropic(srv: LiveServer) -> None:
    run_litellm(f"anthropic/{MODEL}", srv.base_url)


def test_the_offline_guard_refuses_the_internet(srv: LiveServer, offline: list[object]) -> None:
    # The guard is what makes "nothing phones home" checkable: check that it bites, sync
    # and async, with the server's event loop running (uvicorn may install uvloop, whose
    # sockets would bypass Python's), and lets loopback through.
    import httpx

    with pytest.raises(httpx.ConnectError):
        httpx.get("http://192.0.2.1/", timeout=5)

    async def fetch() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            await client.get("http://192.0.2.1/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(fetch())
    with socket.socket() as sock, pytest.raises(OSError):
        sock.connect(("192.0.2.1", 443))
    assert httpx.get(f"{srv.base_url}/health/ready", timeout=5).status_code == 200
    assert len(offline) == 3
    offline.clear()  # expected attempts: the fixture would fail the test on them
