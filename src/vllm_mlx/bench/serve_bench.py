"""`vllm-mlx bench serve --url URL [--compare URL2]`: a concurrency sweep against OpenAI-compatible servers.

At each concurrency C, C clients stream chat completions back to back (closed loop) until
``C * requests_per_client`` requests are done; that is one *round*. Rounds are repeated, with
one unmeasured warm-up round per server and concurrency first. With two servers, each round is
run on both, back to back, with the same (fresh) prompts, alternating which goes first, so both
see the same machine conditions; ratios are taken per round (paired) and then summarized.

Per round: request throughput, output token throughput, prompt+output token throughput; TTFT,
TPOT, ITL (gap between streamed chunks) and end-to-end latency as p50/p95/p99 over its requests.
Across rounds: the median and its 95% bootstrap interval. Compared, per round: the output tok/s, the
decode rate (a stream's speed after its first token: the inverse ratio of the TPOT p50s) and TTFT p95.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .presets import make_prompts
from .stats import latency_percentiles, summarize
from .targets import HttpTarget, StreamRecord

ROUND_METRICS = ("req_per_s", "output_tok_per_s", "total_tok_per_s", "ttft_p50", "ttft_p95", "ttft_p99",
                 "tpot_p50", "tpot_p95", "itl_p50", "itl_p95", "itl_p99", "e2e_p50", "e2e_p95")


@dataclass
class ServeBenchOptions:
    urls: list[str]
    names: list[str] = field(default_factory=list)
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 10])
    requests_per_client: int = 2
    max_tokens: int = 64
    prompt_words: int = 24
    repeat: int = 3
    warmup: int = 1
    model: str = "default_model"
    api_key: str | None = None
    ignore_eos: bool = True


async def run_round(target: HttpTarget, concurrency: int, prompts: list[str], max_tokens: int) -> dict:
    """C clients take prompts from a shared queue until none is left; returns the round's metrics."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    records: list[StreamRecord] = []

    async def client() -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            records.append(await target.chat([{"role": "user", "content": prompt}], max_tokens))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return round_metrics(records, wall)


