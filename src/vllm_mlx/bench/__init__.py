"""`vllm-mlx bench`: reproducible benchmarks (warm-up, repeats, medians with 95% intervals).

Modes (see ``cli.py``): the in-process engine with presets (``engine_bench``) and its
bare mlx-lm ceiling (``ceiling``); any OpenAI-compatible server, optionally interleaved
with a second one (``serve_bench``); serial vs concurrent greedy agreement
(``divergence``); multi-turn growing-prefix TTFT (``agent``).
"""
