"""vllm-mlx against its peer (mlx_lm.server, same mlx-lm) and against the bare mlx-lm ceiling.

    PYTHONPATH=src .venv/bin/python benchmarks/compare_peer.py [--models tiny mid] [--repeat 3] [--out DIR]

For each model (built locally, random weights, float32):
  tiny -- the test model's shape (Qwen3 architecture, hidden 64, 2 layers, vocab 2048), with an untied,
          scaled head that never emits invisible tokens (as the demo model), so every token streams text;
  mid  -- Qwen3 architecture, hidden 1024, 4 layers, 16 heads / 8 KV heads, intermediate 3072,
          vocab 4096, untied head (~58 M parameters, 230 MB): the model, not Python, dominates a step.
it runs, one after the other (never two at once):
  1. `vllm-mlx bench MODEL --preset batch16 --ceiling` -- the engine in-process at batch 16 against a
     bare mlx-lm batched forward loop (same batch) and single-stream against mlx_lm.stream_generate;
  2. `vllm-mlx bench MODEL --preset batch10` -- the published batched-generation configuration;
  3. `vllm-mlx serve` and `mlx_lm.server` started side by side, then
     `vllm-mlx bench serve --url A --compare B --concurrency 1 4 10`, the two servers interleaved,
     and on the tiny model `vllm-mlx bench agent --url A --compare B` (TTFT per turn of a growing
     conversation).
Everything lands in --out (JSON, PNG plots, logs); the tables are printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import vllm_mlx  # noqa: F401  (OpenBLAS before mlx)
from vllm_mlx.bench.servers import mlx_lm_server, vllm_mlx_server

MODELS = {
    "tiny": dict(family="qwen3", init_scale=8.0, tie_word_embeddings=False, visible_text=True),
    "mid": dict(family="qwen3", hidden_size=1024, num_hidden_layers=4, num_attention_heads=16,
                num_key_value_heads=8, intermediate_size=3072, vocab_size=4096, init_scale=8.0,
                tie_word_embeddings=False, visible_text=True),
}


def build(name: str, root: Path) -> Path:
    from vllm_mlx_testing import build_tiny_model

    path = root / name
    if not (path / "model.safetensors").exists():
        build_tiny_model(path, **MODELS[name])
    return path


def bench(*args: str) -> None:
    exe = str(Path(sys.executable).with_name("vllm-mlx"))
    cmd = [exe, "bench", *args]
    print("$ vllm-mlx bench " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["tiny", "mid"], choices=sorted(MODELS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--concurrency", nargs="+", default=["1", "4", "10"])
    p.add_argument("--max-tokens", default="64")
    p.add_argument("--out", default="bench-results/compare-peer")
    p.add_argument("--model-dir", default="/tmp/vllm-mlx-bench-models")
    p.add_argument("--engine-presets", nargs="*", default=["batch16", "batch10"],
                   help="engine presets to run (batch16 runs with --ceiling); none to skip")
    p.add_argument("--engine-max-tokens", default=None, help="override the presets' tokens per prompt")
    p.add_argument("--agent-models", nargs="*", default=["tiny"],
                   help="models on which `bench agent --compare` also runs (multi-turn TTFT)")
    args = p.parse_args()
    out, started = Path(args.out), time.monotonic()
    for name in args.models:
        model = str(build(name, Path(args.model_dir)))
        print(f"\n## model {name}: {model}", flush=True)
        rep = ["--repeat", str(args.repeat), "--no-progress"]
        for preset in args.engine_presets:
            extra = ["--ceiling"] if preset == "batch16" else []
            if args.engine_max_tokens:
                extra += ["--max-tokens", args.engine_max_tokens]
            bench(model, "--preset", preset, *extra, *rep, "--json", str(out / f"engine-{preset}-{name}.json"))
        ours = vllm_mlx_server(model, out / f"vllm-mlx-{name}.log", "--max-num-seqs", "32",
                               "--speculative", "off")  # like the peer: no speculation
        peer = mlx_lm_server(model, out / f"mlx_lm-{name}.log")
        try:
            ours.wait_ready()
            peer.wait_ready()
            bench("serve", "--url", ours.url, "--compare", peer.url, "--name", "vllm-mlx", "--name", "mlx_lm.server",
                  "--concurrency", *args.concurrency, "--max-tokens", args.max_tokens, *rep,
                  "--out", str(out / f"serve-{name}"))
            if name in args.agent_models:
                bench("agent", "--url", ours.url, "--compare", peer.url, "--name", "vllm-mlx", "--name",
                      "mlx_lm.server", "--no-progress", "--json", str(out / f"agent-{name}.json"))
        finally:
            ours.stop()
            peer.stop()
    print(f"\ndone in {time.monotonic() - started:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
