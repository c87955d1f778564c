"""Helpers for driving real client programs against the server: finding them, a throwaway home,
a proxy that refuses (and logs) every outbound connection, strace for the clients that ignore
proxies, and the server's own evidence (request log, the conversations the model received)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_DIR = ROOT / ".clients"
ARTIFACTS = ROOT / "test-artifacts" / "clients"
PROMPT = "Please run the marker command and tell me what it printed."
ANSWER = "The command printed MARKER_42."
UNEVALUATED = "MARKER_$((6*7))"

# Where scripts/install-clients.sh puts each client (searched before PATH).
LOCAL_BINS = {
    "claude": "npm/node_modules/.bin/claude",
    "codex": "npm/node_modules/.bin/codex",
    "opencode": "npm/node_modules/.bin/opencode",
    "cn": "npm/node_modules/.bin/cn",
    "qwen": "npm/node_modules/.bin/qwen",
    "llm": "llm/bin/llm",
    "aider": "aider/bin/aider",
    "open-webui": "open-webui/bin/open-webui",
}
# Variables that could point a client somewhere else or leak real credentials.
SCRUBBED = re.compile(r"^(OPENAI_|ANTHROPIC_|CLAUDE_|CODEX_|OPENCODE_|QWEN_|GEMINI_|CONTINUE_|LLM_|AIDER_|"
                      r"HTTPS?_PROXY$|ALL_PROXY$|NO_PROXY$|XDG_)", re.IGNORECASE)


def find_client(name: str) -> str | None:
    local = CLIENTS_DIR / LOCAL_BINS.get(name, name)
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def client_version(binary: str, *args: str) -> str:
    try:
        out = subprocess.run([binary, *(args or ("--version",))], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, env={**os.environ, "HOME": "/tmp"})
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace(key, value)
    return template


class NoEgressProxy:
    """An HTTP(S) proxy on 127.0.0.1 that answers 403 to everything and remembers what was asked."""

    def __init__(self):
        self.attempts: list[str] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    head = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                    self.attempts.append(head)
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def env(self) -> dict[str, str]:
        names = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
        values = {n: self.url for n in names} | {n.lower(): self.url for n in names}
        return values | {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def close(self) -> None:
        self._sock.close()


def sandbox_env(home: Path, proxy: NoEgressProxy | None, **extra: str) -> dict[str, str]:
    """The client's environment: a throwaway home, every proxy variable at the refusing proxy
    (``proxy=None`` for a client that sends even 127.0.0.1 through a proxy: strace alone watches it)."""
    env = {k: v for k, v in os.environ.items() if not SCRUBBED.match(k)}
    for sub in ("config", "cache", "data", "state"):
        (home / f".{sub}").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
               XDG_DATA_HOME=str(home / ".data"), XDG_STATE_HOME=str(home / ".state"),
               DO_NOT_TRACK="1", NO_COLOR="1", TERM="dumb", CI="1")
    if proxy is not None:
        env.update(proxy.env())
    env.update(extra)
    return env


_CONNECT = re.compile(r'connect\(\d+, \{sa_family=AF_INET6?, (?:sin6?_port=htons\((\d+)\)), .*?'
                      r'(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")')
LOCAL_ADDRS = ("127.", "::1", "::ffff:127.")


def outbound_connects(strace_log: Path) -> list[str]:
    """Every inet connect() in an strace log whose address is not this machine."""
    out = []
    for line in strace_log.read_text(errors="replace").splitlines():
        m = _CONNECT.search(line)
        if m:
            addr = m.group(2) or m.group(3)
            if not addr.startswith(LOCAL_ADDRS):
                out.append(f"{addr}:{m.group(1)}")
    return out


@dataclass
class ClientRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    outbound: list[str] = field(default_factory=list)  # strace: connects that left the machine

    def tail(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def run_client(cmd: list[str], *, env: dict, cwd: Path, timeout: float = 240, trace: bool = True,
               stdin: str | None = None) -> ClientRun:
    """Run a client to completion; under strace (connect calls only) when strace exists. The client
    runs in a process group of its own: whatever it leaves behind (or all of it, on a timeout) is ended."""
    strace = shutil.which("strace") if trace else None
    log = cwd / "connects.strace"
    full = [strace, "-f", "-qq", "-e", "trace=connect", "-o", str(log), *cmd] if strace else cmd
    env = {**env, "PWD": str(cwd)}  # some clients take their project folder from $PWD
    start = time.monotonic()
    proc = start_group(full, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    finally:
        stop_group(proc, timeout=5)
    seconds = time.monotonic() - start
    return ClientRun(proc.returncode, stdout, stderr, seconds,
                     outbound_connects(log) if strace and log.exists() else [])


def start_group(cmd: list[str], **popen_kwargs) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new process group, which its children join: :func:`stop_group`
    then ends all of them, not only the process started (strace, a launcher script)."""
    return subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group; from /proc where there is one."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """End the process group led by ``proc`` (from :func:`start_group`): SIGTERM to every member, then
    SIGKILL to those still there after ``timeout`` s. Terminating the leader alone is not enough: strace
    detaches and exits on SIGTERM, leaving the traced program (Open WebUI: ~1.2 GB) running."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader
            if proc.returncode is not None and not group_members(pgid):
                return
            time.sleep(0.1)
    proc.poll()


