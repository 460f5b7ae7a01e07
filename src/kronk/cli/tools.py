"""`kronk tools list` and `kronk tools call NAME --args JSON`: the tools kronk can run on
behalf of the user (built-in web_search and web_fetch, and the MCP servers of
config.yaml's `mcp_servers:` or an `--mcp-config` file), outside any chat."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kronk.cli.common import CommandError, HomeOption, console, report_errors, resolve_home

app = typer.Typer(help="Server-side tools: web_search, web_fetch and your MCP servers.")

McpConfigOption = Annotated[
    Path | None,
    typer.Option("--mcp-config", help='An {"mcpServers": {...}} JSON file.', dir_okay=False),
]


def _registry(home: Path | None, mcp_config: Path | None) -> Any:
    from kronk.agent.config import tools_config
    from kronk.agent.registry import ToolRegistry

    path = resolve_home(home).config_file
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, yaml.YAMLError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    data = data if isinstance(data, dict) else {}
    return ToolRegistry(tools_config(data.get("tools"), data.get("mcp_servers"), mcp_config))


@app.command("list")
@report_errors
def list_tools(
    home: HomeOption = None,
    mcp_config: McpConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The tools kronk can run, with their input schemas (starts the MCP servers)."""
    registry = _registry(home, mcp_config)

    async def run() -> tuple[list[Any], dict[str, str]]:
        try:
            result: tuple[list[Any], dict[str, str]] = await registry.list_all()
            return result
        finally:
            await registry.aclose()

    specs, problems = asyncio.run(run())
    rows = [
        {"name": s.name, "source": s.source, "description": s.description,
         "input_schema": s.input_schema}
        for s in specs
    ]  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"tools": rows, "unavailable": problems}, indent=2))
        return
    for row in rows:
        console.print(f"[bold]{row['name']}[/bold]  ({row['source']})  {row['description']}")
        console.print(f"  {json.dumps(row['input_schema'])}", soft_wrap=True)
    for server, why in problems.items():
        console.print(f"[red]mcp:{server} unavailable[/red]: {why}")


@app.command("call")
@report_errors
def call_tool(
    name: Annotated[str, typer.Argument(help="web_fetch, web_search or SERVER__TOOL.")],
    args: Annotated[str, typer.Option("--args", help="The arguments, a JSON object.")] = "{}",
    home: HomeOption = None,
    mcp_config: McpConfigOption = None,
) -> None:
    """Run one tool and print its result (exit status 1 if the tool failed)."""
    registry = _registry(home, mcp_config)

    async def run() -> Any:
        try:
            return await registry.call(await registry.find(name), args)
        finally:
            await registry.aclose()

    result = asyncio.run(run())
    typer.echo(result.content)
    if result.is_error:
        raise typer.Exit(1)


__all__ = ["app"]
