"""A small MCP server for the test suite (stdio by default, streamable HTTP with --http PORT).

Tools: ``add(a, b)``, ``slow(seconds)``, ``fail()``, ``crash()`` (ends the process just after answering, for restart tests) and
``delete_everything()`` (which the test policy denies); ``token_header()`` tells which X-Token header
a streamable HTTP request carried.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("demo")


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> int:
    return a + b


@server.tool(description="Sleep for the given number of seconds, then say so.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds} s"


@server.tool(description="End this server process shortly after answering (for restart tests).")
def crash() -> str:
    threading.Timer(0.2, os._exit, args=(3,)).start()
    return "crashing"


@server.tool(description="Always fails (the tool reports an error).")
def fail() -> str:
    raise ToolError("this tool always fails")


@server.tool(description="The X-Token header this request came with (streamable HTTP only).")
def token_header(ctx: Context) -> str:
    return (ctx.headers or {}).get("x-token", "none")


@server.tool(description="A dangerous tool the policy must never let through.")
def delete_everything() -> str:
    return "everything deleted"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=None, help="serve streamable HTTP on this port")
    args = parser.parse_args()
    if args.http:
        server.run(transport="streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run()
