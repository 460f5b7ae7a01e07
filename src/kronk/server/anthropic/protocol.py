"""Request bodies of the Anthropic Messages API, and their mapping onto kronk's chat.

Fields follow Anthropic's API reference. Sampling maps onto kronk's one declaration
(`kronk.options.SamplingOptions`): `max_tokens`, `temperature`, `top_p`, `top_k` and
`stop_sequences` (-> `stop`). Fields kronk has no use for (`metadata`, `cache_control`,
`service_tier`, beta fields) are accepted and ignored, as the API's clients send them
freely; what kronk cannot do (images on a text model, documents) is refused with a 400
that says so. Server tools (`web_search_20250305`, `web_fetch_20250910`) and the MCP
connector's `mcp_servers` are read here and checked in server_tools.py.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kronk.agent.registry import SEPARATOR
from kronk.errors import InvalidRequestError, UnsupportedFeatureError
from kronk.options import SAMPLER_FIELDS
from kronk.server.anthropic.tool_blocks import server_result_text
from kronk.server.body import check_body


class Lenient(BaseModel):
    """Unknown fields are ignored: Anthropic's clients add beta fields freely."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class AnthropicBody(Lenient):
    """A whole request body: nesting bounded and text valid Unicode (see check_body)."""

    @model_validator(mode="before")
    @classmethod
    def _well_formed(cls, data: Any) -> Any:
        check_body(data)
        return data


class TextBlock(Lenient):
    type: Literal["text"]
    text: str


class ImageBlock(Lenient):
    type: Literal["image"]
    source: dict[str, Any]


class DocumentBlock(Lenient):
    type: Literal["document", "search_result"]