class Evidence:
    """What the server saw during one client run: request-log lines and model transcripts."""

    def __init__(self, requests: list[dict], conversations: list[dict]):
        self.requests = requests
        self.conversations = conversations

    def generation_requests(self) -> list[dict]:
        return [r for r in self.requests if isinstance(r.get("body"), dict) and r["method"] == "POST"
                and any(p in r["path"] for p in ("/chat/completions", "/messages", "/responses"))
                and "count_tokens" not in r["path"]]

    def protocols(self) -> list[str]:
        seen = []
        for r in self.generation_requests():
            path = r["path"].split("?")[0]
            if path not in seen:
                seen.append(path)
        return seen

    def tool_call_made(self) -> dict | None:
        return next((c for c in self.conversations if c["kind"] == "tool_call"), None)

    def marker_came_back(self) -> bool:
        """A conversation the model answered held the shell-evaluated marker as a tool result."""
        return any(c["kind"] == "answer" and c["reply"] == ANSWER for c in self.conversations)

    def facts(self) -> dict:
        gen = self.generation_requests()
        bodies = [r["body"] for r in gen]
        return {
            "protocol": ", ".join(self.protocols()),
            "streaming": any(b.get("stream") for b in bodies),
            "system_prompt": any(b.get("system") for b in bodies),
            "tools_offered": max((len(b.get("tools") or []) for b in bodies), default=0),
            "auth": sorted({r["auth"] for r in gen}),
            "requests": len(self.requests),
            "user_agent": gen[0]["user_agent"] if gen else "",
            "images": sum(b.get("images", 0) for b in bodies),
        }


def read_jsonl(path: Path, offset: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def check_offline(run: ClientRun, proxy: NoEgressProxy, refused_ok: tuple[str, ...] = (),
                  dns_ok: bool = False) -> list[str]:
    """Nothing connected off this machine (strace); every proxy attempt was refused, and only the
    client housekeeping hosts in ``refused_ok`` were even attempted.  ``dns_ok``: the client's own
    update check resolves a name (a DNS query, no connection follows offline).  Returns what was
    attempted and stopped."""
    outbound = [c for c in run.outbound if not (dns_ok and c.endswith(":53"))]
    assert not outbound, f"the client connected off this machine: {outbound}"
    unexpected = [a for a in proxy.attempts if not any(f" {host}:" in a or f"//{host}" in a for host in refused_ok)]
    assert not unexpected, f"the client tried to reach the network through the proxy: {unexpected}"
    return list(proxy.attempts) + [f"DNS query ({c})" for c in run.outbound if c not in outbound]


def check_agent_round_trip(run: ClientRun, evidence: Evidence, proxy: NoEgressProxy, output: str,
                           refused_ok: tuple[str, ...] = (), dns_ok: bool = False) -> list[str]:
    """Clean exit; the shell tool ran and its evaluated output came back to the model; the final
    answer reached the client's output; nothing left the machine."""
    kinds = [c["kind"] for c in evidence.conversations]
    assert run.returncode == 0, run.tail()
    call = evidence.tool_call_made()
    assert call is not None, f"the model never called a tool (conversation kinds {kinds})\n{run.tail()}"
    assert UNEVALUATED in call["reply"]
    assert evidence.marker_came_back(), (
        f"MARKER_42 never came back as a tool result (kinds {kinds}; "
        f"last answer {[c['reply'] for c in evidence.conversations if c['kind'] == 'answer'][-1:]})\n{run.tail()}")
    assert ANSWER in output, f"the final answer is not in the client's output\n{run.tail()}"
    return check_offline(run, proxy, refused_ok, dns_ok)
