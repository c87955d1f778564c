"""Backend detection: picks the fast paths of the machine MLX runs on.

On Linux the CPU build of MLX links a slow reference BLAS. If OpenBLAS is
installed (Debian/Ubuntu: ``apt-get install libopenblas0-pthread``), loading it
globally *before* MLX is imported makes MLX's float32 matmuls use it (about
25-30x faster here). This must happen before the first ``import mlx.core``,
which is why :func:`preload_fast_blas` runs when the ``vllm_mlx`` package is
imported. ``VLLM_MLX_BLAS`` overrides the choice: a library path, or ``off``.

OpenBLAS runs as many threads as it finds cores (``OPENBLAS_NUM_THREADS`` or
``OMP_NUM_THREADS`` choose otherwise); :class:`BlasStatus` says how many. They
busy-wait between matmuls, so on a machine with few cores they compete with the
engine's own thread: good for a model whose matmuls dominate (every real model on
a CPU), costly for a tiny Python-bound one (docs/benchmarks/engine-core.md).
"""

from __future__ import annotations

import ctypes
import glob
import os
import resource
import sys
from dataclasses import dataclass

BLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)


@dataclass(frozen=True)
class BlasStatus:
    path: str | None  # the library loaded, if any
    reason: str  # a sentence for logs and `doctor`
    threads: int = 0  # how many threads OpenBLAS runs (0: none loaded)


def _find_openblas() -> str | None:
    for path in BLAS_CANDIDATES:
        if os.path.exists(path):
            return path
    hits = sorted(glob.glob("/usr/lib/*/openblas*/libopenblas.so.0"))
    return hits[0] if hits else None


def preload_fast_blas() -> BlasStatus:
    """Load OpenBLAS globally on Linux so MLX's CPU backend uses it. Idempotent."""
    if not sys.platform.startswith("linux"):
        return BlasStatus(None, "not Linux: MLX uses the platform's own BLAS")
    choice = os.environ.get("VLLM_MLX_BLAS", "auto")
    if choice.lower() in ("off", "0", "none", "reference"):
        return BlasStatus(None, "disabled by VLLM_MLX_BLAS")
    path = choice if choice != "auto" else _find_openblas()
    if path is None:
        return BlasStatus(
            None,
            "OpenBLAS not found: CPU matmuls use MLX's slow reference BLAS "
            "(install it with `apt-get install libopenblas0-pthread`)",
        )
    if "mlx.core" in sys.modules:
        return BlasStatus(None, "mlx was imported before vllm_mlx, so OpenBLAS could not take effect")
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return BlasStatus(None, f"could not load {path}: {exc}")
    threads, said = _threads(lib)
    return BlasStatus(path, f"OpenBLAS loaded from {path}; {said}", threads)


THREAD_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def _threads(lib: ctypes.CDLL) -> tuple[int, str]:
    """How many threads OpenBLAS runs (1 when it cannot say), and a sentence: that number and who chose it."""
    chosen = next((f"{name}={os.environ[name]}" for name in THREAD_ENV if os.environ.get(name)), None)
    get = getattr(lib, "openblas_get_num_threads", None)
    count = get() if get is not None else None
    return count or 1, f"{count or '?'} thread(s)" + (f" ({chosen})" if chosen else " (one per core)")


@dataclass(frozen=True)
class BackendInfo:
    device: str  # "gpu" or "cpu"
    metal: bool
    cuda: bool
    blas: BlasStatus
    compute_dtype: str  # dtype unquantized weights are computed in

    def describe(self) -> str:
        kind = "Metal GPU" if self.metal else ("CUDA GPU" if self.cuda else "CPU")
        return f"MLX on {kind}; weights in {self.compute_dtype}; {self.blas.reason}"


def detect_backend(blas: BlasStatus, requested_dtype: str = "auto") -> BackendInfo:
    import mlx.core as mx

    metal = bool(mx.metal.is_available())
    cuda = bool(getattr(mx, "cuda", None) and mx.cuda.is_available())
    device = "gpu" if (metal or cuda) else "cpu"
    # On the CPU backend only float32 matmuls are fast (BLAS); bf16/fp16 are emulated.
    dtype = requested_dtype if requested_dtype != "auto" else ("float32" if device == "cpu" else "model")
    return BackendInfo(device=device, metal=metal, cuda=cuda, blas=blas, compute_dtype=dtype)


def physical_memory_bytes() -> int:
    """The machine's RAM."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_memory_bytes() -> int:
    """Memory the model, batch and caches share: Metal's recommended working set, else physical RAM."""
    import mlx.core as mx

    if mx.metal.is_available():
        return int(mx.metal.device_info()["max_recommended_working_set_size"])
    return physical_memory_bytes()


def available_memory_bytes() -> int:
    """Memory free for new allocations now (Linux: MemAvailable; else device memory minus MLX's use)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import mlx.core as mx

    return max(0, device_memory_bytes() - mx.get_active_memory())


def process_memory() -> dict:
    """This process's resident memory now and at its peak, and what MLX's allocator holds (active and
    cached): /health and the memory guardrail read it (the engine process reports its own)."""
    import mlx.core as mx

    rss = 0
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux: the peak is what is available
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes
    return {"rss_bytes": rss, "peak_rss_bytes": peak, "mlx_active_bytes": mx.get_active_memory(),
            "mlx_cache_bytes": mx.get_cache_memory()}
