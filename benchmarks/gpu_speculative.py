"""Speculative decoding on a GPU (MLX's CUDA backend): the measurements docs/speculative.md leaves to an
accelerator, in one driver, each step under its own time limit, every log in ``$OUT`` as it comes.

    bash scripts/gpu-kit.sh speculative                # on the device machine (docs/benchmarks/gpu.md)
    python benchmarks/gpu_speculative.py --small       # the same flow on this CPU with small models

Steps (``--skip`` any of them):
  ngram     ``vllm-mlx bench rows MODEL --rows 1 16 --speculative ngram``: the engine with prompt lookup
            against the engine without speculation, on the Qwen3-0.6B-shaped bf16 model the kit's driver
            builds (built here when missing);
  draft     the same with the model's first two layers as ``--draft-model``;
  mtp       tiny Qwen3.5 models with an MTP head that is always right and one that never is;
  rollback  ``benchmarks/bench_rollback.py`` on a partly right head: each position's kept state against
            the snapshot and second forward (off Metal the Gated DeltaNets keep their states).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

T0 = time.monotonic()
OUT = Path(os.environ.get("OUT") or "/tmp/gpu-out")
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
Q06 = dict(family="qwen3", hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
           intermediate_size=3072, vocab_size=8192, init_scale=8.0, tie_word_embeddings=False, visible_text=True)
SMALL = dict(family="qwen3", hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=256, vocab_size=4096, init_scale=8.0, tie_word_embeddings=False, visible_text=True)


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


def run(name: str, args: list[str], limit: float) -> int:
    """One step: its output in ``$OUT/<name>.log``, its tail printed."""
    log(f"$ {' '.join(args)}  (limit {limit:.0f} s)")
    with open(OUT / f"{name}.log", "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            rc = proc.wait(limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    tail = (OUT / f"{name}.log").read_text(errors="replace")[-2000:]
    log(f"{name}: rc={rc}\n{tail}")
    return rc


def build(name: str, code: str, limit: float = 240) -> None:
    run(f"build-{name}", [PY, "-c", "import vllm_mlx\n" + code], limit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="small float32 models: the flow on a CPU")
    parser.add_argument("--skip", nargs="*", default=[], help="steps to skip: ngram draft mtp rollback")
    parser.add_argument("--models", default=os.environ.get("MODELS", "/tmp/vm-models"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    root = Path(args.models)
    model = root / ("small-spec" if args.small else "q06")  # gpu_bench.py's q06 when it ran first
    spec, dtype = (SMALL, "float32") if args.small else (Q06, "bfloat16")
    repeat = "2" if args.small else "3"

    def bench_rows(path: Path, *method: str) -> list[str]:
        return [PY, "-m", "vllm_mlx", "bench", "rows", str(path), "--rows", "1", "16", "--tokens", "128",
                "--repeat", repeat, "--warmup", "1", "--speculative", *method]

    if not (model / "model.safetensors").exists():
        build(model.name, f"""
import mlx.core as mx
from vllm_mlx_testing import build_tiny_model
p = build_tiny_model({str(model)!r}, **{spec!r})
w = {{k: v.astype(mx.{dtype}) for k, v in mx.load(str(p / 'model.safetensors')).items()}}
mx.save_safetensors(str(p / 'model.safetensors'), w, metadata={{'format': 'mlx'}})
""")
    if "ngram" not in args.skip:
        run("spec-ngram", bench_rows(model, "ngram"), 150)
    if "draft" not in args.skip:
        draft = root / f"{model.name}-draft2"
        if not (draft / "model.safetensors").exists():
            build(draft.name, f"from vllm_mlx_testing import first_layers_model\n"
                              f"first_layers_model({str(model)!r}, {str(draft)!r}, 2)")
        run("spec-draft", bench_rows(model, "draft", "--draft-model", str(draft)), 150)
    heads = {"exact": ("mtp", "exact=True"), "random": ("mtp", ""), "part": ("rollback", "exact=True, attending=1.0")}
    for name, (step, options) in heads.items():
        if step in args.skip:
            continue
        path = root / f"mtp-{name}"
        if not (path / "model.safetensors").exists():
            build(path.name, "from vllm_mlx_testing.arch_models import build_arch_model\n"
                             "from vllm_mlx_testing.builders import add_mtp_head\n"
                             f"add_mtp_head(build_arch_model({str(path)!r}, 'qwen3_5'), {options})")
        if step == "rollback":
            run("spec-rollback", [PY, "benchmarks/bench_rollback.py", str(path), "--rows", "1", "16", "--k", "4",
                                  "--rounds", "4" if args.small else "6"], 200)
        else:
            run(f"spec-mtp-{name}", bench_rows(path, "mtp"), 150)
    (OUT / "gpu_speculative.json").write_text(json.dumps({"small": args.small, "model": str(model),
                                                           "seconds": round(time.monotonic() - T0, 1)}))
    log("done")


if __name__ == "__main__":
    main()
