"""One process vs 2 ranks (mlx.launch, ring backend on loopback; tensor and pipeline parallel, and
tensor with rank 0's engine in its own process): throughput, memory per serving process, and whether
the greedy output is the same.

    .venv/bin/python benchmarks/bench_distributed.py [--streams 4] [--max-tokens 32]

Model: a Qwen2-architecture random model built locally (hidden 1024, 8 layers, 16 heads / 8 KV heads,
MLP 2816, vocab 2048; float32, ~380 MB of weights) -- Qwen2, because mlx-lm splits it both ways. Each server gets one warm-up request, then
``--streams`` concurrent greedy completions of ``--max-tokens`` tokens (ignore_eos), timed end to end.
Memory: the weights each rank holds (from its log), and the peak and final resident set (VmHWM,
VmRSS) of every serving process by role (a rank, a rank's engine process), read from /proc when the
run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_distributed import _free_port_pair, children  # noqa: E402  (the tests' launch helpers)
BIN = Path(sys.executable).parent
PROMPTS = ["Hello there, how are you?", "The capital of France is", "Write a haiku about the sea.",
           "Count from one to ten.", "Why is the sky blue?", "Name a famous painter.", "List three colors.",
           "Tell me a story."]


def build_model(path: Path) -> Path:
    import vllm_mlx  # noqa: F401
    from vllm_mlx_testing import build_tiny_model

    from vllm_mlx_testing.pipeline_models import build_qwen2_like

    like = path.with_name(path.name + "-qwen3")
    if not (path / "config.json").exists():
        build_tiny_model(like, "qwen3", hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
                         num_key_value_heads=8, intermediate_size=2816, vocab_size=2048)
        build_qwen2_like(path, like)
    return path


def serving_processes(pid: int, ranks: int) -> dict[str, int]:
    """The serving processes by role: the server, or each rank under the launcher ``pid`` (by its
    MLX_RANK) and a rank's engine process (its child), if it has one."""
    if ranks == 1:
        return {"server": pid}
    out = {}
    for child in children(pid):
        env = (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0")
        rank = next(v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"MLX_RANK="))
        out[f"rank {rank}"] = child
        for grandchild in children(child):
            out[f"rank {rank}'s engine process"] = grandchild
    return dict(sorted(out.items()))


def rss_mb(pid: int, field: str) -> int:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024)
    return -1


def weights_mb(log: Path, model: Path) -> list[float]:
    found = re.findall(r"\((\d+\.\d) MB of weights\)", log.read_text())
    return [float(x) for x in found] or [round((model / "model.safetensors").stat().st_size / 2**20, 1)]


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(log.read_text())


def complete(url: str, prompt: str, max_tokens: int) -> str:
    r = httpx.post(f"{url}/v1/completions", timeout=1800, json={
        "model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


def run(label: str, cmd: list[str], port: int, ranks: int, args, tmp: Path) -> dict:
    log = tmp / f"{label}.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        servers = serving_processes(proc.pid, ranks)
        complete(url, "warm up", 4)
        prompts = PROMPTS[: args.streams]
        start = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            texts = list(pool.map(lambda p: complete(url, p, args.max_tokens), prompts))
        elapsed = time.perf_counter() - start
        memory = {"weights_mb": weights_mb(log, Path(cmd[cmd.index("serve") + 1])),
                  "peak_rss_mb": {role: rss_mb(pid, "VmHWM") for role, pid in servers.items()},
                  "rss_mb": {role: rss_mb(pid, "VmRSS") for role, pid in servers.items()}}
    finally:
        for pid in ([proc.pid] if ranks == 1 else children(proc.pid)):
            os.kill(pid, signal.SIGTERM)
        proc.wait(60)
    tokens = len(prompts) * args.max_tokens
    return {"label": label, "seconds": round(elapsed, 2), "tokens_per_s": round(tokens / elapsed, 2),
            **memory, "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    from conftest import free_port

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = str(build_model(tmp / "qwen2-h1024"))
        port = free_port()
        single = run("1 process", [str(BIN / "vllm-mlx"), "serve", model, "--port", str(port)], port, 1, args, tmp)
        show(single, single)
        results = [single]
        for label, extra in (("tensor", ["--distributed-parallelism", "tensor"]),
                             ("pipeline", ["--distributed-parallelism", "pipeline"]),
                             ("tensor, rank 0's engine in its own process",
                              ["--distributed-parallelism", "tensor", "--engine-process"])):
            port = free_port()
            results.append(run(f"2 ranks, {label}", [
                str(BIN / "mlx.launch"), "--backend", "ring", "-n", "2", "--starting-port", str(_free_port_pair()), "--",
                str(BIN / "vllm-mlx"), "serve", model, "--distributed", *extra,
                "--port", str(port), "--distributed-timeout", "600"], port, 2, args, tmp))
            show(results[-1], single)


def show(result: dict, single: dict) -> None:
    print(json.dumps({k: v for k, v in result.items() if k != "texts"}), flush=True)
    print("  identical output to 1 process:", result["texts"] == single["texts"], flush=True)


if __name__ == "__main__":
    main()
