"""A Lark grammar (or a regex) rewritten to describe its language *as the inside of a JSON string*.

A custom tool (Codex's ``apply_patch``) takes free text that must follow the tool's Lark grammar,
but a model writes tool calls in its JSON call format: ``{"name": "apply_patch", "arguments":
{"input": "*** Begin Patch\\n..."}}``. To enforce the grammar while the model writes the call, the
grammar is rewritten so it matches the JSON-escaped text: every string literal is replaced by its
JSON-escaped spelling, and every regular expression by one matching the JSON encoding of the strings
it matched (a character class keeps its plain characters and adds the escapes of the quote, the
backslash and the control characters it holds: ``\\"``, ``\\\\``, ``\\n``, ``\\t``, ``\\u001b``...).
Rule and terminal names get a prefix so several tools' grammars live in one grammar.

Terminals become rules: inside a JSON string a plain run of characters and an escape are separate
lexemes, so a lexeme never has to end halfway through an escape (``.+`` then ``\\n`` would need the
lexer to take back two bytes). Supported: rules, terminals, string literals, ``/regex/`` (flags ``s``,
``x``), ``%import common.NAME`` for the usual terminals, ``->`` aliases. Refused (GrammarError):
special tokens, ``%ignore``, ``%json``, ``%regex``, ``%llguidance``, case-insensitive literals,
regex lookaround and backreferences.
"""

from __future__ import annotations

import ast
import json
import re
from re import _parser as sre  # the standard library's own regex parser (its AST is stable across 3.11+)

from ..engine.constraints import GrammarError

_TOKEN = re.compile(r"""
    (?P<comment>//[^\n]*|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"(?P<strflags>i?))
  | (?P<regex>/(?:[^/\\\n]|\\.)+/(?P<reflags>[imslux]*))
  | (?P<special><[^<>\s]+>)
  | (?P<directive>%[a-z_]+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<other>->|.|\n)
""", re.X | re.S)

COMMON = {  # lark's common.lark terminals a tool grammar may import
    "LF": r'"\n"', "CR": r'"\r"', "NEWLINE": r"/(\r?\n)+/", "WS": r"/[ \t\f\r\n]+/", "WS_INLINE": r"/[ \t]+/",
    "DIGIT": r"/[0-9]/", "HEXDIGIT": r"/[a-fA-F0-9]/", "INT": r"/[0-9]+/", "SIGNED_INT": r"/[+-]?[0-9]+/",
    "LETTER": r"/[a-zA-Z]/", "WORD": r"/[a-zA-Z]+/", "CNAME": r"/[_a-zA-Z][_a-zA-Z0-9]*/",
}
_IMPORT = re.compile(r"%import\s+common\s*(?:\.\s*(?P<one>[A-Z_]+)|\((?P<many>[^)]*)\))[ \t]*(?=\n|$)")

SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
SPECIALS = ['"', "\\"] + [chr(c) for c in range(0x20)]
_META = set("\\.+*?()|[]{}^$#&-~")


def json_escape(ch: str) -> str:
    """The JSON spelling of one character (as ``json.dumps`` writes it, non-ASCII kept)."""
    if ch in SHORT_ESCAPES:
        return SHORT_ESCAPES[ch]
    return f"\\u{ord(ch):04x}" if ord(ch) < 0x20 else ch


def _lit(text: str) -> str:
    """A regex matching ``text`` literally."""
    return "".join("\\" + c if c in _META else c for c in text)


def _code(point: int) -> str:
    """A code point as a regex escape both Python's and llguidance's (Rust) syntax read."""
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


