"""An MCP server for tests, written with the `mcp` SDK: its tools answer values no model
could guess, and some misbehave on purpose (crash the process, hang, fail, flood).

    python tests/support/mcp_fixture.py stdio       # over stdin/stdout
    with mcp_http_server() as url: ...                # streamable HTTP on loopback
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("kronk-test-fixture", log_level="CRITICAL")


def vault_code(name: str) -> str:
    """What `vault_lookup` answers: a digest no model could produce by guessing."""
    return "VAULT-" + hashlib.sha256(f"kronk:{name}".encode()).hexdigest()[:12].upper()


@server.tool()
def vault_lookup(name: str) -> str:
    """Look up the secret vault code stored under a name."""
    return vault_code(name)


@server.tool()
def crash() -> str:
    """Stop the server process at once (as a crash would)."""
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never answer."""
    await asyncio.Event().wait()
    return "unreachable"


@server.tool()
async def hold(marker: str) -> str:
    """Write "started" to the file `marker` and wait; when the call is cancelled, write
    "cancelled" there (so a test sees the cancellation reach the server)."""
    path = Path(marker)
    path.write_text("started")
    try:
        await asyncio.Event().wait()
    except BaseException:
        path.write_text("cancelled")
        raise
    return "unreachable"


@server.tool()
def fail() -> str:
    """Fail with an error the client sees."""
    raise ToolError("the fixture failed on purpose")


@server.tool()
def flood() -> str:
    """Answer far more text than any tool should."""
    return "x" * 500_000


@contextmanager
def mcp_http_server() -> Iterator[str]:
    """The fixture over streamable HTTP on a free loopback port; yields its URL. The
    socket listens before uvicorn starts, so the first request simply waits in the
    backlog: no readiness polling."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        http.should_exit = True
        thread.join(10)
        sock.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["stdio"]:
        server.run("stdio")
