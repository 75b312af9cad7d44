"""Every string that came from a file or a path is escaped here before it reaches a terminal.

One rule for tables, markdown, annotations and error messages alike: C0/C1 controls (ESC, BEL,
CR, LF, ...), DEL, the bidi embeddings/overrides/isolates (U+202E ...), zero-width and invisible
characters, line/paragraph separators, the BOM, and lone surrogates (which cannot even be
encoded for output) become visible `\\xNN` / `\\uNNNN` escapes. A name can therefore never move
the cursor, open an OSC 8 hyperlink, reorder a line or start a fake `bufinspect: all good` line.

`excerpt` also bounds the length (a 618-byte file once made a 300 MB error line): it cuts the
text BEFORE escaping it, so a 10 MB key costs no more than a short one.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

# C0/C1 controls, DEL, the bidi embedding/override/isolate characters, zero-width characters,
# U+2028/U+2029, the U+2060-U+2069 invisibles, the BOM, and lone surrogates
_UNSAFE_CHARS = ("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
           "\ud800-\udfff]")

CELL_LIMIT = 300  # characters of one name in a table cell or a report line
MESSAGE_LIMIT = 400  # characters of one error message (after the path)
PATH_LIMIT = 300  # characters of a path in a message (head and tail kept)
# characters of a finding's or a diff note's own message: prose that quotes a few names, each
# unbounded, so it is bounded as a whole, far above what a message with ordinary names needs
PROSE_LIMIT = 2000


def _sub(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text: str) -> str:
    """`text` with every unsafe character as a visible escape (no length bound)."""
    if text.isascii() and text.isprintable():  # (no control, no DEL: nothing to escape)
        return text
    return unsafe().sub(_sub, text)


@lru_cache(maxsize=1)
def unsafe() -> re.Pattern:
    """The characters `escape` makes visible, compiled (tests search output with it)."""
    return re.compile(_UNSAFE_CHARS)  # (compiled on first need: most runs print plain names only)


def excerpt(text: Any, limit: int = CELL_LIMIT) -> str:
    """`text` (any object: str() of it) cut to `limit` characters, then escaped."""
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:  # a str() that fails (a 5000-digit int, say): name the type
            text = f"<{type(text).__name__}>"
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return escape(text)


def path_excerpt(path: Any, limit: int = PATH_LIMIT) -> str:
    """A path escaped and bounded, keeping its start and its end (the file name)."""
    text = path if isinstance(path, str) else excerpt(path, limit)
    if len(text) > limit:
        half = limit // 2
        text = text[:half] + "..." + text[-half:]
    return escape(text)


def prose(text: str) -> str:
    """A message bufinspect composed (a finding, a diff note) that quotes names from a file:
    escaped, at most `PROSE_LIMIT` characters (a name alone is bounded by `clean`)."""
    return excerpt(text, PROSE_LIMIT)


def clean(text: str) -> str:
    """A name from a file, safe to print in a table or report: escaped, at most `CELL_LIMIT`
    characters (rich pads every row to the widest cell: one 10 MB key made 2 GB of output)."""
    return excerpt(text, CELL_LIMIT)
