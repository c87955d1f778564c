"""Text in a request must be valid Unicode: no lone UTF-16 surrogate in any string of a JSON body.

Python's JSON decoder accepts a surrogate escape without its partner (``"\\ud800"``), and, in a
bytes body, the three bytes a surrogate would encode to (``ED A0 80``, CESU-style). Either way the
string then holds a code point no UTF-8 encoder takes, and it fails deep inside whatever reads it
first -- a tokenizer, a regex compiler, the grammar compiler, a log line -- as a 500. One check of the
raw body, before any route parses it, covers every field of every API at once (see body_limit.py).

Escaped surrogate *pairs* (what ``json.dumps`` writes for an emoji) are valid and pass.
"""

from __future__ import annotations

import json
import re

_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a surrogate escape, paired or not (or an escaped backslash's text)
_ENCODED = re.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")  # UTF-8 never has ED followed by A0..BF


def lone_surrogate(body: bytes) -> str | None:
    """How the first lone surrogate of a JSON body is written (``\\ud800``, or its bytes), or None.

    Bodies without a surrogate escape (nearly all) cost one regex scan. The others are decoded and
    encoded back to UTF-8 in C (a few times the cost of the parse the route does anyway): the encoder
    stops at the first lone surrogate, wherever it is -- a key, a value, any depth.
    """
    encoded = _ENCODED.search(body)
    if encoded:
        return "bytes " + encoded.group().hex(" ").upper()
    if not _ESCAPE.search(body):
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own parsing answers
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"\\u{ord(exc.object[exc.start]):04x}"
    return None
