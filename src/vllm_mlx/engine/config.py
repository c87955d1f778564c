"""Engine configuration, the statistics snapshot it publishes and the counters behind it.

Defaults are the serve options' (vllm_mlx.options); the server fills every field from its ServerConfig.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import DEFAULTS as D
from ..options import MAX_LORAS, SPECULATIVE_TOKENS


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = D.max_num_seqs
    max_num_batched_tokens: int = D.max_num_batched_tokens
    # Identical requests give identical output whatever else runs: every row is computed
    # at batch size 1 and prompts are prefilled alone in fixed-size chunks.
    deterministic: bool = D.deterministic
    # Prefix cache (off in deterministic mode: reused keys/values were computed under other chunking).
    prefix_cache: bool = D.prefix_cache
    cache_memory_bytes: int | None = None  # None: cache_memory_fraction of the memory free at start
    cache_memory_fraction: float = D.cache_memory_fraction
    prefix_block_size: int = D.prefix_block_size
    kv_cache_bits: int | None = D.kv_cache_bits  # quantize cached blocks to 8 or 4 bits
    kv_cache_dir: str | None = D.kv_cache_dir  # persist blocks here (safetensors) across restarts
    kv_cache_dir_bytes: int = D.kv_cache_dir_mb << 20
    # Models with recurrent or sliding-window layers: also checkpoint long prompts every this many
    # tokens (0: only at template boundaries and the ends of prompts and completions).
    checkpoint_stride: int = D.checkpoint_stride
    verify_cache_restores: float = D.verify_cache_restores  # fraction of cache hits re-checked against a fresh prefill
    # Deltas of one request waiting for its consumer (async_engine.py); past either bound the
    # request is stopped. None: unbounded.
    stream_buffer_events: int | None = None
    stream_buffer_bytes: int | None = None
    # "ngram": prompt-lookup speculation; "draft": proposals of draft_model (engine/speculative.py)
    speculative: str = D.speculative
    draft_model: str | None = D.draft_model  # a model folder or repo id with the served model's vocabulary
    num_speculative_tokens: int = SPECULATIVE_TOKENS  # most tokens a row proposes per step
    loras: tuple[tuple[str, str], ...] = ()  # --lora: (name, adapter folder) of each served LoRA adapter
    max_loras: int = MAX_LORAS  # adapters resident at once (least recently used ones give way)


@dataclass
class EngineStats:
    """A snapshot, replaced (never mutated) by the engine thread after each step."""

    running: int = 0
    batch_rows: int = 0  # rows held in the decode batch cache
    prefilling: int = 0
    waiting: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    requests_failed: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prompts_prefilled_together: int = 0  # prompts that shared a left-padded prefill forward
    steps: int = 0
    state: str = "starting"
    prefix_cache: dict | None = None  # PrefixCacheStats as a dict, when the cache is on
    max_num_seqs: int = 0  # the admission bound in force (1 when generation is serialized)
    peak_active: int = 0  # most sequences running or prefilling at once since the bound last changed
    vision_cache: dict | None = None  # vision-embedding cache stats, for a vision-language model
    # --engine-process: the engine process's pid, its restarts after crashes, and why it is down now
    pid: int | None = None
    restarts: int = 0
    problem: str | None = None
    memory: dict | None = None  # --engine-process: that process's own memory (platform.process_memory)
    speculative: dict | None = None  # --speculative: SpeculationStats as a dict
    lora: dict | None = None  # --lora: the adapters, their slots, which are resident, loads so far


@dataclass
class EngineCounters:
    """Totals since the start (``peak_active``: since the admission bound last changed)."""

    finished: int = 0
    aborted: int = 0
    failed: int = 0
    prompt: int = 0
    generated: int = 0
    steps: int = 0
    together: int = 0
    peak_active: int = 0
