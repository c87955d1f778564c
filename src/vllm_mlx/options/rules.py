"""The rules across serve options (one option's value limiting another's), checked after each
option's own check (:func:`vllm_mlx.options.check_settings`); the options are in :mod:`.table`."""

from __future__ import annotations

from .spec import Rule


def _multi_model_only(name: str, flag: str) -> Rule:
    return Rule(("models", name), lambda v: None if v["models"] or not v[name] else
                f"{flag} applies to multi-model serving: give --models NAME=MODEL ...")


def _single_model_only(name: str, flag: str) -> Rule:
    return Rule(("models", name), lambda v: None if not (v["models"] and v[name]) else
                f"{flag} applies to a single MODEL; with --models, give names (and aliases) as NAME,ALIAS=MODEL")


def _speculating(v: dict) -> bool:
    """Speculation asked for by name (auto turns itself off where it cannot run)."""
    return v["speculative"] not in ("off", "auto") or bool(v["draft_model"])


RULES: tuple[Rule, ...] = (
    Rule(("mllm", "text_only"), lambda v: "--mllm and --text-only contradict each other; pass one of them"
         if v["mllm"] and v["text_only"] else None),
    Rule(("mcp_auto", "mcp_config"), lambda v: "--mcp-auto needs --mcp-config"
         if v["mcp_auto"] and not v["mcp_config"] else None),
    Rule(("cors_origins", "cors_allow_credentials"),
         lambda v: "--cors-allow-credentials cannot be combined with --cors-origins '*'"
         if v["cors_allow_credentials"] and "*" in v["cors_origins"] else None),
    Rule(("model", "models"), lambda v: "give either a MODEL argument or --models, not both"
         if v["model"] and v["models"] else None),
    Rule(("speculative", "draft_model"), lambda v: "--speculative draft needs --draft-model MODEL"
         if v["speculative"] == "draft" and not v["draft_model"] else None),
    Rule(("speculative", "draft_model"), lambda v: f"--draft-model is for --speculative draft, not "
         f"{v['speculative']}" if v["draft_model"] and v["speculative"] not in ("auto", "draft") else None),
    Rule(("num_speculative_tokens", "speculative", "draft_model"), lambda v: None if not v["num_speculative_tokens"]
         or v["speculative"] != "off" else "--num-speculative-tokens applies with --speculative "
         "auto|ngram|draft|mtp, --draft-model"),
    Rule(("speculative", "draft_model", "deterministic"), lambda v: "--speculative cannot be combined with "
         "--deterministic (which computes every row alone)" if _speculating(v) and v["deterministic"] else None),
    _multi_model_only("model_ttl", "--model-ttl"),
    _multi_model_only("models_memory_gb", "--models-memory-gb"),
    _multi_model_only("preload_models", "--preload-models"),
    _single_model_only("served_model_name", "--served-model-name"),
    _single_model_only("warm_prompts", "--warm-prompts"),
    _single_model_only("draft_model", "--draft-model"),
    Rule(("lora", "max_loras"), lambda v: "--max-loras applies with --lora NAME=PATH"
         if v["max_loras"] and not v["lora"] else None),
    Rule(("models", "lora", "distributed"), lambda v: None if not (v["lora"] and (v["models"] or v["distributed"]))
         else f"--lora cannot be combined with {'--models' if v['models'] else '--distributed'} yet"),
    Rule(("engine_restarts", "engine_process"), lambda v: "--engine-restarts applies with --engine-process"
         if v["engine_restarts"] is not None and not v["engine_process"] else None),
    Rule(("engine_restarts", "distributed"), lambda v: "--engine-restarts cannot be combined with --distributed: "
         "a distributed job's engine process is not restarted (its death ends the job)"
         if v["engine_restarts"] is not None and v["distributed"] else None),
    Rule(("memory_warn_threshold", "memory_limit_threshold"),
         lambda v: "--memory-limit-threshold must be greater than --memory-warn-threshold"
         if v["memory_limit_threshold"] <= v["memory_warn_threshold"] else None),
)
