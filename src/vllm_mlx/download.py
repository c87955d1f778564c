"""`vllm-mlx download MODEL`: fetch a model's files into the Hugging Face cache (or a folder) ahead of serving."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_download_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download a model (repo id) so that `serve` can load it offline")
    p.add_argument("model", help="a Hugging Face repo id, e.g. some-org/some-model")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--local-dir", default=None,
                   help="put the files in this folder instead of the Hugging Face cache; serve it by its path")
    p.add_argument("--all-files", action="store_true",
                   help="fetch every file of the repo, not only what serving needs (weights, configs, tokenizer)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds without data before a file download fails (default: huggingface_hub's, or "
                        "$HF_HUB_DOWNLOAD_TIMEOUT)")
    p.add_argument("--retries", type=int, default=0, metavar="N",
                   help="try again this many times after a network failure (default: %(default)s)")
    p.add_argument("--mllm", action="store_true",
                   help="accepted for compatibility: the files of vision-language models (processor and "
                        "preprocessor configs) are always fetched")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run_download(args: argparse.Namespace) -> int:
    """Download (with huggingface_hub's progress bars); 0 on success, 1 with a clear message otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    from .models.loader import MODEL_FILE_PATTERNS

    if Path(args.model).expanduser().exists():
        print(f"{args.model} is a local folder already; serve it with `vllm-mlx serve {args.model}`")
        return 0
    what = f"{args.model}" + (f" at revision {args.revision}" if args.revision else "")
    if args.timeout is not None:
        from huggingface_hub import constants

        constants.HF_HUB_DOWNLOAD_TIMEOUT = args.timeout  # read when each file is fetched
    try:
        path = _fetch(args, snapshot_download, MODEL_FILE_PATTERNS,
                      (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError))
    except GatedRepoError:
        return _fail(f"{what} is gated: accept its terms on the hub and log in (`hf auth login`) or set HF_TOKEN")
    except RepositoryNotFoundError:
        return _fail(f"no model repository {args.model!r} (or it is private: log in or set HF_TOKEN)")
    except RevisionNotFoundError:
        return _fail(f"{args.model!r} has no revision {args.revision!r}")
    except LocalEntryNotFoundError:
        if _offline():
            return _fail(f"{what} is not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it; "
                         f"unset HF_HUB_OFFLINE on a machine with network access")
        return _fail(f"could not reach the model hub to download {what}, and it is not in the local cache; "
                     f"check the network connection (or the HF_ENDPOINT setting)")
    except Exception as exc:  # network failures, disk full, ...
        return _fail(f"could not download {what}: {type(exc).__name__}: {exc}")
    if not (path / "config.json").exists():
        return _fail(f"downloaded {what} to {path}, but it has no config.json: it is not a model this server loads")
    print(f"{what}: {_size(path) / 2**20:.1f} MiB in {path}")
    print(f"serve it with: vllm-mlx serve {args.local_dir or args.model}")
    return 0


def _fetch(args: argparse.Namespace, snapshot_download, patterns: list[str], final: tuple) -> Path:
    """snapshot_download, tried again up to ``--retries`` times after a network failure (not after one
    that another try cannot fix: no such repo or revision, gated, offline and not cached)."""
    kwargs = {"etag_timeout": args.timeout} if args.timeout is not None else {}
    for attempt in range(max(args.retries, 0) + 1):
        try:
            return Path(snapshot_download(args.model, revision=args.revision, local_dir=args.local_dir,
                                          allow_patterns=None if args.all_files else patterns, **kwargs))
        except final:
            raise
        except Exception as exc:
            if attempt >= args.retries:
                raise
            print(f"download failed ({type(exc).__name__}: {exc}); trying again ({attempt + 1} of {args.retries})",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
