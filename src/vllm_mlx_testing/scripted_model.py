"""A "model" whose forward pass follows a script, for exact-output tests.

The model puts all probability on one token per position, so text generated
through the real engine, sampler (any temperature / top-p / top-k),
detokenizer and API is exactly the scripted reply followed by EOS.

How it works
------------
* The model has one layer, ``make_cache()`` returns ``[KVCache()]``, and the
  token history lives in that cache: each call writes ``token_id + 1`` (as
  float32, shape ``(B, 1, L, 1)``) as both keys and values with
  ``cache[0].update_and_fetch`` and reads back the whole history
  ``(B, 1, T, 1)``.  So batching (left padding, ``filter``, ``extend``,
  ``merge``, ``trim``) and prefix caches that copy KV blocks keep working the
  way they do for a real model.  Zeros (padding written by ``extend`` /
  ``merge``), positions before a ``BatchKVCache``'s ``left_padding`` and the
  decode batch's holes (positions a row dropped in place after a verify step:
  ``DecodeKVCache.hole_mask``) are not part of a row's history.
* For each row, the last occurrence of the family's assistant-turn marker
  (qwen3: ``<|im_start|>assistant``; llama: ``<|start_header_id|>assistant
  <|end_header_id|>``) splits the history into a *context* (before it) and
  the assistant's tokens so far ``s`` (after it).
* The context, decoded to text with a byte table stored in ``config.json``
  (no tokenizer is needed at run time), picks the reply: the first rule that
  matches (``select_reply``), else the default reply.
* ``next_token``: the largest ``j`` with ``s`` ending in ``reply[:j]`` gives
  the next token ``reply[j]``, or EOS when the whole reply is there.
* Without any marker (raw completion prompts) the whole history is both the
  context and ``s``; each reply is tried in rule order with the context
  taken as the history minus that reply's already-generated prefix.
* Logits are ``-1e9`` everywhere but ``0.0`` on the forced token.  Only
  positions after the marker are scripted; earlier prompt positions predict
  EOS (their logits are never sampled).

The KV cache must keep float32 (token ids are stored as exact floats).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import BaseModelArgs
from mlx_lm.models.cache import KVCache

from vllm_mlx.models.demo.tokenizer import token_byte_table

from .agent_script import DEFAULT_COMMAND, FORMATS, agent_reply

MODEL_TYPE = "vllm_mlx_scripted"
# When set (in the server's environment), every new conversation the model answers is appended to
# this file as one JSON line {"context", "kind", "reply"}: what the server really handed the model.
TRANSCRIPT_ENV = "VLLM_MLX_SCRIPTED_TRANSCRIPT"
MODEL_FILE = "scripted_model.py"
VERIFY_WIDTH = 17  # positions of a forward up to which a raw prompt's are all scripted (a verify step's)
NEG = -1e9


def model_file_source(what: str, module: str, names: str = "Model, ModelArgs") -> str:
    """The ``model_file`` a fixture folder carries: mlx-lm / mlx-vlm run it (``trust_remote_code``)
    and it imports ``names`` from ``module`` of this package.  The package is not part of the
    ``vllm_mlx`` wheel; it is importable wherever the repository's ``src/`` is on ``sys.path`` (the
    editable install, ``PYTHONPATH``).  Elsewhere -- a server installed from the wheel -- the file
    appends this checkout's ``src/`` to ``sys.path`` (last, so the installed ``vllm_mlx`` still wins)."""
    src = str(Path(__file__).resolve().parent.parent)
    return (
        f'"""{what}; the implementation lives in {module} (vllm-mlx\'s development-only test fixtures)."""\n'
        "try:\n"
        f"    from {module} import {names}  # noqa: F401,F403\n"
        "except ModuleNotFoundError:  # served by a vllm-mlx without the repository's src/ on sys.path\n"
        "    import sys\n"
        "\n"
        f"    sys.path.append({src!r})\n"
        f"    from {module} import {names}  # noqa: F401,F403\n"
    )


