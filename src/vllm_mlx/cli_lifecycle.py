"""`vllm-mlx serve` flags of the batch-divergence monitor and of multi-model serving.

The argparse destinations are the :class:`ServerConfig` field names, so config files and
profiles set the same names.
"""

from __future__ import annotations

import argparse

from .config import BATCH_DIVERGENCE_ACTIONS as ACTIONS
from .models.model_specs import ModelSpecError, parse_model_specs


def add_lifecycle_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("batch-divergence monitor")
    d.add_argument("--batch-divergence-monitor", dest="batch_divergence_monitor", action="store_true",
                   help="probe at startup and then periodically whether greedy outputs change when requests "
                        "share a batch (serial vs concurrent runs of fixed prompts)")
    d.add_argument("--batch-divergence-threshold", dest="batch_divergence_threshold", type=float, default=0.95,
                   help="token agreement below which the monitor acts (default: %(default)s)")
    d.add_argument("--batch-divergence-action", dest="batch_divergence_action", choices=ACTIONS, default="warn",
                   help="warn: log and report; serialize: run one request at a time from then on "
                        "(default: %(default)s)")
    d.add_argument("--batch-divergence-interval", dest="batch_divergence_interval", type=float, default=300.0,
                   help="seconds between probes; 0 probes at startup only (default: %(default)s)")
    m = p.add_argument_group("multi-model serving (instead of the MODEL argument)")
    m.add_argument("--models", nargs="+", default=None, metavar="NAME=MODEL",
                   help="serve these models under these names (a local folder or a repo id each; NAME,ALIAS=MODEL "
                        "adds aliases); a model is loaded on its first request, and requests naming any other "
                        "model get 404")
    m.add_argument("--model-ttl", dest="model_ttl", type=float, default=None,
                   help="unload a model after this many idle seconds (default: never)")
    m.add_argument("--models-memory-gb", dest="models_memory_gb", type=float, default=None,
                   help="bound on the weights of all loaded models; the least recently used idle models are "
                        "unloaded to make room (default: no bound)")
    m.add_argument("--preload-models", dest="preload_models", action="store_true",
                   help="load every --models entry at startup (within the memory bound)")


def lifecycle_fields(args: argparse.Namespace) -> dict:
    """The ServerConfig fields these flags set, checked."""
    if not 0.0 <= args.batch_divergence_threshold <= 1.0:
        raise SystemExit("--batch-divergence-threshold must be within 0..1")
    if args.batch_divergence_interval < 0:
        raise SystemExit("--batch-divergence-interval must not be negative")
    if args.model_ttl is not None and args.model_ttl <= 0:
        raise SystemExit("--model-ttl must be positive")
    if args.models_memory_gb is not None and args.models_memory_gb <= 0:
        raise SystemExit("--models-memory-gb must be positive")
    if not args.models:
        for flag, given in (("--model-ttl", args.model_ttl), ("--models-memory-gb", args.models_memory_gb),
                            ("--preload-models", args.preload_models)):
            if given:
                raise SystemExit(f"{flag} applies to multi-model serving: give --models NAME=MODEL ...")
    if args.models:
        if args.model:
            raise SystemExit("give either a MODEL argument or --models, not both")
        for flag, given in (("--served-model-name", args.served_model_name), ("--warm-prompts", args.warm_prompts)):
            if given:
                raise SystemExit(f"{flag} applies to a single MODEL; with --models, give names (and aliases) "
                                 f"as NAME,ALIAS=MODEL")
        try:
            parse_model_specs(args.models)
        except ModelSpecError as exc:
            raise SystemExit(f"--models: {exc}")
    return dict(
        batch_divergence_monitor=args.batch_divergence_monitor,
        batch_divergence_threshold=args.batch_divergence_threshold,
        batch_divergence_action=args.batch_divergence_action,
        batch_divergence_interval=args.batch_divergence_interval,
        models=tuple(args.models or ()),
        model_ttl=args.model_ttl,
        models_memory_gb=args.models_memory_gb,
        preload_models=args.preload_models,
    )
