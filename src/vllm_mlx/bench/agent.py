"""`vllm-mlx bench agent`: an agent-style conversation whose prompt grows every turn; TTFT per turn.

Each conversation starts with a long system prompt (unique per conversation, so conversations
never hit each other's cache) and resends the whole history each turn, the server's own previous
answers included. With two targets, every conversation is run on both, back to back, alternating
which goes first. TTFT per turn: median and 95% interval over conversations.
"""

from __future__ import annotations

from .presets import WORDS
from .stats import summarize


def system_prompt(words: int, nonce: str) -> str:
    return f"Session {nonce}. You are a careful agent.\n" + " ".join(WORDS[i % len(WORDS)] for i in range(words))


async def conversation(target, turns: int, system_words: int, max_tokens: int, nonce: str) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt(system_words, nonce)}]
    out = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Step {turn + 1}: run the next tool and report."})
        rec = await target.chat(messages, max_tokens)
        if rec.error:
            raise RuntimeError(f"turn {turn + 1} failed on {target.name}: {rec.error}")
        messages.append({"role": "assistant", "content": rec.text})
        out.append({"ttft_ms": rec.ttft * 1000, "prompt_tokens": rec.prompt_tokens, "e2e_ms": rec.e2e * 1000})
    return out


async def run_agent(targets: list, names: list[str], turns: int = 6, conversations: int = 3,
                    system_words: int = 1500, max_tokens: int = 32, warmup: int = 1, progress=None) -> dict:
    runs: dict[str, list[list[dict]]] = {n: [] for n in names}
    for rep in range(warmup + conversations):
        order = list(range(len(targets))) if rep % 2 == 0 else list(reversed(range(len(targets))))
        for k in order:
            conv = await conversation(targets[k], turns, system_words, max_tokens, f"{rep}-{k}")
            if rep >= warmup:
                runs[names[k]].append(conv)
            if progress is not None:
                progress.update(1)
    summary = {
        name: [{"turn": t + 1, "ttft_ms": summarize([c[t]["ttft_ms"] for c in convs]).as_dict(),
                "prompt_tokens": convs[0][t]["prompt_tokens"] if convs else 0} for t in range(turns)]
        for name, convs in runs.items()
    }
    return {"turns": turns, "conversations": conversations, "system_words": system_words,
            "max_tokens": max_tokens, "names": names, "runs": runs, "summary": summary}


def format_agent(result: dict) -> str:
    names = result["names"]
    lines = [f"TTFT per turn, ms: median [95% CI] over {result['conversations']} conversations "
             f"(~{result['system_words']}-word system prompt, {result['max_tokens']} tokens per answer)",
             "| turn | prompt tokens | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for t in range(result["turns"]):
        cells = []
        for n in names:
            s = result["summary"][n][t]["ttft_ms"]
            cells.append(f"{s['median']:.0f} [{s['low']:.0f}, {s['high']:.0f}]")
        lines.append(f"| {t + 1} | {result['summary'][names[0]][t]['prompt_tokens']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