class ToolUseBlock(Lenient):
    type: Literal["tool_use", "server_tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class McpToolUseBlock(Lenient):
    type: Literal["mcp_tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    server_name: str = Field(min_length=1)
    input: dict[str, Any]


class ServerToolResultBlock(Lenient):
    """What a server tool gave back, as an earlier answer showed it."""

    type: Literal["web_search_tool_result", "web_fetch_tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: Any


class McpToolResultBlock(Lenient):
    type: Literal["mcp_tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None


class ToolResultBlock(Lenient):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(Lenient):
    type: Literal["thinking", "redacted_thinking"]
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None  # redacted_thinking


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | McpToolUseBlock
    | ServerToolResultBlock
    | McpToolResultBlock,
    Field(discriminator="type"),
]


class Message(Lenient):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(Lenient):
    """A client tool (`type` "custom" or absent, with an `input_schema`) or a server tool
    (`web_search_20250305`, `web_fetch_20250910`, with the fields below; checked in
    server_tools.py)."""

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    max_uses: Any = None
    allowed_domains: Any = None
    blocked_domains: Any = None
    max_content_tokens: Any = None
    user_location: dict[str, Any] | None = None  # accepted and ignored

    @property
    def is_server(self) -> bool:
        return self.type not in (None, "custom")


class McpToolConfiguration(Lenient):
    enabled: bool | None = None
    allowed_tools: list[str] | None = None


class McpServer(Lenient):
    """An entry of `mcp_servers` (Anthropic's MCP connector)."""

    type: str
    url: str
    name: str = Field(min_length=1)
    authorization_token: str | None = None
    tool_configuration: McpToolConfiguration | None = None


class ToolChoice(Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(Lenient):
    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: int | None = Field(None, ge=0)  # accepted; kronk does not cap thinking


class MessagesRequest(AnthropicBody):
    """`POST /v1/messages`. Besides Anthropic's fields, kronk's other sampler parameters
    (seed, min_p, repeat_penalty, ...: `kronk.options.SAMPLER_FIELDS`) are taken when
    sent, e.g. through the client's `extra_body`; other unknown fields are ignored."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    metadata: dict[str, Any] | None = None  # accepted and ignored
    mcp_servers: list[McpServer] | None = None

    def has_server_tools(self) -> bool:
        return bool(self.mcp_servers) or any(t.is_server for t in self.tools or ())

    def kronk_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `Kronk.achat_events` besides the messages."""
        extras = {k: v for k, v in (self.model_extra or {}).items() if k in SAMPLER_FIELDS}
        extras.pop("stop", None)  # Anthropic's name for it is stop_sequences
        kwargs: dict[str, Any] = {**extras, "max_tokens": self.max_tokens}
        for name in ("temperature", "top_p", "top_k"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        if self.stop_sequences:
            kwargs["stop"] = list(self.stop_sequences)
        if self.thinking is not None:
            enabled = self.thinking.type != "disabled"
            kwargs["chat_template_kwargs"] = {"enable_thinking": enabled}
        tools = self.chat_tools()
        if tools is not None:
            kwargs["tools"] = tools
        if self.tool_choice is not None:
            kwargs.update(self.chat_tool_choice(tools))
        return kwargs

    def chat_tools(self) -> list[dict[str, Any]] | None:
        """The client tools (server tools are added by the tool loop)."""
        out = []
        for i, tool in enumerate(self.tools or ()):
            if tool.is_server:
                continue
            if tool.input_schema is None:
                raise InvalidRequestError(
                    f"tools[{i}] needs an input_schema (or the type of a server tool)",
                    f"tools[{i}].input_schema",
                )
            function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description:
                function["description"] = tool.description
            out.append({"type": "function", "function": function})
        return out or None

    def chat_tool_choice(self, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        choice = self.tool_choice
        assert choice is not None
        out: dict[str, Any] = {}
        if choice.disable_parallel_tool_use:
            out["parallel_tool_calls"] = False
        if choice.type == "auto":
            return out
        server = self.has_server_tools()
        if not tools and not server and choice.type != "none":
            raise InvalidRequestError(f"tool_choice {choice.type!r} needs tools", "tool_choice")
        if choice.type == "any":
            out["tool_choice"] = "required"
        elif choice.type == "none":
            out["tool_choice"] = "none"
        else:
            if not choice.name:
                raise InvalidRequestError("tool_choice of type 'tool' needs a name", "tool_choice")
            names = {t["function"]["name"] for t in tools or ()}
            # A server tool's name is checked once the server tools are known.
            if choice.name not in names and not server:
                raise InvalidRequestError(
                    f"tool_choice names {choice.name!r}, which is not in tools", "tool_choice"
                )
            out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        return out

    def chat_messages(self) -> list[dict[str, Any]]:
        """`system` + `messages` as chat-template messages."""
        out: list[dict[str, Any]] = []
        system = system_text(self.system)
        if system:
            out.append({"role": "system", "content": system})
        if self.messages[0].role != "user":
            raise InvalidRequestError("the first message must have the user role", "messages")
        if self.messages[-1].role != "user":
            raise UnsupportedFeatureError(
                "the last message must have the user role (prefilling the assistant's answer "
                "is not supported)",
                "messages",
            )
        for i, message in enumerate(self.messages):
            where = f"messages[{i}]"
            if message.role == "user":
                out += _user_messages(message.content, where)
            else:
                out += _assistant_messages(message.content, where)
        return _merge_roles(out)


# Claude Code puts a per-request line in its system prompt
# (`x-anthropic-billing-header: cc_version=...; cch=<nonce>;`). It changes on every
# request and would make the prompt differ from the first token on: removed, so each
# turn reuses the previous turn's cached prefix.
_BILLING_LINE = re.compile(r"^x-anthropic-billing-header:[^\n]*\n?", re.MULTILINE)


def system_text(system: str | list[TextBlock] | None) -> str:
    if system is None:
        return ""
    text = system if isinstance(system, str) else "\n\n".join(b.text for b in system)
    return _BILLING_LINE.sub("", text).strip("\n")


def _refuse_block(block: Any, where: str) -> None:
    if isinstance(block, ImageBlock):
        raise UnsupportedFeatureError(
            "this model cannot read images (it has no images capability); send text", where
        )
    raise UnsupportedFeatureError(f"content blocks of type {block.type!r} are not supported", where)


def _user_messages(content: str | list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results (as tool messages, first) and its text."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolResultBlock):
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block.tool_use_id,
                    "content": _tool_result_text(block, at),
                }
            )
        else:
            _refuse_block(block, at)
    if texts:
        results.append({"role": "user", "content": "\n\n".join(texts)})
    if not results:
        raise InvalidRequestError("a user message needs content", f"{where}.content")
    return results


def _tool_result_text(block: ToolResultBlock | McpToolResultBlock, where: str) -> str:
    if block.content is None:
        text = ""
    elif isinstance(block.content, str):
        text = block.content
    else:
        parts = []
        for k, part in enumerate(block.content):
            if not isinstance(part, TextBlock):
                _refuse_block(part, f"{where}.content[{k}]")
            else:
                parts.append(part.text)
        text = "\n\n".join(parts)
    return f"Error: {text}" if block.is_error else text


def _assistant_messages(content: str | list[Any], where: str) -> list[dict[str, Any]]:
    """An assistant turn. Where kronk ran tools inside it (result blocks in the turn), it
    splits as the model saw it: the calls, their results as tool messages, then what the
    model wrote next."""
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    out: list[dict[str, Any]] = []
    part: list[tuple[Any, str]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(block, ServerToolResultBlock | McpToolResultBlock):
            text = (
                _tool_result_text(block, at)
                if isinstance(block, McpToolResultBlock)
                else server_result_text(block.type, block.content, at)
            )
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
            continue
        if results:
            out += [_assistant_part(part), *results]
            part, results = [], []
        part.append((block, at))
    if part or not results:
        out.append(_assistant_part(part))
    return out + results


def _assistant_part(blocks: list[tuple[Any, str]]) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block, at in blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlock):
            if block.thinking:
                thinking.append(block.thinking)
        elif isinstance(block, ToolUseBlock | McpToolUseBlock):
            name = block.name  # as the model called it: SERVER__TOOL for MCP tools
            if isinstance(block, McpToolUseBlock):
                name = f"{block.server_name}{SEPARATOR}{block.name}"
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(
                {"id": block.id, "type": "function",
                 "function": {"name": name, "arguments": arguments}}
            )  # fmt: skip
        else:
            _refuse_block(block, at)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "\n\n".join(thinking)
    if message["content"] is None and not calls:
        message["content"] = ""
    return message


def _merge_roles(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive user messages joined, as Anthropic's API joins consecutive turns of
    the same role (chat templates expect user and assistant to alternate)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        last = out[-1] if out else None
        if (
            last is not None
            and message["role"] == "user"
            and last["role"] == "user"
            and isinstance(last["content"], str)
        ):
            last["content"] += "\n\n" + message["content"]
        else:
            out.append(dict(message))
    return out


class CountTokensRequest(AnthropicBody):
    """`POST /v1/messages/count_tokens`: a messages request without max_tokens."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    mcp_servers: list[McpServer] | None = None

    def as_messages_request(self) -> MessagesRequest:
        return MessagesRequest(
            model=self.model,
            messages=self.messages,
            max_tokens=1,
            system=self.system,
            tools=self.tools,
            tool_choice=self.tool_choice,
            thinking=self.thinking,
            mcp_servers=self.mcp_servers,
        )


__all__ = ["CountTokensRequest", "MessagesRequest", "system_text"]