def round_metrics(records: list[StreamRecord], wall: float) -> dict:
    ok = [r for r in records if r.ok]
    timed = [r for r in ok if r.timed]
    failed = len(records) - len(ok)
    out_tokens = sum(r.completion_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    ttft = latency_percentiles([r.ttft * 1000 for r in timed])
    tpot = latency_percentiles([r.tpot * 1000 for r in timed if r.tpot is not None])
    itl = latency_percentiles([g * 1000 for r in timed for g in r.itls])
    e2e = latency_percentiles([r.e2e * 1000 for r in ok])
    return {
        "requests": len(records), "failed": failed, "untimed": len(ok) - len(timed), "wall_s": wall,
        "errors": sorted({r.error for r in records if r.error})[:3],
        "completion_tokens": out_tokens, "prompt_tokens": prompt_tokens,
        "req_per_s": len(ok) / wall, "output_tok_per_s": out_tokens / wall,
        "total_tok_per_s": (out_tokens + prompt_tokens) / wall,
        "ttft_p50": ttft["p50"], "ttft_p95": ttft["p95"], "ttft_p99": ttft["p99"],
        "tpot_p50": tpot["p50"], "tpot_p95": tpot["p95"],
        "itl_p50": itl["p50"], "itl_p95": itl["p95"], "itl_p99": itl["p99"],
        "e2e_p50": e2e["p50"], "e2e_p95": e2e["p95"],
    }


async def run_serve_bench(opts: ServeBenchOptions, progress=None) -> dict:
    names = opts.names or [f"server{i + 1}" for i in range(len(opts.urls))]
    if len(set(names)) != len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    targets = [HttpTarget(u, opts.model, opts.api_key, opts.ignore_eos) for u in opts.urls]
    rounds: dict[str, dict[int, list[dict]]] = {n: {c: [] for c in opts.concurrency} for n in names}
    for t in targets:
        await t.__aenter__()
    try:
        for rep in range(opts.warmup + opts.repeat):
            for ci, c in enumerate(opts.concurrency):
                prompts = make_prompts(c * opts.requests_per_client, opts.prompt_words, seed=rep * 1000 + ci * 100)
                order = list(range(len(targets)))
                if (rep + ci) % 2:
                    order.reverse()
                for k in order:
                    m = await run_round(targets[k], c, prompts, opts.max_tokens)
                    if rep >= opts.warmup:
                        rounds[names[k]][c].append(m)
                    if progress is not None:
                        progress.set_postfix_str(f"{names[k]} c={c} {m['output_tok_per_s']:.0f} tok/s")
                        progress.update(1)
    finally:
        for t in targets:
            await t.__aexit__(None, None, None)
    return build_result(opts, names, rounds)


def build_result(opts: ServeBenchOptions, names: list[str], rounds: dict) -> dict:
    servers = {}
    for name, url in zip(names, opts.urls):
        per_c = {}
        for c, rs in rounds[name].items():
            per_c[str(c)] = {"rounds": rs, "summary": {k: summarize([r[k] for r in rs]).as_dict()
                                                       for k in ROUND_METRICS},
                             "failed": sum(r["failed"] for r in rs)}
        servers[name] = {"url": url, "concurrency": per_c}
    result = {"options": {k: v for k, v in opts.__dict__.items() if k != "api_key"}, "names": names,
              "servers": servers}
    if len(names) == 2:
        a, b = names
        result["compare"] = {}
        for c in opts.concurrency:
            ra, rb = rounds[a][c], rounds[b][c]
            result["compare"][str(c)] = {
                "output_tok_per_s_ratio": summarize(
                    [x["output_tok_per_s"] / y["output_tok_per_s"] for x, y in zip(ra, rb) if y["output_tok_per_s"]]
                ).as_dict(),
                "ttft_p95_ratio": summarize(
                    [x["ttft_p95"] / y["ttft_p95"] for x, y in zip(ra, rb) if y["ttft_p95"]]).as_dict(),
                # a stream's decode speed after its first token: the inverse ratio of the TPOTs
                "decode_rate_ratio": summarize(
                    [y["tpot_p50"] / x["tpot_p50"] for x, y in zip(ra, rb) if x["tpot_p50"] and y["tpot_p50"]]
                ).as_dict(),
            }
    return result


def format_tables(result: dict) -> str:
    lines = []
    for name, server in result["servers"].items():
        lines += [f"\n{name} ({server['url']}): median [95% CI] over {result['options']['repeat']} rounds; "
                  "latencies in ms", "| concurrency | req/s | output tok/s | TTFT p50 | TTFT p95 | TTFT p99 | "
                  "TPOT p50 | ITL p50 | ITL p95 | ITL p99 | failed |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c, entry in server["concurrency"].items():
            s = entry["summary"]

            def f(k, d=1, ci=False):
                v = s[k]
                return f"{v['median']:.{d}f} [{v['low']:.{d}f}, {v['high']:.{d}f}]" if ci else f"{v['median']:.{d}f}"

            lines.append(f"| {c} | {f('req_per_s', 2)} | {f('output_tok_per_s', 1, True)} | {f('ttft_p50')} | "
                         f"{f('ttft_p95', 1, True)} | {f('ttft_p99')} | {f('tpot_p50', 2)} | {f('itl_p50', 2)} | "
                         f"{f('itl_p95', 2)} | {f('itl_p99', 2)} | {entry['failed']} |")
    if "compare" in result:
        a, b = result["names"]
        lines += [f"\n{a} / {b} (paired per round): median [95% CI]",
                  f"| concurrency | {a} tok/s | {b} tok/s | tok/s ratio | decode rate ratio (1/TPOT p50) | "
                  f"{a} TTFT p95 ms | {b} TTFT p95 ms | TTFT p95 ratio |", "|---|---|---|---|---|---|---|---|"]
        for c, cmp in result["compare"].items():
            sa = result["servers"][a]["concurrency"][c]["summary"]
            sb = result["servers"][b]["concurrency"][c]["summary"]
            r1, r2, r3 = cmp["output_tok_per_s_ratio"], cmp["ttft_p95_ratio"], cmp["decode_rate_ratio"]
            lines.append(f"| {c} | {sa['output_tok_per_s']['median']:.1f} | {sb['output_tok_per_s']['median']:.1f} | "
                         f"{r1['median']:.2f} [{r1['low']:.2f}, {r1['high']:.2f}] | "
                         f"{r3['median']:.2f} [{r3['low']:.2f}, {r3['high']:.2f}] | {sa['ttft_p95']['median']:.1f} | "
                         f"{sb['ttft_p95']['median']:.1f} | {r2['median']:.2f} [{r2['low']:.2f}, {r2['high']:.2f}] |")
    return "\n".join(lines)
