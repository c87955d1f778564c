"""The demo model's tokenizer: a deterministic byte-level BPE trained at run time.

The tokenizer is trained on a corpus generated in code (no downloads), so the
demo model -- and the test fixtures, which reuse this trainer -- never need a
model hub.  The layout follows the GPT-2 / Qwen / Llama 3 family: a
``ByteLevel`` pre-tokenizer and a ``ByteLevel`` decoder, which makes mlx-lm
pick its BPE streaming detokenizer, and which round-trips any text (every
byte is in the initial alphabet).

Training is deterministic: the corpus comes from a seeded ``random.Random``
and the BPE trainer breaks ties by pair order, so the same special tokens and
``vocab_size`` always give the same vocabulary and merges.
"""

from __future__ import annotations

import functools
import random
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from . import corpus_words

# Qwen3's added tokens: (content, special).  Qwen marks its think / tool-call
# tags as added-but-not-special tokens, so ``skip_special_tokens`` keeps them;
# the chat-control tokens are special.
QWEN3_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<think>", False),
    ("</think>", False),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
)


_CHAT_PHRASES = [
    "Hello! How can I help you today?",
    "Sure, here is what I found.",
    "I think the answer is",
    "Let me check that for you.",
    "Thank you for your question.",
    "Here is a short example:",
    "The weather in Paris is sunny today.",
    "Can you tell me more about that?",
    "That is a great question.",
    "I am not sure, but I will try.",
    "Please let me know if you need anything else.",
    "What is the capital of France?",
    "The capital of France is Paris.",
    "Write a short poem about the sea.",
    "Summarize the following text in one sentence.",
    "Okay, let me think about this step by step.",
]


def _inflect(verb: str, form: str) -> str:
    """Crude English inflection; good enough for a token corpus."""
    if form == "s":
        if verb == "be":
            return "is"
        if verb == "have":
            return "has"
        if verb.endswith(("s", "sh", "ch", "x", "o")):
            return verb + "es"
        if verb.endswith("y") and verb[-2] not in "aeiou":
            return verb[:-1] + "ies"
        return verb + "s"
    if form == "ed":
        if verb in corpus_words.IRREGULAR_PAST:
            return corpus_words.IRREGULAR_PAST[verb]
        if verb.endswith("e"):
            return verb + "d"
        if verb.endswith("y") and verb[-2] not in "aeiou":
            return verb[:-1] + "ied"
        return verb + "ed"
    if form == "ing":
        if verb == "be":
            return "being"
        if verb.endswith("ie"):
            return verb[:-2] + "ying"
        if verb.endswith("e") and not verb.endswith("ee") and len(verb) > 2:
            return verb[:-1] + "ing"
        return verb + "ing"
    return verb


def _plural(noun: str) -> str:
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _noun_phrase(rng: random.Random) -> str:
    noun = rng.choice(corpus_words.NOUNS)
    if rng.random() < 0.3:
        noun = _plural(noun)
    det = rng.choice(["the", "a", "this", "that", "my", "your", "our", "every", "some"])
    if det == "a" and noun[0] in "aeiou":
        det = "an"
    if rng.random() < 0.45:
        adj = rng.choice(corpus_words.ADJECTIVES)
        if det == "an" and adj[0] not in "aeiou":
            det = "a"
        elif det == "a" and adj[0] in "aeiou":
            det = "an"
        return f"{det} {adj} {noun}"
    return f"{det} {noun}"


