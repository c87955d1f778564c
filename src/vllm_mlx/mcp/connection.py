"""One configured MCP server: its connection, kept alive by a supervisor task.

The supervisor task owns the transport and the SDK's ``ClientSession`` (their context managers
must be entered and left in one task). It connects, initializes, lists the tools, then pings
every ``healthCheckInterval``; when the server dies (process exit, failed ping, broken
connection) it reconnects after a backoff that doubles up to ``restartBackoffMax`` and resets once
a connection has stayed healthy that long. Everything runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from .config import ServerSpec, SupervisionConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolInfo:
    server: str
    name: str
    description: str
    input_schema: dict


class ServerConnection:
    def __init__(self, spec: ServerSpec, supervision: SupervisionConfig):
        self.spec = spec
        self.sup = supervision
        self.status = "disabled" if spec.disabled else "starting"
        self.tools: dict[str, ToolInfo] = {}
        self.restarts = 0
        self.last_error: str | None = None
        self.connected_at: float | None = None
        self.server_info: dict | None = None
        self._session: Any = None
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._broken = asyncio.Event()  # a call saw the connection fail: reconnect now
        self._first_attempt = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if not self.spec.disabled and self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"mcp-{self.spec.name}")

    async def wait_first_attempt(self) -> None:
        if self._task is not None:
            await self._first_attempt.wait()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
        except Exception:  # noqa: BLE001 - it did not end by itself in time (or failed): cancel it
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.status = "stopped"

    # -- calls ------------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        return self._session if self.status == "ready" else None

    def mark_broken(self, error: str) -> None:
        """A call failed in a way that means the connection is gone."""
        self.last_error = error
        self._broken.set()

    # -- the supervisor ---------------------------------------------------------------------
    async def _supervise(self) -> None:
        backoff = self.sup.restart_backoff_s
        while not self._stop.is_set():
            began, repeated = time.monotonic(), False
            try:
                await self._connect_and_watch()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - anything the transport raises ends this connection
                error = _describe(exc)
                # the same failure again (a server that stays down) is logged once, then at debug level
                repeated = error == self.last_error and self.status == "restarting"
                self.last_error = error
                logger.log(logging.DEBUG if repeated else logging.WARNING, "MCP server %s: %s", self.spec.name, error)
            finally:
                self._session = None
                self.connected_at = None
                self._first_attempt.set()
            if self._stop.is_set():
                break
            if time.monotonic() - began >= self.sup.restart_backoff_max_s:
                backoff = self.sup.restart_backoff_s  # it had been healthy a while: start over
            self.status = "restarting"
            self.restarts += 1
            logger.log(logging.DEBUG if repeated else logging.WARNING, "MCP server %s: reconnecting in %.1f s "
                       "(restart %d)", self.spec.name, backoff, self.restarts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, self.sup.restart_backoff_max_s)
        self.status = "stopped"

    async def _connect_and_watch(self) -> None:
        from mcp import ClientSession

        async with contextlib.AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._transport())
            session = await stack.enter_async_context(ClientSession(read, write))
            async with asyncio.timeout(self.sup.startup_timeout_s):
                init = await session.initialize()
                tools = await _list_all_tools(session)
            info = getattr(init, "server_info", None)
            self.server_info = {"name": info.name, "version": info.version} if info else None
            self.tools = {t.name: ToolInfo(self.spec.name, t.name, t.description or "", dict(t.input_schema or {}))
                          for t in tools}
            self._broken.clear()
            self._session, self.status, self.connected_at = session, "ready", time.time()
            self._first_attempt.set()
            logger.info("MCP server %s ready: %d tool(s) %s", self.spec.name, len(self.tools), sorted(self.tools))
            await self._watch(session)

    async def _watch(self, session: Any) -> None:
        """Return when asked to stop; raise when the server stops answering."""
        while not self._stop.is_set():
            waits = [asyncio.create_task(self._stop.wait()), asyncio.create_task(self._broken.wait())]
            _, pending = await asyncio.wait(waits, timeout=self.sup.health_check_interval_s,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if self._stop.is_set():
                return
            if self._broken.is_set():
                raise ConnectionError(self.last_error or "the connection failed")
            async with asyncio.timeout(min(self.sup.health_check_interval_s, 10.0) + 5.0):
                await session.send_ping()

    def _transport(self):
        spec = self.spec
        if spec.transport == "stdio":
            from mcp import StdioServerParameters, stdio_client

            params = StdioServerParameters(command=spec.command, args=list(spec.args), env=dict(spec.env) or None,
                                           cwd=spec.cwd)
            return stdio_client(params, errlog=sys.stderr)
        from mcp.shared._httpx_utils import create_mcp_http_client

        return _http_transport(spec.url, create_mcp_http_client(headers=dict(spec.headers) or None))


@contextlib.asynccontextmanager
async def _http_transport(url: str, client: Any):
    from mcp.client.streamable_http import streamable_http_client

    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams[0], streams[1]


async def _list_all_tools(session: Any) -> list:
    from mcp.types import PaginatedRequestParams

    tools, cursor = [], None
    while True:
        page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools += page.tools
        cursor = getattr(page, "next_cursor", None)
        if not cursor:
            return tools


def _describe(exc: BaseException) -> str:
    """A one-line reason, unwrapping the exception groups the transports raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "timed out connecting"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