MODEL_FILE_SOURCE = model_file_source("Scripted test model", "vllm_mlx_testing.scripted_model")


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str = MODEL_TYPE
    vocab_size: int = 2048
    eos_token_id: Any = 0
    assistant_marker: list = field(default_factory=list)
    token_bytes: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    default_reply: str = ""
    default_reply_ids: list = field(default_factory=list)
    # agent behaviour (see agent_script.py): {"format": "hermes" | "llama3_json", "command": str}
    agent: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# The script: small pure functions, easy to extend with new rule kinds.

# Rule kinds: name -> predicate(argument, context_text).  A rule is a dict
# with one of these keys plus "reply"/"reply_ids".
RULE_KINDS: dict[str, Callable[[Any, str], bool]] = {
    "if_contains": lambda needle, context: needle in context,
}


def rule_matches(rule: dict, context: str) -> bool:
    """Whether ``rule`` applies to the decoded ``context``."""
    for kind, predicate in RULE_KINDS.items():
        if kind in rule:
            return predicate(rule[kind], context)
    raise ValueError(f"rule has no known kind ({sorted(RULE_KINDS)}): {rule!r}")


def rule_reply(rule: dict, context: str, byte_ids: dict[int, int] | None = None) -> list[int]:
    """A rule's reply ids. A rule with ``"quote": regex`` puts the regex's first group, found in
    ``context``, where its reply says ``{quote}`` (spelled with one-byte tokens), so the reply can
    repeat what the conversation holds -- e.g. a tool result."""
    if "quote" not in rule:
        return rule["reply_ids"]
    match = re.search(rule["quote"], context, re.S)
    quoted = match.group(1).encode() if match else b""
    return [*rule["reply_ids"], *((byte_ids or {})[b] for b in quoted), *rule["after_ids"]]


def select_reply(context: str, rules: Sequence[dict], default_reply_ids: list[int],
                 byte_ids: dict[int, int] | None = None) -> list[int]:
    """The reply token ids for a conversation whose text is ``context``."""
    for rule in rules:
        if rule_matches(rule, context):
            return rule_reply(rule, context, byte_ids)
    return default_reply_ids


def reply_progress(s: Sequence[int], reply: Sequence[int]) -> int:
    """Largest ``j`` such that ``s`` ends with ``reply[:j]`` (0 always fits)."""
    s, reply = tuple(s), tuple(reply)
    for j in range(min(len(s), len(reply)), 0, -1):
        if s[len(s) - j :] == reply[:j]:
            return j
    return 0


def next_token(s: Sequence[int], reply: Sequence[int], eos: int) -> int:
    """The token that continues ``s`` along ``reply`` (EOS once complete)."""
    j = reply_progress(s, reply)
    return reply[j] if j < len(reply) else eos


def find_last(tokens: Sequence[int], marker: Sequence[int]) -> int:
    """Index just past the last occurrence of ``marker`` in ``tokens``, or -1."""
    n = len(marker)
    if n == 0:
        return -1
    first = marker[0]
    for i in range(len(tokens) - n, -1, -1):
        if tokens[i] == first and list(tokens[i : i + n]) == list(marker):
            return i + n
    return -1


