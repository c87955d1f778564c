"""The server process's memory, for /health (soak tests watch it for growth)."""

from __future__ import annotations

import resource
import sys


def process_memory() -> dict:
    """Resident memory now and at its peak, and what MLX's allocator holds (active and cached)."""
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