def _sentence(rng: random.Random) -> str:
    subject = rng.choice(corpus_words.SUBJECTS).replace("_", " ")
    if rng.random() < 0.4:
        subject = _noun_phrase(rng)
    verb = rng.choice(corpus_words.VERBS)
    form = rng.choice(["base", "s", "ed", "ing"])
    if form == "ing":
        aux = {"I": "am", "you": "are", "we": "are", "they": "are", "people": "are"}
        verb_text = f"{aux.get(subject, 'is')} {_inflect(verb, 'ing')}"
    elif form == "ed":
        verb_text = _inflect(verb, "ed")
    elif form == "s" and subject not in ("I", "you", "we", "they", "people"):
        verb_text = _inflect(verb, "s")
    else:
        verb_text = rng.choice(["will", "can", "should", "might", "must"]) + " " + verb
    parts = [subject, verb_text, _noun_phrase(rng)]
    if rng.random() < 0.5:
        parts += [rng.choice(corpus_words.PREPOSITIONS), _noun_phrase(rng)]
    if rng.random() < 0.3:
        parts.insert(2, rng.choice(corpus_words.ADVERBS))
    text = " ".join(parts)
    text = text[0].upper() + text[1:]
    end = rng.choices([".", "!", "?", ",", ";", ":"], weights=[70, 6, 10, 8, 3, 3])[0]
    if rng.random() < 0.08:
        text = f'"{text}{end}"'
        end = ""
    return text + end


def _identifier(rng: random.Random) -> str:
    words = [rng.choice(corpus_words.NOUNS + corpus_words.VERBS) for _ in range(rng.randint(1, 3))]
    return "_".join(words)


def _code_snippet(rng: random.Random) -> str:
    name = _identifier(rng)
    arg = rng.choice(corpus_words.NOUNS)
    other = _identifier(rng)
    n = rng.randint(0, 100)
    kind = rng.randrange(4)
    if kind == 0:
        return (
            f"def {name}({arg}, {other}=None):\n"
            f'    """{_sentence(rng)}"""\n'
            f"    if {other} is None:\n"
            f"        {other} = []\n"
            f"    for i in range(len({arg})):\n"
            f"        {other}.append({arg}[i] * {n})\n"
            f"    return {other}\n"
        )
    if kind == 1:
        return (
            f"import os\nimport json\n\n"
            f"class {name.title().replace('_', '')}:\n"
            f"    def __init__(self, {arg}: int = {n}) -> None:\n"
            f"        self.{arg} = {arg}\n\n"
            f"    def {other}(self) -> str:\n"
            f"        return f\"{{self.{arg}}}\"\n"
        )
    if kind == 2:
        return (
            f"function {name}({arg}) {{\n"
            f"  const {other} = {arg}.map((x) => x + {n});\n"
            f"  console.log(`{other}: ${{{other}.length}}`);\n"
            f"  return {other};\n"
            f"}}\n"
        )
    return (
        f"$ python -m {name} --{arg.replace('_', '-')} {n} > out.txt\n"
        f"# {_sentence(rng)}\n"
        f"x = [{', '.join(str(rng.randint(0, 99)) for _ in range(4))}]\n"
        f"print(x[{rng.randint(0, 3)}] == {rng.randint(0, 99)}, x != [], {n} >= 0)\n"
    )


def _json_snippet(rng: random.Random) -> str:
    tool = rng.choice(["get_weather", "search", "calculator", "get_time", "send_email"])
    city = rng.choice(["Paris", "London", "Tokyo", "Berlin", "New York", "東京", "São Paulo"])
    kind = rng.randrange(3)
    if kind == 0:
        return (
            f'{{"name": "{tool}", "arguments": {{"city": "{city}", '
            f'"days": {rng.randint(1, 9)}, "unit": "celsius"}}}}'
        )
    if kind == 1:
        props = ", ".join(
            f'"{rng.choice(corpus_words.NOUNS)}": {{"type": "{rng.choice(["string", "integer", "number", "boolean"])}", '
            f'"description": "{_noun_phrase(rng)}"}}'
            for _ in range(rng.randint(1, 3))
        )
        return (
            f'{{"type": "function", "function": {{"name": "{tool}", "description": '
            f'"{_sentence(rng)}", "parameters": {{"type": "object", "properties": {{{props}}}, '
            f'"required": []}}}}}}'
        )
    items = ", ".join(f'"{rng.choice(corpus_words.NOUNS)}"' for _ in range(rng.randint(1, 4)))
    return (
        f'{{"id": {rng.randint(0, 9999)}, "ok": {rng.choice(["true", "false", "null"])}, '
        f'"score": {rng.random():.3f}, "tags": [{items}], "city": "{city}"}}'
    )


