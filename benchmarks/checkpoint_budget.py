"""What a long agent conversation on a hybrid model costs the prefix cache, from a model config alone.

MLX arrays are lazy: the model is built and run on one token without materialising its weights, so
the exact shapes of every cache leaf of a real-size model (a config.json of any architecture mlx-lm
knows) are read without the memory. From them: bytes per checkpoint (state leaves), attention KV
bytes per token (KV leaves), and the footprint of a conversation of TOKENS tokens whose last TURNS
turns each leave the engine's checkpoints (template boundaries, one before the prompt end, the prompt
end, the completion end, plus the stride through new tokens) — against the default budget
(--cache-memory-fraction 0.25 of the memory available now, or --available-gb).

    .venv/bin/python benchmarks/checkpoint_budget.py [--config config.json] [--tokens 32768] [--turns 3]

Without --config a Qwen3-Next-80B-A3B-shaped config (its published layer layout) is used.
"""

from __future__ import annotations

import argparse
import json

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import _get_classes

from vllm_mlx.engine.cache_layout import CacheLayout, state_bytes
from vllm_mlx.platform import available_memory_bytes

QWEN3_NEXT_80B = {
    "model_type": "qwen3_next", "hidden_size": 2048, "num_hidden_layers": 48, "intermediate_size": 5120,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "vocab_size": 151936,
    "rms_norm_eps": 1e-6, "rope_theta": 10000000, "partial_rotary_factor": 0.25, "max_position_embeddings": 262144,
    "full_attention_interval": 4, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
    "num_experts": 512, "num_experts_per_tok": 10, "decoder_sparse_step": 1, "shared_expert_intermediate_size": 512,
    "moe_intermediate_size": 512, "norm_topk_prob": True, "mlp_only_layers": [], "tie_word_embeddings": False,
    "attention_bias": False,
}
CHECKPOINTS_PER_TURN = 6  # template boundaries (system, user start, message end, role header), prompt end - 1, end


def measure(config: dict) -> tuple[int, int]:
    """(bytes of one checkpoint's state leaves, attention KV bytes per token), at the model's dtype."""
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    model.set_dtype(mx.bfloat16)
    cache = make_prompt_cache(model)
    model(mx.array([[1, 2]]), cache=cache)  # lazy: shapes only, nothing is computed
    layout = CacheLayout.of(cache)
    leaves = layout.leaves(cache)
    states = sum(state_bytes(leaves[i].state) for i in layout.state_leaves)
    kv = sum(leaves[i].keys[..., :1, :].nbytes + leaves[i].values[..., :1, :].nbytes for i in layout.kv_leaves)
    return states, kv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="a model's config.json (default: Qwen3-Next-80B-A3B's layout)")
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--turn-tokens", type=int, default=2000, help="new tokens a turn adds (prompt and answer)")
    p.add_argument("--stride", type=int, default=4096)
    p.add_argument("--available-gb", type=float, default=None)
    args = p.parse_args()
    config = json.load(open(args.config)) if args.config else QWEN3_NEXT_80B
    per_checkpoint, kv_per_token = measure(config)
    stride_per_turn = -(-args.turn_tokens // args.stride)
    checkpoints = args.turns * (CHECKPOINTS_PER_TURN + stride_per_turn) + args.tokens // args.stride
    needed = checkpoints * per_checkpoint + args.tokens * kv_per_token
    available = args.available_gb * 2**30 if args.available_gb else available_memory_bytes()
    budget = int(available * 0.25)
    mb = 2**20
    print(f"model: {config.get('model_type')}  state per checkpoint: {per_checkpoint / mb:.1f} MB  "
          f"attention KV: {kv_per_token / 1024:.1f} KB/token")
    print(f"{args.tokens}-token conversation, last {args.turns} turns: {checkpoints} checkpoints "
          f"({checkpoints * per_checkpoint / mb:.0f} MB) + KV {args.tokens * kv_per_token / mb:.0f} MB "
          f"= {needed / mb:.0f} MB; default budget {budget / mb:.0f} MB of {available / 2**30:.1f} GB available: "
          f"{'fits' if needed <= budget else 'does NOT fit'}")


if __name__ == "__main__":
    main()
