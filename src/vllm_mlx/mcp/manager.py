"""The MCP servers of this process: discovery, status, and the one way to call a tool.

:meth:`MCPManager.execute` is used by ``POST /v1/mcp/execute`` and by the server-side chat
loop alike, so both go through the same policy, timeout and audit record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditLog
from .config import MCPConfig
from .connection import ServerConnection, ToolInfo
from .policy import ToolCallError, ToolPolicy

logger = logging.getLogger(__name__)

QUALIFIER = "__"  # "server__tool": a tool named with its server


@dataclass
class ToolResult:
    server: str
    tool: str
    is_error: bool
    content: list[dict] = field(default_factory=list)
    structured_content: Any = None
    duration_ms: float = 0.0

    @property
    def text(self) -> str:
        """The result as text for a model: text parts, else the structured result as JSON."""
        parts = []
        for item in self.content:
            kind = item.get("type")
            if kind == "text":
                parts.append(item.get("text", ""))
            elif kind == "resource" and isinstance(item.get("resource"), dict) and "text" in item["resource"]:
                parts.append(item["resource"]["text"])
            else:
                parts.append(f"[{kind} content omitted]")
        if not parts and self.structured_content is not None:
            parts.append(json.dumps(self.structured_content, ensure_ascii=False))
        return "\n".join(parts)

    def model_text(self, limit: int) -> str:
        text = self.text
        if len(text) > limit:
            text = text[:limit] + f"\n[truncated: {len(self.text) - limit} more characters]"
        return f"Error: {text}" if self.is_error else text

    def as_json(self) -> dict:
        return {"server": self.server, "tool": self.tool, "is_error": self.is_error, "content": self.content,
                "structured_content": self.structured_content, "text": self.text,
                "duration_ms": round(self.duration_ms, 1)}


class MCPManager:
    def __init__(self, config: MCPConfig):
        self.config = config
        self.policy = ToolPolicy(config)
        self.audit = AuditLog(config.policy.audit_log)
        self.connections = {name: ServerConnection(spec, config.supervision) for name, spec in config.servers.items()}

    @property
    def max_rounds(self) -> int:
        return self.config.policy.max_rounds

    async def start(self) -> None:
        """Start every server and wait (bounded) for each first connection attempt; failures are
        logged and retried in the background, they do not stop this server."""
        for conn in self.connections.values():
            conn.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(c.wait_first_attempt() for c in self.connections.values())),
                                   timeout=self.config.supervision.startup_timeout_s + 5)
        except TimeoutError:
            pass
        for name, conn in self.connections.items():
            if conn.status == "ready":
                denied = sorted(t for t in conn.tools if not self.policy.tool_allowed(name, t))
                if denied:
                    logger.info("MCP server %s: tool(s) not allowed by the policy: %s", name, denied)
            elif conn.status != "disabled":
                logger.warning("MCP server %s is not ready (%s): %s", name, conn.status, conn.last_error)

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.connections.values()), return_exceptions=True)

    # -- what there is ----------------------------------------------------------------------
    def servers_status(self) -> list[dict]:
        out = []
        for name, conn in self.connections.items():
            out.append({
                "name": name,
                "transport": conn.spec.transport,
                "target": conn.spec.target,
                "status": conn.status,
                "allowed": self.policy.server_allowed(name),
                "tools": len(conn.tools),
                "allowed_tools": sum(self.policy.tool_allowed(name, t) for t in conn.tools),
                "restarts": conn.restarts,
                "last_error": conn.last_error,
                "connected_since": conn.connected_at,
                "server_info": conn.server_info,
            })
        return out

    def allowed_tools(self) -> list[ToolInfo]:
        """Tools that may be called now: allowed by the policy, on a connected server."""
        return [t for conn in self.connections.values() if conn.status == "ready"
                for t in conn.tools.values() if self.policy.tool_allowed(t.server, t.name)]

    def denied_tools(self) -> list[ToolInfo]:
        """Tools of connected servers that the policy does not allow."""
        return [t for conn in self.connections.values() if conn.status == "ready"
                for t in conn.tools.values() if not self.policy.tool_allowed(t.server, t.name)]

    def resolve(self, tool: str, server: str | None = None) -> ToolInfo:
        if server is None and QUALIFIER in tool:
            maybe_server, _, bare = tool.partition(QUALIFIER)
            if maybe_server in self.connections and bare in self.connections[maybe_server].tools:
                server, tool = maybe_server, bare
        if server is not None:
            conn = self.connections.get(server)
            if conn is None:
                raise ToolCallError(404, f"there is no MCP server '{server}'", "server_not_found", "server")
            if tool not in conn.tools:
                raise ToolCallError(404, f"the MCP server '{server}' has no tool '{tool}'", "tool_not_found", "tool")
            return conn.tools[tool]
        found = [c.tools[tool] for c in self.connections.values() if tool in c.tools]
        if not found:
            raise ToolCallError(404, f"no MCP server has a tool '{tool}'", "tool_not_found", "tool")
        if len(found) > 1:
            raise ToolCallError(400, f"several MCP servers have a tool '{tool}' "
                                f"({', '.join(t.server for t in found)}): name the server", "ambiguous_tool", "server")
        return found[0]

    # -- calling ----------------------------------------------------------------------------
    async def execute(self, tool: str, arguments: Any, *, server: str | None = None, source: str = "execute",
                      request_id: str | None = None) -> ToolResult:
        """Run one tool call through the policy; raises :class:`ToolCallError` when refused or failed.

        A tool that runs and reports an error is a result with ``is_error`` (not an exception)."""
        began = time.monotonic()
        audit = dict(source=source, request_id=request_id, server=server, tool=tool, arguments=arguments)
        try:
            info = self.resolve(tool, server)
            audit.update(server=info.server, tool=info.name)
            self.policy.check(info.server, info.name, arguments, info.input_schema)
            result = await self._call(info, arguments)
        except ToolCallError as exc:
            self.audit.record(**audit, outcome=exc.code, status=exc.status, error=exc.message,
                              duration_ms=(time.monotonic() - began) * 1000)
            raise
        result.duration_ms = (time.monotonic() - began) * 1000
        self.audit.record(**audit, outcome="tool_error" if result.is_error else "ok", status=200,
                          duration_ms=result.duration_ms, result_chars=len(result.text))
        return result

    async def _call(self, info: ToolInfo, arguments: dict) -> ToolResult:
        from mcp.shared.exceptions import MCPError

        conn = self.connections[info.server]
        session = conn.session
        if session is None:
            raise ToolCallError(503, f"the MCP server '{info.server}' is not connected ({conn.status})",
                                "mcp_server_unavailable")
        timeout = self.policy.timeout(info.server)
        try:
            async with asyncio.timeout(timeout):
                raw = await session.call_tool(info.name, arguments)
        except TimeoutError:
            raise ToolCallError(504, f"the MCP tool '{info.name}' did not answer within {timeout:g} s",
                                "tool_timeout") from None
        except MCPError as exc:
            if "closed" in str(exc).lower():
                conn.mark_broken(f"connection lost during a call: {exc}")
            raise ToolCallError(502, f"the MCP server '{info.server}' failed the call: {exc}",
                                "mcp_server_error") from exc
        except Exception as exc:  # noqa: BLE001 - transport failures
            conn.mark_broken(f"{type(exc).__name__}: {exc}")
            raise ToolCallError(502, f"the MCP server '{info.server}' failed the call: {type(exc).__name__}",
                                "mcp_server_error") from exc
        content = [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in raw.content or []]
        return ToolResult(info.server, info.name, bool(raw.is_error), content, raw.structured_content)
