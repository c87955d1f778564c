"""`serve` flags of the earlier vllm-mlx 0.2.x that are not flags here: each is mapped to ours or refused.

People bring launch scripts written for that command line (docs/migrating.md). Before the serve
arguments are parsed, :func:`translate_seed_args` rewrites every flag listed in :data:`SEED_FLAGS`:

* mapped: replaced by our flags with the same meaning (``--localhost`` -> ``--host 127.0.0.1``), so
  ``--print-config`` shows the result under our names;
* same here: a value that is already how this server works (``--stream-interval 1``) is dropped with
  a note on stderr saying so;
* refused: an OptionError with one line naming what to use here; `serve` exits 2 before any model
  is loaded.

Flags that are spelled and mean the same here (``--port``, ``--max-num-seqs``, ``--api-key`` ...)
are not listed: they are ours. The table is data; ``tests/test_seed_cli.py`` walks every seed name.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

from .spec import OptionError

Mapping = Callable[[str | None], "tuple[list[str], str | None]"]  # value -> (our arguments, a note or None)


class SeedRefusal(OptionError):
    """A seed flag (or value) with no equivalent here; the message names what to use instead."""


@dataclass(frozen=True)
class SeedFlag:
    flag: str
    takes_value: bool
    map: Mapping
    summary: str  # what it becomes here, for docs/migrating.md and `--help`


def _to(*ours: str, note: str | None = None) -> Mapping:
    """The flag becomes ``ours`` (``{}`` in them is replaced by the flag's value)."""
    return lambda value: ([a.replace("{}", value or "") for a in ours], note)


def _refuse(message: str) -> Mapping:
    def refuse(value):
        raise SeedRefusal(message)

    return refuse


def _values(cases: dict[str, Mapping], otherwise: Mapping) -> Mapping:
    """By value: a listed value has its own mapping, any other value ``otherwise``."""
    return lambda value: cases.get(str(value).strip().lower(), otherwise)(value)


def _same(note: str) -> Mapping:
    return lambda value: ([], note)


def _nonzero(mapping: Mapping, zero_note: str) -> Mapping:
    def run(value):
        try:
            zero = float(value) == 0
        except (TypeError, ValueError):
            raise SeedRefusal(f"expects a number (got {value!r})") from None
        return ([], zero_note) if zero else mapping(value)

    return run


_BATCHED = "batching is always on here (continuous batching; one request alone runs at full speed)"
_MEMORY_CACHE = "the prefix cache here is made of fixed-size blocks and bounded by memory"

SEED_FLAGS: tuple[SeedFlag, ...] = (
    # -- bind / basic
    SeedFlag("--localhost", False, _to("--host", "127.0.0.1"), "`--host 127.0.0.1`"),
    # -- runtime
    SeedFlag("--runtime-mode", True, _values(
        {"auto": _same(_BATCHED), "batched": _same(_BATCHED),
         "simple": _to("--max-num-seqs", "1", note="one request at a time is --max-num-seqs 1 here")},
        _refuse("--runtime-mode takes auto, simple or batched")),
        "auto/batched: the default (always batched); simple: `--max-num-seqs 1`"),
    SeedFlag("--runtime-mode-threshold", True, _same(_BATCHED), "nothing to set (always batched)"),
    # -- batching
    SeedFlag("--prefill-batch-size", True, _refuse(
        "--prefill-batch-size: prompts are prefilled in chunks within a per-step token budget here: "
        "use --max-num-batched-tokens N"), "refused: use `--max-num-batched-tokens`"),
    SeedFlag("--completion-batch-size", True, _refuse(
        "--completion-batch-size: the decode batch is bounded by --max-num-seqs here: use --max-num-seqs N"),
        "refused: use `--max-num-seqs`"),
    SeedFlag("--stream-interval", True, _values(
        {"1": _same("every token is streamed as it is made here (--stream-interval 1)")},
        _refuse("--stream-interval: every token is streamed as it is made here; only 1 is supported "
                "(remove the flag)")), "1: the behaviour here; other values refused"),
    SeedFlag("--chunked-prefill-tokens", True, _nonzero(
        _to("--max-num-batched-tokens", "{}"),
        "long prompts are always prefilled in chunks of at most --max-num-batched-tokens here"),
        "N: `--max-num-batched-tokens N`; 0: the default"),
    SeedFlag("--mllm-prefill-step-size", True, _nonzero(
        _refuse("--mllm-prefill-step-size: vision-language prompts are prefilled in chunks of "
                "--max-num-batched-tokens here: use --max-num-batched-tokens N"),
        "vision-language prompts are prefilled in chunks of --max-num-batched-tokens here"),
        "0: the default; N: refused, use `--max-num-batched-tokens`"),
    # -- cache
    SeedFlag("--cache-strategy", True, _values(
        {v: _same(_MEMORY_CACHE) for v in ("auto", "memory-aware", "paged")},
        _refuse(f"--cache-strategy legacy (an entry-count cache) is not available: {_MEMORY_CACHE}; size it "
                f"with --cache-memory-mb or --cache-memory-fraction")),
        "auto/memory-aware/paged: the default; legacy: refused, use `--cache-memory-mb`"),
    SeedFlag("--enable-prefix-cache", False, _to("--enable-prefix-caching"), "`--enable-prefix-caching` (on)"),
    SeedFlag("--disable-prefix-cache", False, _to("--no-prefix-cache"), "`--no-prefix-cache`"),
    SeedFlag("--prefix-cache-size", True, _refuse(
        f"--prefix-cache-size (entries): {_MEMORY_CACHE}: use --cache-memory-mb or --cache-memory-fraction"),
        "refused: use `--cache-memory-mb` / `--cache-memory-fraction`"),
    SeedFlag("--cache-memory-percent", True, _to("--cache-memory-fraction", "{}"), "`--cache-memory-fraction`"),
    SeedFlag("--no-memory-aware-cache", False, _refuse(
        f"--no-memory-aware-cache: {_MEMORY_CACHE} (no entry-count mode): size it with --cache-memory-mb"),
        "refused: use `--cache-memory-mb`"),
    SeedFlag("--use-paged-cache", False, _same(_MEMORY_CACHE), "nothing to set (always block-based)"),
    SeedFlag("--paged-cache-block-size", True, _to("--prefix-block-size", "{}"), "`--prefix-block-size`"),
    SeedFlag("--max-cache-blocks", True, _refuse(
        f"--max-cache-blocks: {_MEMORY_CACHE}: use --cache-memory-mb"), "refused: use `--cache-memory-mb`"),
    # -- KV-cache quantization (ordered by translate_seed_args: the switch, then the bits)
    SeedFlag("--kv-cache-quantization", False, _to("--kv-cache-bits", "8"), "`--kv-cache-bits 8`"),
    SeedFlag("--kv-cache-quantization-bits", True, _to("--kv-cache-bits", "{}"), "`--kv-cache-bits N`"),
    SeedFlag("--kv-cache-quantization-group-size", True, _values(
        {"64": _same("cached blocks are quantized in groups of 64 here (32 where the head size needs it)")},
        _refuse("--kv-cache-quantization-group-size: cached blocks are quantized in groups of 64 here; "
                "only 64 is supported (remove the flag)")), "64: the behaviour here; others refused"),
    SeedFlag("--kv-cache-min-quantize-tokens", True, _refuse(
        "--kv-cache-min-quantize-tokens: with --kv-cache-bits every cached block is quantized here; there is "
        "no minimum (remove the flag)"), "refused: every block is quantized with `--kv-cache-bits`"),
    # -- MTP
    SeedFlag("--enable-mtp", False, _to("--speculative", "mtp"), "`--speculative mtp`"),
    SeedFlag("--mtp-num-draft-tokens", True, _to("--num-speculative-tokens", "{}"), "`--num-speculative-tokens N`"),
    SeedFlag("--mtp-optimistic", False, _refuse(
        "--mtp-optimistic: MTP proposals are always checked by the model here, so the output is the model's "
        "(remove the flag)"), "refused: proposals are always verified"),
    # -- multimodal
    SeedFlag("--disable-mllm-vision-cache", False, _to("--vision-cache-mb", "0"), "`--vision-cache-mb 0`"),
    SeedFlag("--mllm-vision-cache-size", True, _refuse(
        "--mllm-vision-cache-size (entries): the vision-embedding cache is bounded by memory here: "
        "use --vision-cache-mb"), "refused: use `--vision-cache-mb`"),
    # -- security
    SeedFlag("--rate-limit", True, _nonzero(_to("--rate-limit", "{}"), "no rate limit is the default here"),
             "N: the same; 0: the default (no limit)"),
    SeedFlag("--trust-requests-when-auth-disabled", False, _refuse(
        "--trust-requests-when-auth-disabled: requests are checked the same way with or without --api-key here "
        "(remove the flag; allow local media with --media-local-dir)"), "refused"),
    # -- guardrails
    SeedFlag("--repetition-policy", True, _refuse(
        "--repetition-policy: there is no repetition detector here; set --default-repetition-penalty "
        "(or the request's repetition_penalty / frequency_penalty)"),
        "refused: use `--default-repetition-penalty`"),
    SeedFlag("--effective-context-tokens", True, _to("--max-model-len", "{}"), "`--max-model-len N`"),
    # -- download
    SeedFlag("--download-timeout", True, _refuse(
        "--download-timeout: fetch the model first with `vllm-mlx download MODEL --timeout N` (or set "
        "HF_HUB_DOWNLOAD_TIMEOUT)"), "refused: `vllm-mlx download MODEL --timeout N`"),
    SeedFlag("--download-retries", True, _refuse(
        "--download-retries: fetch the model first with `vllm-mlx download MODEL --retries N`"),
        "refused: `vllm-mlx download MODEL --retries N`"),
    SeedFlag("--offline", False, _refuse(
        "--offline: set HF_HUB_OFFLINE=1 in the environment (serve then loads only local or cached models)"),
        "refused: set `HF_HUB_OFFLINE=1`"),
)

BY_FLAG = MappingProxyType({s.flag: s for s in SEED_FLAGS})
# applied after the rest: --localhost forces 127.0.0.1 over any --host (as before); the bits override the
# switch's default of 8; the MTP draft count is dropped without --enable-mtp (as before)
_LAST = ("--localhost", "--kv-cache-quantization-bits", "--mtp-num-draft-tokens")


def translate_seed_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the arguments with every seed flag mapped, the notes to print); SeedRefusal for a refused one.
    Everything after ``--`` and every argument that is not a seed flag is kept as it is."""
    out: list[str] = []
    last: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        name, eq, inline = arg.partition("=")
        seed = BY_FLAG.get(name) if arg.startswith("--") else None
        if seed is None:
            out.append(arg)
            i += 1
            continue
        value = None
        if seed.takes_value:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise SeedRefusal(f"{seed.flag} expects a value")
        elif eq:
            raise SeedRefusal(f"{seed.flag} takes no value")
        try:
            ours, note = seed.map(value)
        except SeedRefusal as exc:
            message = str(exc)
            raise SeedRefusal(message if message.startswith(seed.flag) else f"{seed.flag}: {message}") from None
        seen.add(seed.flag)
        (last if seed.flag in _LAST else out).extend(ours)
        if note:
            notes.append(f"{seed.flag}{'' if value is None else ' ' + value}: {note}")
        i += 1
    if "--kv-cache-quantization-bits" in seen and "--kv-cache-quantization" not in seen:
        notes.append("--kv-cache-quantization-bits: no effect without --kv-cache-quantization (as before); "
                     "here: --kv-cache-bits N")  # as before: the bits alone quantize nothing
        last = [a for i, a in enumerate(last) if "--kv-cache-bits" not in (a, last[i - 1] if i else None)]
    if "--mtp-num-draft-tokens" in seen and "--enable-mtp" not in seen and not {"--speculative", "--draft-model"} & {
            a.partition("=")[0] for a in out}:
        notes.append("--mtp-num-draft-tokens: no effect without --enable-mtp (as before); here: --speculative mtp "
                     "--num-speculative-tokens N")  # as before: the count alone speculates nothing
        last = [a for i, a in enumerate(last) if "--num-speculative-tokens" not in (a, last[i - 1] if i else None)]
    return out + last, notes
