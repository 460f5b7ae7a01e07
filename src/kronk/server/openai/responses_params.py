"""The Responses API's request body (`/v1/responses`): its input items as chat messages,
its function tools, and the tools kronk runs itself (docs/tools.md; `responses_tools.py`
resolves and runs them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from kronk.agent.registry import SEPARATOR
from kronk.errors import InvalidRequestError, UnsupportedFeatureError
from kronk.server.openai.protocol import RequestModel, SamplingFields, ToolChoice, check_tool_choice

# OpenAI's names for its web search tool, and kronk's web_fetch (its extension).
WEB_SEARCH_TYPES = (
    "web_search",
    "web_search_preview",
    "web_search_2025_08_26",
    "web_search_preview_2025_03_11",
)
WEB_TOOL_TYPES = (*WEB_SEARCH_TYPES, "web_fetch")


class ResponseWebTool(BaseModel):
    """`{"type": "web_search"}` (or an OpenAI alias), `{"type": "web_fetch"}`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal[
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "web_fetch",
    ]
    # OpenAI's hints, accepted and ignored (the search backend is the server's choice).
    search_context_size: str | None = None
    user_location: dict[str, Any] | None = None
    external_web_access: bool | None = None
    # Refused when it restricts anything: kronk does not filter domains.
    filters: dict[str, Any] | None = None

    @property
    def tool(self) -> str:
        """The registry's name of the tool."""
        return "web_fetch" if self.type == "web_fetch" else "web_search"