class Script:
    """The scripted behaviour, independent of mlx (plain lists of ints)."""

    def __init__(self, args: ModelArgs):
        eos = args.eos_token_id
        self.eos = int(eos[0] if isinstance(eos, (list, tuple)) else eos)
        self.marker = [int(t) for t in args.assistant_marker]
        self.token_bytes = [bytes.fromhex(h) for h in args.token_bytes]
        self.rules = list(args.rules)
        self.default_reply_ids = [int(t) for t in args.default_reply_ids]
        self.byte_ids: dict[int, int] = {}  # byte value -> its one-byte token (for quoting rules)
        for i, piece in enumerate(self.token_bytes):
            if len(piece) == 1:
                self.byte_ids.setdefault(piece[0], i)
        self.agent = dict(args.agent or {})
        self.format = FORMATS[self.agent.get("format", "hermes")] if self.agent else None
        self.encoding = {b: i for i, b in reversed(list(enumerate(self.token_bytes))) if b}
        self.longest = max((len(b) for b in self.encoding), default=1)
        self.transcript = os.environ.get(TRANSCRIPT_ENV)
        self._replies: dict[tuple, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """Greedy longest-match tokens whose bytes spell ``text`` (any spelling decodes the same)."""
        data, out, i = text.encode("utf-8"), [], 0
        while i < len(data):
            for n in range(min(self.longest, len(data) - i), 0, -1):
                token = self.encoding.get(data[i : i + n])
                if token is not None:
                    out.append(token)
                    i += n
                    break
            else:
                raise ValueError(f"byte {data[i]:#x} has no token")
        return out

    def reply_for(self, context_ids: Sequence[int]) -> list[int]:
        """The reply to a conversation (memoized: every decode step asks again)."""
        key = tuple(context_ids)
        found = self._replies.get(key)
        if found is None:
            found = self._reply_for(key)
            if len(self._replies) >= 64:
                self._replies.pop(next(iter(self._replies)))
            self._replies[key] = found
        return found[2]

    def record(self, context_ids: Sequence[int]) -> None:
        """Append the conversation and its reply to the transcript file, when there is one."""
        if self.transcript:
            kind, text, _ = self._replies[tuple(context_ids)]
            line = {"context": self.decode(context_ids), "kind": kind, "reply": text}
            with open(self.transcript, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")

    def _reply_for(self, context_ids: tuple) -> tuple[str, str, list[int]]:
        """(kind, text, token ids) of the reply: the first matching rule, else the agent, else the default."""
        reply = None
        context = self.decode(context_ids)
        kind, text = "default", None
        for i, rule in enumerate(self.rules):
            if rule_matches(rule, context):
                kind, reply = f"rule {i}", rule_reply(rule, context, self.byte_ids)
                break
        if reply is None and self.format is not None:
            found = agent_reply(context, self.format, self.agent.get("command", DEFAULT_COMMAND))
            if found is not None:
                kind, text = found
                reply = self.encode(text)
        if reply is None:
            reply = self.default_reply_ids
        return kind, text if text is not None else self.decode(reply), reply

    def decode(self, tokens: Sequence[int]) -> str:
        table = self.token_bytes
        return b"".join(table[t] for t in tokens if 0 <= t < len(table)).decode(
            "utf-8", errors="replace"
        )

    def predict(self, history: Sequence[int], sampled: bool = False) -> int:
        """Next token after ``history`` (the row's real tokens); ``sampled``: this position's
        prediction is the one the engine samples (the last of the forward call)."""
        cut = find_last(history, self.marker)
        if cut >= 0:
            context = history[: cut - len(self.marker)]
            reply = self.reply_for(context)
            if sampled and reply_progress(history[cut:], reply) == 0:
                self.record(context)  # the reply's first token: once per request
            return next_token(history[cut:], reply, self.eos)
        # No assistant turn: the prompt is a raw completion prompt.
        for rule in [*self.rules, None]:
            reply = self.default_reply_ids if rule is None else rule_reply(rule, "", self.byte_ids)
            j = reply_progress(history, reply)
            context = self.decode(history[: len(history) - j])
            if rule is None or rule_matches(rule, context):
                return reply[j] if j < len(reply) else self.eos
        raise AssertionError("unreachable")

    def predict_positions(self, history: list[int], n_last: int) -> list[int]:
        """Next tokens for the last ``n_last`` positions of ``history``.

        Positions after the last marker are scripted; earlier ones get EOS. Without a marker (a raw
        completion prompt) a few positions (a decode or verify step's: ``VERIFY_WIDTH``) are all
        scripted, a longer chunk's (prefill) only its last.
        """
        cut = find_last(history, self.marker)
        out = []
        for p in range(len(history) - n_last, len(history)):
            if p < 0:
                out.append(self.eos)
            elif p == len(history) - 1 or (cut >= 0 and p + 1 >= cut) or (cut < 0 and n_last <= VERIFY_WIDTH):
                out.append(self.predict(history[: p + 1], sampled=p == len(history) - 1))
            else:
                out.append(self.eos)
        return out


# ---------------------------------------------------------------------------
# The mlx-lm model.


class _Layer(nn.Module):
    """Placeholder so ``len(model.layers) == 1`` (one KV cache)."""


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.vocab_size = args.vocab_size
        self.layers = [_Layer()]
        self.dummy = mx.zeros((1,), dtype=mx.float32)
        self._script = Script(args)

    def make_cache(self) -> list:
        return [KVCache()]

    def __call__(self, inputs: mx.array, cache=None, input_embeddings=None, **kwargs) -> mx.array:
        B, L = inputs.shape
        kv = (inputs.astype(mx.float32) + 1.0).reshape(B, 1, L, 1)
        c = cache[0] if cache else None
        holes = None
        if c is not None:
            keys, _ = c.update_and_fetch(kv, kv)
            left_padding = getattr(c, "left_padding", None)
            if getattr(c, "holes", None) is not None:  # positions the decode batch dropped in place
                holes = np.array(c.hole_mask(keys.shape[2]))
        else:
            keys, left_padding = kv, None
        hist = np.array(keys.astype(mx.float32)).reshape(B, -1)
        T = hist.shape[1]
        if left_padding is None:
            pads = np.zeros(B, dtype=np.int64)
        else:
            pads = np.array(left_padding).reshape(-1).astype(np.int64)
            if pads.shape[0] != B:
                pads = np.broadcast_to(pads, (B,))

        eos = self._script.eos
        forced = np.full((B, L), eos, dtype=np.int32)  # padding positions: EOS
        pos = np.arange(T)
        for b in range(B):
            row = hist[b]
            keep = (pos >= max(int(pads[b]), 0)) & (row != 0)
            if holes is not None:
                keep &= ~holes[b]
            real = [int(x) - 1 for x in row[keep]]
            chunk_cols = np.nonzero(keep[T - L :])[0]  # this call's real positions
            if len(chunk_cols):
                forced[b, chunk_cols] = self._script.predict_positions(real, len(chunk_cols))
        hit = mx.arange(self.vocab_size)[None, None, :] == mx.array(forced)[..., None]
        return mx.where(hit, mx.array(0.0, mx.float32), mx.array(NEG, mx.float32))


# ---------------------------------------------------------------------------
# Build-time helpers (used by ``builders.build_scripted_model``).


def _encode_exact(tokenizer, text: str, what: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    back = tokenizer.decode(ids, skip_special_tokens=False)
    if back != text:
        raise ValueError(f"{what} does not round-trip through the tokenizer: {text!r} -> {back!r}")
    return ids


def scripted_config(
    *,
    tokenizer,
    rules: list[dict],
    default_reply: str,
    assistant_marker: str,
    eos_token_id: list[int],
    bos_token_id: int,
    vocab_size: int,
) -> dict:
    """The ``config.json`` of a scripted model (replies pre-tokenized)."""
    stored_rules = []
    for i, rule in enumerate(rules):
        if "reply" not in rule:
            raise ValueError(f"rule {i} has no 'reply': {rule!r}")
        rule_matches(rule, "")  # validates the kind
        stored = dict(rule)
        if "quote" in rule:
            re.compile(rule["quote"])
            before, marker, after = rule["reply"].partition("{quote}")
            if not marker:
                raise ValueError(f"rule {i} has a 'quote' but its reply has no {{quote}}: {rule!r}")
            stored["reply_ids"] = _encode_exact(tokenizer, before, f"rule {i} reply") if before else []
            stored["after_ids"] = _encode_exact(tokenizer, after, f"rule {i} reply") if after else []
            stored_rules.append(stored)
            continue
        stored["reply_ids"] = _encode_exact(tokenizer, rule["reply"], f"rule {i} reply")
        stored_rules.append(stored)
    return {
        "architectures": ["VllmMlxScriptedForCausalLM"],
        "model_type": MODEL_TYPE,
        "model_file": MODEL_FILE,
        "vocab_size": vocab_size,
        "eos_token_id": eos_token_id,
        "bos_token_id": bos_token_id,
        "torch_dtype": "float32",
        "assistant_marker": tokenizer.encode(assistant_marker, add_special_tokens=False).ids,
        "rules": stored_rules,
        "default_reply": default_reply,
        "default_reply_ids": _encode_exact(tokenizer, default_reply, "default_reply"),
        "token_bytes": token_byte_table(tokenizer),
    }


def dummy_weights() -> dict:
    """The model's single (unused) parameter, for ``model.safetensors``."""
    return {"dummy": mx.zeros((1,), dtype=mx.float32)}
