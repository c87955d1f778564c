"""MCP (Model Context Protocol) tools served to chat requests, through one permission policy.

* ``config`` -- the ``--mcp-config`` file (``mcpServers`` plus ``policy`` and ``supervision``).
* ``connection`` -- one server's connection, kept alive (health checks, restart with backoff).
* ``policy`` / ``audit`` -- allow-lists, argument validation, limits; the audit record.
* ``manager`` -- all servers; :meth:`MCPManager.execute` is the only way a tool is called.
"""

from .config import MCPConfig, MCPConfigError, load_mcp_config
from .manager import MCPManager, ToolResult
from .policy import ToolCallError

__all__ = ["MCPConfig", "MCPConfigError", "MCPManager", "ToolCallError", "ToolResult", "load_mcp_config"]
