#!/usr/bin/env python3
"""Soak test: many concurrent streaming clients, some of which hang up mid-stream, against a server.

    python scripts/soak.py --url http://127.0.0.1:8000 --clients 200 --duration 120 --disconnect 0.3

Each client sends streaming chat completions back to back until the time is up; a ``--disconnect``
fraction of the requests is abandoned after a few chunks (the connection is closed). Meanwhile
/health is polled for its latency. Afterwards the script checks, and exits 1 if any check fails:

* the server is up (/health 200) and was never unhealthy;
* every stream read to its end is intact: JSON chunks, the role first, one finish_reason, the
  usage chunk agreeing with max_tokens on "length", then ``[DONE]``; no error event, no HTTP error;
* the engine returns to idle: running, waiting and prefilling requests, decode-batch rows and the
  memory admission's reservations all back to 0;
* the prefix cache holds nothing in use: after /v1/cache/clear it is empty, and MLX's active memory
  is back within --mlx-growth-mb of what it was before the run (cleared the same way);
* the process's resident memory grew by at most --rss-growth-mb from the end of the first round to the
  end of the last (the first round fills the caches and allocator pools to their working size; the
  same load again must not grow them: that is what a leak would do), plus whatever more the prefix
  cache held at the end of the last round than at the end of the first (it is emptied between
  rounds, but freed pages stay with the process);
* /health p99 latency during the run is under --health-p99-ms.

With ``--attacks`` (the long form of tests/test_bounds_*.py), each round also runs hostile clients in a
process of their own (vllm_mlx_testing.attacks.attack_loop): clients that stop reading a large
stream, slow and silent connections, 10 MB prompts and lone-surrogate requests. Every one must get
its bound's answer (400s, closed connections), and the checks above -- memory, /health, idle engine --
must hold with them running.

The summary (figures and checks) is printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import sys
import time

import httpx


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="base URL of a running server")
    p.add_argument("--api-key", default="soak")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load per round")
    p.add_argument("--disconnect", type=float, default=0.3, help="fraction of requests abandoned mid-stream")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--idle-timeout", type=float, default=60.0, help="seconds allowed to return to idle")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds of --duration seconds each; memory growth is measured from the end of the first")
    p.add_argument("--rss-growth-mb", type=float, default=32.0, help="bound on RSS growth after the first round")
    p.add_argument("--mlx-growth-mb", type=float, default=16.0)
    p.add_argument("--health-p99-ms", type=float, default=500.0)
    p.add_argument("--attacks", action="store_true",
                   help="run hostile clients beside the load in every round (docs/reliability.md)")
    return p.parse_args(argv)


class Tally:
    def __init__(self):
        self.started = self.completed = self.disconnected = self.http_errors = 0
        self.broken: list[str] = []
        self.tokens = 0


def check_stream(lines: list[str], max_tokens: int) -> str | None:
    """Why a fully read chat-completion stream is not intact, or None."""
    if not lines or lines[-1] != "data: [DONE]":
        return "no [DONE] at the end"
    chunks = []
    for line in lines[:-1]:
        if not line.startswith("data: "):
            return f"not an SSE data line: {line[:80]!r}"
        chunk = json.loads(line[6:])
        if "error" in chunk:
            return f"error event: {chunk['error']}"
        chunks.append(chunk)
    if not chunks or chunks[0]["choices"][0]["delta"].get("role") != "assistant":
        return "the first chunk does not carry the role"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    if len(finishes) != 1 or finishes[0] not in ("stop", "length"):
        return f"finish reasons {finishes}"
    usage = chunks[-1].get("usage")
    if not usage or (finishes[0] == "length" and usage["completion_tokens"] != max_tokens):
        return f"usage {usage} does not match finish_reason {finishes[0]}"
    return None


async def client_loop(client: httpx.AsyncClient, n: int, args, deadline: float, tally: Tally) -> None:
    rng = random.Random(args.seed * 100003 + n)
    shared = "You are a soak-test assistant. " * rng.choice([1, 4, 8])  # shared prefixes hit the prefix cache
    i = 0
    while time.monotonic() < deadline:
        i += 1
        body = {"model": "soak", "stream": True, "max_tokens": args.max_tokens, "stream_options": {"include_usage": True},
                "temperature": 0.8, "seed": rng.randrange(1 << 30),
                "messages": [{"role": "system", "content": shared},
                             {"role": "user", "content": f"client {n} request {i}: tell me something"}]}
        hang_up_after = rng.randint(1, 6) if rng.random() < args.disconnect else None
        tally.started += 1
        lines: list[str] = []
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    tally.http_errors += 1
                    tally.broken.append(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
                    continue
                async for line in resp.aiter_lines():
                    if line:
                        lines.append(line)
                    if hang_up_after is not None and len(lines) >= hang_up_after:
                        break
            if hang_up_after is not None and len(lines) >= hang_up_after and lines[-1] != "data: [DONE]":
                tally.disconnected += 1
                continue
            problem = check_stream(lines, args.max_tokens)
            if problem:
                tally.broken.append(problem)
            else:
                tally.completed += 1
                tally.tokens += json.loads(lines[-2][6:])["usage"]["completion_tokens"]
        except httpx.HTTPError as exc:
            tally.http_errors += 1
            tally.broken.append(f"{type(exc).__name__}: {exc}")


def poll_health(url: str, stop, results) -> None:
    """In a process of its own, so the latency measured is the server's, not this busy client's."""
    latencies, bad = [], []
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                resp = client.get("/health")
                latencies.append(time.monotonic() - t0)
                if resp.status_code != 200:
                    bad.append(f"/health {resp.status_code}: {resp.text[:200]}")
            except httpx.HTTPError as exc:
                bad.append(f"/health {type(exc).__name__}")
            time.sleep(0.25)
    results.put((latencies, bad))


async def settled_health(client: httpx.AsyncClient) -> dict:
    """Clear the prefix cache, wait for the engine to apply it, and return /health."""
    await client.post("/v1/cache/clear")
    await asyncio.sleep(1.0)
    return (await client.get("/health")).json()


def idle_problems(health: dict) -> list[str]:
    engine = health["engine"]
    found = [f"engine {k}={engine[k]}" for k in ("running", "waiting", "prefilling", "batch_rows") if engine[k]]
    admission = health.get("admission")
    if admission and (admission["reserved_bytes"] or admission["admitted"]):
        found.append(f"admission still holds {admission['reserved_bytes']} bytes for {admission['admitted']}")
    return found


def start_attacks(ctx, args):
    """The hostile clients of one round, in a process of their own."""
    from vllm_mlx_testing.attacks import attack_loop

    stop, results = ctx.Event(), ctx.Queue()
    process = ctx.Process(target=attack_loop, args=(args.url, args.api_key, stop, results), daemon=True)
    process.start()
    return stop, results, process


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def soak(args) -> dict:
    headers = {"authorization": f"Bearer {args.api_key}"}
    # idle connections are dropped before the server's keep-alive timeout (5 s), so a request is never
    # sent on a connection the server is closing at that moment
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4,
                          keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=httpx.Timeout(300.0), limits=limits) as client:
        start_health = await settled_health(client)
        tally = Tally()
        ctx = multiprocessing.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        poller = ctx.Process(target=poll_health, args=(args.url, stop, results), daemon=True)
        poller.start()
        started = time.monotonic()
        idle: list[dict] = []  # /health at idle after each round
        cached: list[int] = []  # prefix-cache bytes at the end of each round (its high-water mark)
        attacks: list[dict] = []
        for _ in range(args.rounds):  # the same load each round
            deadline = time.monotonic() + args.duration
            attack_stop, attack_results, attacker = start_attacks(ctx, args) if args.attacks else (None, None, None)
            await asyncio.gather(*(client_loop(client, n, args, deadline, tally) for n in range(args.clients)))
            if attacker is not None:
                attack_stop.set()
                attacks.append(await asyncio.to_thread(attack_results.get, True, 300))
                attacker.join(30)
            cache_now = (await client.get("/health")).json()["engine"].get("prefix_cache") or {}
            cached.append(cache_now.get("bytes", 0))
            idle_deadline = time.monotonic() + args.idle_timeout
            while True:
                after = await settled_health(client)
                not_idle = idle_problems(after)
                if not not_idle or time.monotonic() > idle_deadline:
                    break
            idle.append(after)
        elapsed = time.monotonic() - started
        stop.set()
        latencies, bad_health = results.get(timeout=30)
        poller.join(10)
        before = idle[0] if args.rounds > 1 else start_health  # memory once warmed up by the first round
        mem_start, mem0, mem1 = start_health["memory"], before["memory"], after["memory"]
        cache = after["engine"].get("prefix_cache") or {}
        rss_growth = (mem1["rss_bytes"] - mem0["rss_bytes"]) / 2**20
        # the prefix cache is emptied after each round, but the allocator keeps its pages: a last round
        # that cached more than the first may raise RSS by that much without any leak
        cache_growth = max(0, cached[-1] - cached[0]) / 2**20
        rss_bound = args.rss_growth_mb + cache_growth
        mlx_growth = (mem1["mlx_active_bytes"] - mem_start["mlx_active_bytes"]) / 2**20
        p99 = percentile(latencies, 0.99) * 1000
        checks = {
            "server up": after["status"] == "ok",
            "health never unhealthy": not bad_health,
            "no broken stream or HTTP error": not tally.broken,
            "engine back to idle": not not_idle,
            "prefix cache empty after clear": cache.get("bytes", 0) == 0 and cache.get("entries", 0) == 0,
            f"MLX active memory growth <= {args.mlx_growth_mb} MB": mlx_growth <= args.mlx_growth_mb,
            f"RSS growth after the first round <= {args.rss_growth_mb} MB + prefix-cache growth": rss_growth <= rss_bound,
            f"/health p99 < {args.health_p99_ms} ms": p99 < args.health_p99_ms,
            "some streams completed and some were cut": tally.completed > 0 and tally.disconnected > 0,
        }
        if args.attacks:
            checks["every attack got its bound's answer"] = not any(a["unexpected"] for a in attacks)
            checks["huge prompts refused within 5 s"] = all(a["huge_prompt_max_s"] < 5 for a in attacks)
        return {
            "config": {k: getattr(args, k) for k in ("clients", "duration", "rounds", "disconnect", "max_tokens")},
            "seconds": round(elapsed, 1),
            "requests": {"started": tally.started, "completed_intact": tally.completed,
                         "disconnected_mid_stream": tally.disconnected, "http_errors": tally.http_errors,
                         "broken": len(tally.broken)},
            "completion_tokens": tally.tokens,
            "tokens_per_s": round(tally.tokens / (args.rounds * args.duration), 1),
            "health": {"polls": len(latencies), "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
                       "p99_ms": round(p99, 1), "max_ms": round(max(latencies, default=0) * 1000, 1),
                       "bad": bad_health[:5]},
            "engine_after": {k: after["engine"][k] for k in ("running", "waiting", "prefilling", "batch_rows",
                                                             "requests_finished", "requests_aborted", "requests_failed")},
            "memory_mb": {"rss_start": round(mem_start["rss_bytes"] / 2**20, 1),
                          "rss_after_round_1": round(mem0["rss_bytes"] / 2**20, 1),
                          "rss_end": round(mem1["rss_bytes"] / 2**20, 1),
                          "rss_growth_after_round_1": round(rss_growth, 1),
                          "rss_growth_bound": round(rss_bound, 1),
                          "prefix_cache_end_of_rounds": [round(b / 2**20, 1) for b in cached],
                          "peak_rss": round(mem1["peak_rss_bytes"] / 2**20, 1),
                          "mlx_active_start": round(mem_start["mlx_active_bytes"] / 2**20, 2),
                          "mlx_active_end": round(mem1["mlx_active_bytes"] / 2**20, 2)},
            "attacks": attacks,
            "not_idle": not_idle,
            "broken_examples": tally.broken[:5],
            "checks": checks,
            "ok": all(checks.values()),
        }


def main(argv=None) -> int:
    summary = asyncio.run(soak(parse_args(argv)))
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
