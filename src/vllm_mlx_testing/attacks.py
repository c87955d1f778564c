"""Hostile clients, for the reliability tests and ``scripts/soak.py --attacks``.

Each driver talks to a server over loopback only and returns what it observed; what the *server*
held meanwhile is measured from the outside (:func:`rss_mb` of its process, :class:`HealthProbe` for
the latency of ``/health``). docs/reliability.md lists the attacks, the bounds and the figures.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx


def rss_mb(pid: int) -> float:
    """Resident memory of a process now, in MiB (Linux /proc)."""
    return _status_mb(pid, "VmRSS")


def _status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def reset_peak_rss(pid: int) -> None:
    """Start measuring a process's peak resident memory afresh (Linux: clear_refs 5 resets VmHWM)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory since :func:`reset_peak_rss`, in MiB (catches what was freed)."""
    return _status_mb(pid, "VmHWM")


@dataclass
class HealthProbe:
    """Polls ``/health`` from a thread of its own while an attack runs (``with HealthProbe(url): ...``)."""

    url: str
    interval_s: float = 0.05
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    status = client.get("/health").status_code
                    self.latencies.append(time.perf_counter() - t0)
                    if status != 200:
                        self.failures.append(f"/health {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                self._stop.wait(self.interval_s)

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# -- slow clients (slowloris) ---------------------------------------------------------------------------
SLOW_KINDS = ("silent", "headers", "body")


def _slow_client(host: str, port: int, kind: str, drip_s: float, give_up_s: float, out: list, i: int) -> None:
    """One connection that is silent, sends its headers a byte at a time, or drips its body."""
    started = time.monotonic()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    if kind == "body":
        to_send = head + b"content-length: 4096\r\n\r\n" + b" " * 4096
    elif kind == "headers":
        to_send = head + b"x-slow: " + b"a" * 4096
    else:
        to_send = b""
    sent = 0
    try:
        with socket.create_connection((host, port), timeout=give_up_s) as sock:
            if kind == "body":  # the headers at once, then the body a byte at a time
                sock.sendall(head + b"content-length: 4096\r\n\r\n")
                sent = len(head) + len(b"content-length: 4096\r\n\r\n")
            while time.monotonic() - started < give_up_s:
                sock.settimeout(drip_s)
                try:
                    data = sock.recv(4096)
                    status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
                    out[i] = (status, time.monotonic() - started)
                    return
                except socket.timeout:
                    pass
                if sent < len(to_send):
                    sock.send(to_send[sent:sent + 1])
                    sent += 1
            out[i] = ("open", time.monotonic() - started)
    except OSError as exc:
        out[i] = (f"reset:{type(exc).__name__}", time.monotonic() - started)


def slow_connections(host: str, port: int, count: int = 50, drip_s: float = 0.25,
                     give_up_s: float = 30.0) -> list[tuple[str, str, float]]:
    """``count`` slow connections, spread over the three kinds; (kind, what ended it, seconds) each.
    What ended it: an HTTP status the server sent, "closed" (no bytes), "reset:...", or "open"."""
    out: list = [None] * count
    kinds = [SLOW_KINDS[i % len(SLOW_KINDS)] for i in range(count)]
    threads = [threading.Thread(target=_slow_client, args=(host, port, k, drip_s, give_up_s, out, i), daemon=True)
               for i, k in enumerate(kinds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(give_up_s + 10)
    return [(k, *(o or ("open", give_up_s))) for k, o in zip(kinds, out)]


# -- a client that stops reading ------------------------------------------------------------------------
def stalled_stream(host: str, port: int, path: str, body: dict, headers: dict | None = None) -> socket.socket:
    """Send a streaming request and never read the answer (a tiny receive buffer); the caller closes it."""
    data = json.dumps(body).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(head.encode() + b"\r\n" + data)
    return sock


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    """Read whatever is buffered; True when the server has closed the connection (EOF or reset)."""
    deadline = time.monotonic() + timeout_s
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 16):
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


# -- text that is not Unicode ---------------------------------------------------------------------------
LONE = "\\ud800"  # as written inside a JSON string


def surrogate_requests() -> list[tuple[str, str, bytes]]:
    """(field, path, raw JSON body) with a lone surrogate in one text field each."""
    hi = '[{"role": "user", "content": "hi"}]'
    tool = '{"type": "function", "function": {"name": "%s", "description": "%s", "parameters": {"type": "object"}}}'
    cases = {
        "chat content": ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "%s"}]}' % LONE),
        "chat system": ("/v1/chat/completions", '{"messages": [{"role": "system", "content": "a%s"}, '
                                                '{"role": "user", "content": "hi"}]}' % LONE),
        "chat content part": ("/v1/chat/completions", '{"messages": [{"role": "user", "content": '
                                                      '[{"type": "text", "text": "%s"}]}]}' % LONE),
        "chat stop": ("/v1/chat/completions", '{"messages": %s, "stop": ["%s"]}' % (hi, LONE)),
        "tool name": ("/v1/chat/completions", '{"messages": %s, "tools": [%s]}' % (hi, tool % (LONE, "d"))),
        "tool description": ("/v1/chat/completions", '{"messages": %s, "tools": [%s]}' % (hi, tool % ("f", LONE))),
        "regex grammar": ("/v1/chat/completions", '{"messages": %s, "guided_regex": "a%s"}' % (hi, LONE)),
        "schema key": ("/v1/chat/completions", '{"messages": %s, "response_format": {"type": "json_schema", '
                                               '"json_schema": {"name": "x", "schema": {"type": "object", '
                                               '"properties": {"%s": {"type": "string"}}}}}}' % (hi, LONE)),
        "completions prompt": ("/v1/completions", '{"prompt": "%s"}' % LONE),
        "completions prompt list": ("/v1/completions", '{"prompt": ["ok", "%s"]}' % LONE),
        "responses input": ("/v1/responses", '{"input": "%s"}' % LONE),
        "responses instructions": ("/v1/responses", '{"input": "hi", "instructions": "%s"}' % LONE),
        "messages content": ("/v1/messages", '{"max_tokens": 4, "messages": [{"role": "user", "content": "%s"}]}'
                             % LONE),
        "messages system": ("/v1/messages", '{"max_tokens": 4, "system": "%s", "messages": %s}' % (LONE, hi)),
        "messages tool name": ("/v1/messages", '{"max_tokens": 4, "messages": %s, "tools": [{"name": "%s", '
                                               '"input_schema": {"type": "object"}}]}' % (hi, LONE)),
        "count_tokens": ("/v1/messages/count_tokens", '{"messages": [{"role": "user", "content": "%s"}]}' % LONE),
        "low surrogate alone": ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\udc00"}]}'),
    }
    out = [(name, path, body.encode()) for name, (path, body) in cases.items()]
    out.append(("encoded surrogate bytes", "/v1/chat/completions",
                b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'))
    return out


# -- all of them at once, on a loop (scripts/soak.py --attacks) ------------------------------------------
def attack_loop(url: str, api_key: str | None, stop, results, huge_mb: float = 10.0) -> None:
    """Until ``stop`` is set: a client that stops reading a large stream (kept open, a new one every
    round), 24 slow or silent connections, two huge prompts and every lone-surrogate request. Puts a
    tally on ``results``: what the server answered, and every answer that was not the bound's."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
    huge = "hello world " * int(huge_mb * 2**20 / 12)
    stalled = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "n": 16,
               "stream": True, "logprobs": True, "top_logprobs": 20, "ignore_eos": True}
    tally = {"rounds": 0, "stalled_streams": 0, "slow_connections": 0, "huge_prompts": 0, "surrogate_requests": 0,
             "huge_prompt_max_s": 0.0, "unexpected": []}
    slow: list[threading.Thread] = []
    slow_results: list = []
    sockets: list[socket.socket] = []

    def slow_batch() -> None:
        slow_results.extend(slow_connections(host, port, count=24, drip_s=0.5, give_up_s=180))

    with httpx.Client(base_url=url, headers=auth, timeout=300) as client:
        while not stop.is_set():
            tally["rounds"] += 1
            sockets.append(stalled_stream(host, port, "/v1/chat/completions", stalled, auth))
            tally["stalled_streams"] += 1
            if len(sockets) > 4:
                sockets.pop(0).close()
            if not any(t.is_alive() for t in slow):
                slow = [threading.Thread(target=slow_batch, daemon=True)]
                slow[0].start()
            for _ in range(2):
                t0 = time.monotonic()
                resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": huge}]})
                tally["huge_prompts"] += 1
                tally["huge_prompt_max_s"] = max(tally["huge_prompt_max_s"], round(time.monotonic() - t0, 2))
                if resp.status_code != 400:
                    tally["unexpected"].append(f"huge prompt: HTTP {resp.status_code}")
            for name, path, body in surrogate_requests():
                resp = client.post(path, content=body, headers={"content-type": "application/json"})
                tally["surrogate_requests"] += 1
                if resp.status_code != 400:
                    tally["unexpected"].append(f"surrogate in {name}: HTTP {resp.status_code}")
            stop.wait(1.0)
    for s in sockets:
        s.close()
    for t in slow:
        t.join(200)
    tally["slow_connections"] = len(slow_results)
    tally["unexpected"] += [f"slow {kind} connection left open" for kind, end, _ in slow_results if end == "open"]
    tally["unexpected"] = tally["unexpected"][:20]
    results.put(tally)