def _numbers_line(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/{rng.randint(1990, 2030)} at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    if kind == 1:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        return f"{a} + {b} = {a + b}, and {a} * 2 = {a * 2}."
    if kind == 2:
        return f"The price is ${rng.randint(1, 500)}.{rng.randint(0, 99):02d} ({rng.randint(1, 100)}% off)."
    return f"Version {rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)} - step {rng.randint(1, 64)} of 64"


def _unicode_line(rng: random.Random) -> str:
    words = [rng.choice(corpus_words.UNICODE_WORDS) for _ in range(rng.randint(1, 4))]
    return f"{rng.choice(_CHAT_PHRASES)} {' '.join(words)}"


def build_corpus(seed: int = 1234, lines: int = 16000) -> list[str]:
    """Generate the training corpus: a deterministic list of text samples."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(lines):
        r = rng.random()
        if r < 0.55:
            out.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 4))))
        elif r < 0.65:
            out.append(rng.choice(_CHAT_PHRASES) + " " + _sentence(rng))
        elif r < 0.77:
            out.append(_code_snippet(rng))
        elif r < 0.87:
            out.append(_json_snippet(rng))
        elif r < 0.93:
            out.append(_numbers_line(rng))
        else:
            out.append(_unicode_line(rng))
    # Every unicode sample at least a few times, so they get merged.
    for word in corpus_words.UNICODE_WORDS:
        out.extend([word, f" {word}", f"Say {word}!"] * 4)
    return out


@functools.lru_cache(maxsize=32)
def _train_cached(special_tokens: tuple[tuple[str, bool], ...], vocab_size: int, bos: str | None) -> str:
    base_size = vocab_size - len(special_tokens)
    if base_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small (need >= {300 + len(special_tokens)})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=base_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=16,
    )
    tok.train_from_iterator(build_corpus(), trainer=trainer)
    # Should the corpus run out of merges, pad with reserved tokens so the
    # vocabulary size is exactly what the model config says.
    i = 0
    while tok.get_vocab_size() < base_size:
        tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True)])
        i += 1
    for content, special in special_tokens:
        added = AddedToken(content, special=special, normalized=False)
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    if bos is not None:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    return tok.to_str()


def train_bpe_tokenizer(
    special_tokens: Iterable[tuple[str, bool]], vocab_size: int = 2048, bos: str | None = None
) -> Tokenizer:
    """Train (once per process, then cached) the byte-level BPE tokenizer.

    ``special_tokens`` are ``(content, special)`` pairs appended after the
    learned vocabulary (e.g. ``QWEN3_TOKENS``); ``bos``, one of them, is then
    prepended on ``encode`` by a post-processor (as in Llama-style
    tokenizer.json files).  The result has exactly ``vocab_size`` tokens.  A
    fresh ``Tokenizer`` is returned on every call, so callers may mutate it.
    """
    return Tokenizer.from_str(_train_cached(tuple(map(tuple, special_tokens)), int(vocab_size), bos))


def _byte_level_table() -> dict[str, int]:
    """Map of the byte-level BPE alphabet characters back to byte values."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


def token_byte_table(tokenizer: Tokenizer) -> list[str]:
    """Hex-encoded bytes of every token id of a byte-level BPE tokenizer."""
    table = _byte_level_table()
    added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    out = []
    for i in range(tokenizer.get_vocab_size()):
        piece = tokenizer.id_to_token(i)
        if piece is None:
            out.append("")
        elif piece in added:
            out.append(piece.encode("utf-8").hex())
        else:
            out.append(bytes(table[ch] for ch in piece).hex())
    return out
