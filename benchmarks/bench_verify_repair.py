"""A verify step (5 positions a row) and the repair of its rejected positions, 16 rows of the demo model
at two context lengths: mlx-lm's batch cache, where the rows that dropped more are rolled right (a copy
of each such row's cache), against the decode batch's cache, where they become holes
(src/vllm_mlx/engine/decode_cache.py). Median of 22 steps after 3.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_verify_repair.py
"""

import statistics
import time

import vllm_mlx  # noqa: F401  (loads OpenBLAS before MLX starts)
import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache
from vllm_mlx.engine.decode_cache import DecodeKVCache
from vllm_mlx.engine.model_runner import drop_row_tails
from vllm_mlx.models.cpu_decode import swap_cpu_decode_modules
from vllm_mlx.models.demo import ensure_demo_model
from vllm_mlx.models.loader import load_model


def main() -> None:
    m = load_model(str(ensure_demo_model())).model
    swap_cpu_decode_modules(m)
    B = 16
    for S in (512, 4096):
        res = {}
        for name, cls in (("roll", BatchKVCache), ("holes", DecodeKVCache)):
            cache = [BatchKVCache([0] * B) for _ in m.layers]
            x = mx.array([[5] * S] * B)
            for i in range(0, S, 512):
                mx.eval(m(x[:, i:i + 512], cache=cache))
            for c in cache:
                c.__class__ = cls
            ts = []
            for _ in range(25):
                t = time.perf_counter()
                mx.eval(m(mx.array([[7] * 5] * B), cache=cache))
                drop_row_tails(cache, [4, 2] * (B // 2))  # half the rows rejected two more than the others
                mx.eval([c.keys for c in cache] + [c.values for c in cache] + [c.offset for c in cache])
                ts.append(time.perf_counter() - t)
            res[name] = statistics.median(ts[3:]) * 1e3
        print(f"context {S}: verify step + repair, ms: roll {res['roll']:.1f}, holes {res['holes']:.1f}")


if __name__ == "__main__":
    main()
