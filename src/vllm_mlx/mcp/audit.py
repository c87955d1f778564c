"""Audit records of MCP tool calls: one JSON object per call, to a log line and optionally a file.

A record names who asked (``source``: "execute" route or "chat" loop, and the request id), the
server and tool, the outcome and how long it took. Argument *values* are not recorded (they may
hold user data); their keys and a SHA-256 digest are. Server env and headers never appear.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

audit_logger = logging.getLogger("vllm_mlx.mcp.audit")


def arguments_digest(arguments: Any) -> dict:
    blob = json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str).encode()
    keys = sorted(arguments) if isinstance(arguments, dict) else []
    return {"keys": keys, "sha256": hashlib.sha256(blob).hexdigest()}


class AuditLog:
    def __init__(self, path: str | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, *, source: str, request_id: str | None, server: str | None, tool: str, arguments: Any,
               outcome: str, status: int, duration_ms: float, error: str | None = None,
               result_chars: int | None = None) -> dict:
        now = time.time()
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            "event": "mcp_tool_call",
            "source": source,
            "request_id": request_id,
            "server": server,
            "tool": tool,
            "arguments": arguments_digest(arguments),
            "outcome": outcome,
            "status": status,
            "duration_ms": round(duration_ms, 1),
        }
        if error is not None:
            entry["error"] = error
        if result_chars is not None:
            entry["result_chars"] = result_chars
        line = json.dumps(entry, ensure_ascii=False)
        audit_logger.info("%s", line)
        if self.path is not None:
            with self._lock, self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        return entry
