"""The MCP config file: the common ``mcpServers`` shape, plus this server's policy sections.

```json
{
  "mcpServers": {
    "calc": {"command": "python", "args": ["calc.py"], "env": {"TOKEN": "${CALC_TOKEN}"},
             "allowedTools": ["add"], "timeout": 10, "callsPerMinute": 30},
    "docs": {"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer ${DOCS_KEY}"},
             "allowedTools": ["*"], "deniedTools": ["delete_page"]}
  },
  "policy": {"allowedServers": ["calc", "docs"], "timeout": 30, "callsPerMinute": 120,
             "maxRounds": 4, "maxResultChars": 16000, "auditLog": "mcp-audit.jsonl"},
  "supervision": {"healthCheckInterval": 15, "startupTimeout": 30,
                  "restartBackoff": 1, "restartBackoffMax": 60}
}
```

Tools are denied unless allowed: a server without ``allowedTools`` offers none. ``${NAME}`` in
``env``, ``headers``, ``url`` and ``args`` is replaced from this process's environment at load,
so secrets need not live in the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)


class MCPConfigError(ValueError):
    """The config file cannot be used (the message says where and why)."""


_SERVER_KEYS = {"command", "args", "env", "cwd", "url", "headers", "type", "transport", "allowedTools",
                "deniedTools", "timeout", "callsPerMinute", "disabled"}
_POLICY_KEYS = {"allowedServers", "timeout", "callsPerMinute", "maxRounds", "maxResultChars", "auditLog"}
_SUPERVISION_KEYS = {"healthCheckInterval", "startupTimeout", "restartBackoff", "restartBackoffMax"}
_TRANSPORTS = {"stdio": "stdio", "http": "http", "streamable-http": "http", "streamable_http": "http",
               "streamableHttp": "http"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ServerSpec:
    name: str
    transport: str  # "stdio" | "http"
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # secret: never logged or returned
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # secret: never logged or returned
    allowed_tools: frozenset[str] = frozenset()  # "*" allows every tool the server lists
    denied_tools: frozenset[str] = frozenset()  # wins over allowed_tools
    timeout_s: float | None = None  # per call; None = the policy's
    calls_per_minute: int | None = None
    disabled: bool = False

    @property
    def target(self) -> str:
        """What this server is, safe to show: the command's file name or the URL's origin."""
        if self.transport == "stdio":
            return Path(self.command or "").name
        parts = urlsplit(self.url or "")
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class PolicyConfig:
    allowed_servers: frozenset[str] | None = None  # None = every configured server
    timeout_s: float = 30.0
    calls_per_minute: int | None = None  # over all servers; None = unlimited
    max_rounds: int = 4  # tool rounds of the server-side loop per request
    max_result_chars: int = 16000  # tool result text given to the model
    audit_log: str | None = None  # JSONL file; audit lines also go to the "vllm_mlx.mcp.audit" logger


@dataclass(frozen=True)
class SupervisionConfig:
    health_check_interval_s: float = 15.0
    startup_timeout_s: float = 30.0
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 60.0


@dataclass(frozen=True)
class MCPConfig:
    servers: dict[str, ServerSpec]
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)


def load_mcp_config(path: str | Path, environ: dict[str, str] | None = None) -> MCPConfig:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise MCPConfigError(f"cannot read the MCP config {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise MCPConfigError(f"the MCP config {path} is not valid JSON: {exc}") from exc
    return parse_mcp_config(data, os.environ if environ is None else environ)


def parse_mcp_config(data: Any, environ: dict[str, str]) -> MCPConfig:
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers"), dict):
        raise MCPConfigError('the MCP config must be an object with an "mcpServers" object')
    unknown = set(data) - {"mcpServers", "policy", "supervision"}
    if unknown:
        raise MCPConfigError(f"unknown top-level key(s) in the MCP config: {sorted(unknown)}")
    servers = {name: _server(name, body, environ) for name, body in data["mcpServers"].items()}
    policy = _section(data.get("policy"), "policy", _POLICY_KEYS)
    allowed = policy.get("allowedServers")
    if allowed is not None:
        if not _str_list(allowed):
            raise MCPConfigError("policy.allowedServers must be a list of server names")
        missing = set(allowed) - set(servers)
        if missing:
            raise MCPConfigError(f"policy.allowedServers names unknown server(s): {sorted(missing)}")
    audit = policy.get("auditLog")
    if audit is not None and not isinstance(audit, str):
        raise MCPConfigError("policy.auditLog must be a file path")
    sup = _section(data.get("supervision"), "supervision", _SUPERVISION_KEYS)
    return MCPConfig(
        servers=servers,
        policy=PolicyConfig(
            allowed_servers=None if allowed is None else frozenset(allowed),
            timeout_s=_number(policy, "timeout", 30.0, "policy"),
            calls_per_minute=_count(policy, "callsPerMinute", None, "policy"),
            max_rounds=_count(policy, "maxRounds", 4, "policy"),
            max_result_chars=_count(policy, "maxResultChars", 16000, "policy"),
            audit_log=audit,
        ),
        supervision=SupervisionConfig(
            health_check_interval_s=_number(sup, "healthCheckInterval", 15.0, "supervision"),
            startup_timeout_s=_number(sup, "startupTimeout", 30.0, "supervision"),
            restart_backoff_s=_number(sup, "restartBackoff", 1.0, "supervision"),
            restart_backoff_max_s=_number(sup, "restartBackoffMax", 60.0, "supervision"),
        ),
    )


def _server(name: str, body: Any, environ: dict[str, str]) -> ServerSpec:
    where = f"mcpServers.{name}"
    if not NAME_RE.match(name):
        raise MCPConfigError(f"{where}: server names may use letters, digits, '_' and '-' (at most 64)")
    if not isinstance(body, dict):
        raise MCPConfigError(f"{where} must be an object")
    unknown = set(body) - _SERVER_KEYS
    if unknown:  # other clients' keys (autoApprove, ...) are tolerated, not honoured
        logger.warning("%s: ignoring key(s) this server does not use: %s", where, sorted(unknown))
    kind = body.get("type", body.get("transport"))
    if kind is None:
        kind = "http" if "url" in body else "stdio"
    if kind not in _TRANSPORTS:
        raise MCPConfigError(f"{where}: transport {kind!r} is not supported (use stdio or streamable HTTP)")
    transport = _TRANSPORTS[kind]

    def expand(value: str, key: str) -> str:
        return _expand(value, f"{where}.{key}", environ)

    common = dict(
        allowed_tools=frozenset(_names(body, "allowedTools", where)),
        denied_tools=frozenset(_names(body, "deniedTools", where)),
        timeout_s=_number(body, "timeout", None, where),
        calls_per_minute=_count(body, "callsPerMinute", None, where),
        disabled=bool(body.get("disabled", False)),
    )
    if transport == "stdio":
        command = body.get("command")
        if not isinstance(command, str) or not command:
            raise MCPConfigError(f"{where}: a stdio server needs a \"command\"")
        args = body.get("args", [])
        if not _str_list(args):
            raise MCPConfigError(f"{where}.args must be a list of strings")
        return ServerSpec(name=name, transport="stdio", command=command,
                          args=tuple(expand(a, "args") for a in args),
                          env={k: expand(v, f"env.{k}") for k, v in _str_map(body, "env", where).items()},
                          cwd=body.get("cwd"), **common)
    url = body.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise MCPConfigError(f"{where}: a streamable HTTP server needs an http(s) \"url\"")
    return ServerSpec(name=name, transport="http", url=expand(url, "url"),
                      headers={k: expand(v, f"headers.{k}") for k, v in _str_map(body, "headers", where).items()},
                      **common)


def _expand(value: str, where: str, environ: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        if match.group(1) not in environ:
            raise MCPConfigError(f"{where} uses ${{{match.group(1)}}}, which is not set in the environment")
        return environ[match.group(1)]

    return _VAR.sub(one, value)


def _section(value: Any, name: str, keys: set[str]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MCPConfigError(f"{name} must be an object")
    unknown = set(value) - keys
    if unknown:
        raise MCPConfigError(f"unknown key(s) in {name}: {sorted(unknown)} (known: {sorted(keys)})")
    return value


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _names(body: dict, key: str, where: str) -> list[str]:
    value = body.get(key, [])
    if not _str_list(value):
        raise MCPConfigError(f"{where}.{key} must be a list of tool names")
    return value


def _str_map(body: dict, key: str, where: str) -> dict[str, str]:
    value = body.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise MCPConfigError(f"{where}.{key} must be an object of strings")
    return value


def _number(body: dict, key: str, default: float | None, where: str) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise MCPConfigError(f"{where}.{key} must be a positive number of seconds")
    return float(value)


def _count(body: dict, key: str, default: int | None, where: str) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MCPConfigError(f"{where}.{key} must be a positive integer")
    return value