class McpAllowedTools(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool_names: list[str] | None = None
    read_only: bool | None = None  # refused when true: kronk cannot tell read-only tools


class ResponseMcpTool(BaseModel):
    """`{"type": "mcp", "server_label": NAME, ...}`: a server configured on kronk, or
    one at `server_url` where the settings allow remote servers."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["mcp"]
    server_label: str = Field(min_length=1, max_length=64)
    server_url: str | None = None
    allowed_tools: list[str] | McpAllowedTools | None = None
    require_approval: str | dict[str, Any] | None = None  # only "never" is accepted
    headers: dict[str, str] | None = None  # sent to server_url
    authorization: str | None = None  # sent to server_url as a bearer token
    server_description: str | None = None  # ignored
    connector_id: str | None = None  # refused: kronk has no connectors

    def tool_names(self) -> list[str] | None:
        """The tools the request allows (None: every tool of the server)."""
        allowed = self.allowed_tools
        if isinstance(allowed, McpAllowedTools):
            return allowed.tool_names
        return allowed


ResponseServerTool = ResponseWebTool | ResponseMcpTool


def response_tool_kind(value: Any) -> str:
    """Which member of a Responses `tools` entry union validates it (tags as in
    `kronk.server.tool_params.tool_kind`: error locations drop them)."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in WEB_TOOL_TYPES:
        return "web-tool"
    return "mcp-tool" if kind == "mcp" else "function-tool"


def server_tool_choice(choice: dict[str, Any]) -> str | dict[str, Any] | None:
    """A tool_choice that names a server tool, in the chat form (`SERVER__TOOL` for an
    MCP tool; "required" for an MCP server without a tool name); None for other kinds."""
    kind = choice.get("type")
    if kind in WEB_TOOL_TYPES:
        name = "web_fetch" if kind == "web_fetch" else "web_search"
        return {"type": "function", "function": {"name": name}}
    if kind == "mcp" and isinstance(choice.get("server_label"), str):
        tool = choice.get("name")
        if not isinstance(tool, str):
            return "required"
        return {
            "type": "function",
            "function": {"name": f"{choice['server_label']}{SEPARATOR}{tool}"},
        }
    return None


class ResponseTextFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseTextConfig(RequestModel):
    format: ResponseTextFormat | None = None
    verbosity: str | None = None  # ignored


class ReasoningConfig(RequestModel):
    effort: str | None = None
    summary: str | None = None  # ignored: kronk returns the reasoning text itself
    generate_summary: str | None = None  # ignored


class ResponseFunctionTool(RequestModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


# A Responses `tools` entry: a function, or a tool kronk runs itself (docs/tools.md).
ResponseToolEntry = Annotated[
    Annotated[ResponseFunctionTool, Tag("function-tool")]
    | Annotated[ResponseWebTool, Tag("web-tool")]
    | Annotated[ResponseMcpTool, Tag("mcp-tool")],
    Discriminator(response_tool_kind),
]


class ResponsesRequest(SamplingFields):
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None  # ignored
    tools: list[ResponseToolEntry] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: ResponseTextConfig | None = None
    reasoning: ReasoningConfig | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    include: list[str] | None = None  # ignored
    truncation: Literal["auto", "disabled"] | None = None  # kronk never truncates
    max_tool_calls: int | None = Field(None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("tools", mode="before")
    @classmethod
    def _known_tool_types(cls, tools: Any) -> Any:
        """OpenAI's other tool types (file_search, computer_use, ...) named as such."""
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind not in ("function", "mcp", *WEB_TOOL_TYPES):
                raise UnsupportedFeatureError(
                    f"tools of type {kind!r} are not supported: kronk takes function, "
                    "web_search, web_fetch and mcp tools",
                    f"tools[{i}].type",
                )
        return tools

    def chat_tools(self) -> list[dict[str, Any]] | None:
        """Responses' flat function tools in the chat form the SDK takes."""
        out = []
        for tool in self.tools or ():
            if isinstance(tool, ResponseFunctionTool):
                function = tool.model_dump(exclude_none=True, exclude={"type"})
                out.append({"type": "function", "function": function})
        return out or None

    def server_tools(self) -> list[ResponseServerTool]:
        """The tools kronk runs itself (web_search, web_fetch, mcp)."""
        return [t for t in self.tools or () if not isinstance(t, ResponseFunctionTool)]

    def chat_tool_choice(
        self, tools: list[dict[str, Any]] | None, server: bool = False
    ) -> str | dict[str, Any] | None:
        """tool_choice in the chat form. With `server` (the request may get server
        tools) it may name them, and the SDK checks it against every tool instead."""
        choice = self.tool_choice
        if choice is None or isinstance(choice, str):
            if server:
                return choice
            return check_tool_choice(choice, tools) if choice is not None else None
        named: str | dict[str, Any] | None = None
        if choice.get("type") == "function" and isinstance(choice.get("name"), str):
            named = {"type": "function", "function": {"name": choice["name"]}}
        elif server:
            named = server_tool_choice(choice)
        if named is None:
            raise InvalidRequestError(
                "tool_choice must be 'none', 'auto', 'required', "
                '{"type": "function", "name": ...} or a server tool of the request '
                '({"type": "web_search"}, {"type": "mcp", "server_label": ..., "name": ...})',
                "tool_choice",
            )
        return named if server else check_tool_choice(named, tools)

    def response_format(self) -> dict[str, Any] | None:
        fmt = self.text.format if self.text is not None else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "json_object"}
        if fmt.json_schema is None:
            raise InvalidRequestError("text.format json_schema needs a schema", "text.format")
        spec: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.json_schema}
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        return {"type": "json_schema", "json_schema": spec}

    def messages(self) -> list[dict[str, Any]]:
        """`instructions` + `input` as chat messages."""
        if self.previous_response_id is not None or self.conversation is not None:
            param = "previous_response_id" if self.previous_response_id else "conversation"
            raise UnsupportedFeatureError(
                "kronk does not store responses; send the whole conversation in input", param
            )
        if self.background:
            raise UnsupportedFeatureError("background responses are not supported", "background")
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
        else:
            for i, item in enumerate(self.input):
                _add_input_item(messages, item, f"input[{i}]")
        if not any(m["role"] != "system" for m in messages):
            raise InvalidRequestError("input must hold at least one message", "input")
        return messages

    def kronk_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `Kronk.achat_events` besides the messages."""
        server = bool(self.server_tools())
        kwargs = self.sampling_kwargs()
        if self.max_output_tokens is not None:
            kwargs["max_tokens"] = self.max_output_tokens
        if self.top_logprobs is not None:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = self.top_logprobs
        fmt = self.response_format()
        if fmt is not None:
            kwargs["response_format"] = fmt
        template_kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning is not None and self.reasoning.effort in ("none", "minimal"):
            template_kwargs.setdefault("enable_thinking", False)
        if template_kwargs:
            kwargs["chat_template_kwargs"] = template_kwargs
        tools = self.chat_tools()
        if tools is not None:
            kwargs["tools"] = tools
        choice = self.chat_tool_choice(tools, server)
        if choice is not None and (server or tools or choice not in ("auto", "none")):
            kwargs["tool_choice"] = choice
        if self.parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = self.parallel_tool_calls
        return kwargs


def _input_text(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError("content must be a string or a list of parts", where)
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get("text") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(text, str):
            raise UnsupportedFeatureError(
                f"content part of type {kind!r} is not supported; send text", f"{where}[{j}]"
            )
        parts.append({"type": "text", "text": text})
    return parts


def _add_input_item(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequestError(
                "role must be user, assistant, system or developer", f"{where}.role"
            )
        content = _input_text(item.get("content"), f"{where}.content")
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    elif kind == "function_call":
        call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise InvalidRequestError("function_call needs call_id and name", where)
        if not isinstance(arguments, str):
            raise InvalidRequestError("function_call arguments must be a string", where)
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)  # parallel calls belong to one assistant turn
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str):
            raise InvalidRequestError("function_call_output needs call_id", where)
        if not isinstance(output, str):
            output = _input_text(output, f"{where}.output")
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
    elif kind == "mcp_call":
        _add_mcp_call(messages, item, where)
    elif kind in ("reasoning", "mcp_list_tools", "web_search_call"):
        # Earlier reasoning is not shown to the model again, as chat templates do; nor
        # are tool lists and web calls (their results are not in the items).
        pass
    else:
        raise UnsupportedFeatureError(f"input item of type {kind!r} is not supported", where)


def _add_mcp_call(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    """An earlier response's `mcp_call` item: the call and its result, as the model saw
    them (the tool named `LABEL__TOOL`)."""
    label, name, arguments = item.get("server_label"), item.get("name"), item.get("arguments")
    if not isinstance(label, str) or not isinstance(name, str) or not isinstance(arguments, str):
        raise InvalidRequestError("mcp_call needs server_label, name and arguments", where)
    call_id = str(item.get("id") or f"{label}-{len(messages)}")
    function = {"name": f"{label}{SEPARATOR}{name}", "arguments": arguments}
    call = {"id": call_id, "type": "function", "function": function}
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    output, error = item.get("output"), item.get("error")
    content = output if isinstance(output, str) else f"Error: {error}"
    messages.append({"role": "tool", "tool_call_id": call_id, "content": content})


__all__ = [
    "WEB_SEARCH_TYPES",
    "WEB_TOOL_TYPES",
    "McpAllowedTools",
    "ResponseMcpTool",
    "ResponseServerTool",
    "ResponseWebTool",
    "ResponsesRequest",
    "response_tool_kind",
    "server_tool_choice",
]
