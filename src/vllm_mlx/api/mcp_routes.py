"""MCP routes: list servers and tools, and execute a tool — all through the one policy.

Refusals use the OpenAI error shape: unknown tool/server 404, not allowed 403, arguments that do
not match the tool's schema 400, call limit 429, server not connected 503, tool timeout 504,
server failure 502. A tool that runs and reports an error is a 200 with ``is_error: true``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ..mcp import MCPManager, ToolCallError
from .errors import APIError
from ..serving.requests import new_id

router = APIRouter()


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: str | None = None
    tool: str
    arguments: dict[str, Any] | None = None


def mcp_manager(raw: Request) -> MCPManager | None:
    return getattr(raw.app.state, "mcp", None)


async def start_mcp(config_path: str | None) -> MCPManager | None:
    """The MCP servers of --mcp-config, started (on this event loop) and discovered."""
    if not config_path:
        return None
    from ..mcp import load_mcp_config

    manager = MCPManager(load_mcp_config(config_path))
    await manager.start()
    return manager


def api_error(exc: ToolCallError) -> APIError:
    return APIError(exc.status, exc.message, param=exc.param, code=exc.code)


@router.get("/v1/mcp/servers")
async def list_servers(raw: Request) -> dict:
    manager = mcp_manager(raw)
    return {"object": "list", "data": manager.servers_status() if manager else []}


@router.get("/v1/mcp/tools")
async def list_tools(raw: Request) -> dict:
    """The tools that may be called now (allowed by the policy, on a connected server)."""
    manager = mcp_manager(raw)
    tools = manager.allowed_tools() if manager else []
    return {"object": "list", "data": [
        {"server": t.server, "name": t.name, "description": t.description, "input_schema": t.input_schema}
        for t in tools]}


@router.post("/v1/mcp/execute")
async def execute(body: ExecuteRequest, raw: Request) -> dict:
    manager = mcp_manager(raw)
    if manager is None:
        raise APIError(404, f"no MCP tool '{body.tool}': this server has no MCP servers (--mcp-config)",
                       param="tool", code="tool_not_found")
    request_id = new_id("mcpcall")
    try:
        result = await manager.execute(body.tool, body.arguments if body.arguments is not None else {},
                                       server=body.server, source="execute", request_id=request_id)
    except ToolCallError as exc:
        raise api_error(exc) from None
    return {"id": request_id, "object": "mcp.tool_result", **result.as_json()}