def _class_item(op, av) -> str:
    if op is sre.LITERAL:
        return _lit(chr(av)) if chr(av) not in "\n\r\t" else {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[chr(av)]
    if op is sre.RANGE:
        return f"{_code(av[0])}-{_code(av[1])}"
    if op is sre.CATEGORY:
        names = {sre.CATEGORY_DIGIT: "\\d", sre.CATEGORY_NOT_DIGIT: "\\D", sre.CATEGORY_SPACE: "\\s",
                 sre.CATEGORY_NOT_SPACE: "\\S", sre.CATEGORY_WORD: "\\w", sre.CATEGORY_NOT_WORD: "\\W"}
        if av in names:
            return names[av]
    raise GrammarError(f"unsupported character class item {op} in a custom tool grammar")


def _char_set(items: list | None, dotall: bool = False) -> tuple[str, list[str]]:
    """(a regex class of the set's plain characters, or "" when it has none; the regexes of the JSON
    escapes of its quote, backslash and control characters). ``items`` None: ``.``."""
    if items is None:  # "." : any character but a newline (any at all with the s flag)
        negate, body = True, "" if dotall else "\\n"
    else:
        negate = bool(items) and items[0][0] is sre.NEGATE
        body = "".join(_class_item(op, av) for op, av in (items[1:] if negate else items))
    member = re.compile(f"[{'^' if negate else ''}{body}]" if body or not negate else "(?s:.)")
    escapes = [_lit(json_escape(c)) for c in SPECIALS if member.fullmatch(c)]
    plain = f"[^{body}\\x00-\\x1f\"\\\\]" if negate else (f"[[{body}]--[\\x00-\\x1f\"\\\\]]" if body else "")
    return plain, escapes


def _set_rule(plain: str, escapes: list[str], run: bool) -> str:
    """One JSON character of the set (``run``: one or more): plain characters and escapes are
    separate lexemes, so a lexeme never ends inside an escape (a backslash starts a fresh one)."""
    options = ([f"/{plain}{'+' if run else ''}/"] if plain else []) + (["/" + "|".join(escapes) + "/"] if escapes else [])
    if not options:
        raise GrammarError("a character class in a custom tool grammar matches nothing")
    return options[0] if len(options) == 1 and not run else "(" + " | ".join(options) + ")"


def _is_set(op) -> bool:
    return op in (sre.IN, sre.ANY, sre.NOT_LITERAL, sre.CATEGORY)


def _set_of(op, av, dotall: bool) -> tuple[str, list[str]]:
    if op is sre.ANY:
        return _char_set(None, dotall)
    if op is sre.NOT_LITERAL:
        return _char_set([(sre.NEGATE, None), (sre.LITERAL, av)])
    return _char_set(list(av) if op is sre.IN else [(sre.CATEGORY, av)])


def _emit(pattern, dotall: bool) -> str:
    """A regex AST as a Lark rule expression over the JSON-escaped text."""
    out, literal = [], []

    def flush() -> None:
        if literal:
            out.append(json.dumps("".join(json_escape(c) for c in literal), ensure_ascii=False))
            literal.clear()

    for op, av in pattern:
        if op is sre.LITERAL:
            literal.append(chr(av))
            continue
        flush()
        if _is_set(op):
            out.append(_set_rule(*_set_of(op, av, dotall), run=False))
        elif op is sre.SUBPATTERN:  # (group, flags added, flags removed, pattern): (?s:...) counts
            inner = (dotall or bool(av[1] & re.S)) and not av[2] & re.S
            out.append(f"({_emit(av[3], inner) or chr(34) * 2})")
        elif op is sre.BRANCH:
            out.append("(" + " | ".join(_emit(p, dotall) or '""' for p in av[1]) + ")")
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            lo, hi, inner = av
            single = len(inner) == 1 and _is_set(inner[0][0])
            if single and hi == sre.MAXREPEAT and lo <= 1:
                body = _set_rule(*_set_of(*inner[0], dotall), run=True)
                out.append(f"{body}+" if lo == 1 else f"{body}*")
                continue
            body = f"({_emit(inner, dotall) or chr(34) * 2})"
            bound = {(0, sre.MAXREPEAT): "*", (1, sre.MAXREPEAT): "+", (0, 1): "?"}.get(
                (lo, hi), f"{{{lo},}}" if hi == sre.MAXREPEAT else f"{{{lo},{hi}}}")
            out.append(body + bound)
        elif op is sre.AT:
            continue  # anchors: a Lark terminal is matched whole anyway
        else:
            raise GrammarError(f"regex feature {str(op).lower()} is not supported in a custom tool grammar")
    flush()
    return " ".join(out)


def json_string_rule(source: str, flags: str = "") -> str:
    """A Lark rule expression for the JSON-escaped spelling of what the regex ``source`` matches."""
    if "i" in flags:
        raise GrammarError("case-insensitive regexes are not supported in a custom tool grammar")
    py_flags = (re.S if "s" in flags else 0) | (re.X if "x" in flags else 0)
    try:
        parsed = sre.parse(source, py_flags)
    except re.error as exc:
        raise GrammarError(f"invalid regex /{source}/ in a custom tool grammar: {exc}") from exc
    return f"({_emit(parsed, dotall='s' in flags) or chr(34) * 2})"


def _string_literal(token: str) -> str:
    try:
        value = ast.literal_eval(token)
    except (ValueError, SyntaxError) as exc:
        raise GrammarError(f"invalid string literal {token} in a custom tool grammar") from exc
    return json.dumps("".join(json_escape(c) for c in value), ensure_ascii=False)


def _imports(text: str) -> str:
    """``%import common.X`` lines replaced by the definitions of X."""
    def define(match: re.Match) -> str:
        names = [match.group("one")] if match.group("one") else [n.strip() for n in match.group("many").split(",")]
        lines = []
        for name in names:
            if name not in COMMON:
                raise GrammarError(f"%import common.{name} is not supported in a custom tool grammar")
            lines.append(f"{name}: {COMMON[name]}")
        return "\n".join(lines)
    return _IMPORT.sub(define, text)


def json_string_lark(grammar: str, prefix: str) -> str:
    """Lark rules for the JSON-escaped language of ``grammar``; its ``start`` is ``{prefix}start``."""
    def rename(name: str) -> str:  # terminals become rules too: their parts are several lexemes
        return prefix + (f"t_{name.lower()}" if name.lstrip("_")[:1].isupper() else name)

    text = _imports(grammar)
    out: list[str] = []
    in_options = False
    for m in _TOKEN.finditer(text):
        kind, token = m.lastgroup, m.group(0)
        if kind in ("strflags", "reflags"):
            kind = "string" if m.group("string") else "regex"
        if kind == "comment":
            continue
        if kind == "string":
            if m.group("strflags"):
                raise GrammarError("case-insensitive literals are not supported in a custom tool grammar")
            out.append(_string_literal(token))
        elif kind == "regex":
            flags = m.group("reflags")
            out.append(json_string_rule(token[1:len(token) - 1 - len(flags)], flags))
        elif kind == "special":
            raise GrammarError(f"special tokens ({token}) cannot appear inside a custom tool's text")
        elif kind == "directive":
            raise GrammarError(f"{token} is not supported in a custom tool grammar")
        elif kind == "name":
            out.append(token if in_options else rename(token))
        else:
            if token == "[" and out and _TOKEN_HEAD.match("".join(out).rsplit("\n", 1)[-1]):
                in_options = True
            elif token == "]" and in_options:
                in_options = False
            out.append(token)
    return "".join(out)


_TOKEN_HEAD = re.compile(r"^\s*[?!]?[A-Za-z_][A-Za-z0-9_]*$")  # a rule name, right before its [options]
