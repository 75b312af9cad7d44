"""What every renderer shares: output formats, escaping of names from files, number and size
formats, strict JSON, markdown cells and code spans."""

from __future__ import annotations

import re
from enum import Enum
from functools import lru_cache
from typing import Any, Iterable, NoReturn

from bufinspect.model import json_number


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    GITHUB = "github"


def assert_never(value: NoReturn) -> NoReturn:  # pragma: no cover - unreachable by design
    raise AssertionError(f"unhandled value: {value!r}")


# one escaping for tables, markdown, annotations and error messages: controls, bidi, lone
# surrogates as visible escapes, and a bound on length (see bufinspect.escape)
from bufinspect.escape import clean, prose  # noqa: E402,F401


@lru_cache(maxsize=4096)  # (a listing repeats a few sizes 100,000 times)
def human_bytes(n: int) -> str:
    if n.bit_length() > 80:  # an unbounded size (a hostile shape) would overflow float()
        return f">2**{n.bit_length() - 1} B"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


@lru_cache(maxsize=4096)
def human_count(n: int) -> str:
    if n.bit_length() > 80:
        return f">2**{n.bit_length() - 1}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def fmt_shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def fmt_float(v: float | None) -> str:
    """A measured float in four significant digits, never wider than 10 cells (layout.fmt_num)."""
    from bufinspect.render.layout import fmt_num  # (not imported by a JSON run)

    return fmt_num(v)


def to_json(doc: dict[str, Any]) -> str:
    """Strict JSON: NaN and infinities become strings, never bare tokens."""
    from bufinspect.render.jsonfast import dumps  # json.dumps(indent=2) bytes, ~2x faster

    try:  # the usual document holds none: skip the copying walk (1 s for 50,000 entries)
        return dumps(doc)
    except ValueError:
        return dumps(_finite(doc))


def report_json(report: Any) -> str:
    """`to_json(report.to_dict())`; a `show` listing is encoded from its entries directly."""
    return "".join(report_json_chunks(report))


def report_json_chunks(report: Any) -> Iterable[str]:
    """`report_json(report)` in pieces to write in turn (a large listing is never held whole);
    fully encoded before this returns, so a failure leaves nothing half written."""
    from bufinspect.model import ShowReport
    from bufinspect.render.jsonfast import show_chunks

    if isinstance(report, ShowReport):
        try:
            return show_chunks(report)
        except ValueError:  # a NaN or an infinity among the statistics
            pass
    return (to_json(report.to_dict()),)


def _finite(obj: Any) -> Any:
    if type(obj) is int and obj.bit_length() > 10_000:  # json cannot print it (4300 digits)
        return f"<{obj.bit_length()}-bit integer>"
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return json_number(obj)


# past this many rows a section prints without per-line styling: a 50,000-row section lists in
# linear time (rich took ~1.4 ms a row to lay out and style, measured)
PLAIN_ROWS = 100


def md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`") \
        .replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace("_", "\\_") \
        .replace("[", "\\[").replace("]", "\\]")


def md_code(text: str) -> str:
    """`text` as an inline code span: never backslash-escaped (GitHub shows backslashes in code
    literally); a fence one backtick longer than the longest run of backticks inside, padded
    with spaces when the text starts or ends with one (CommonMark 6.1)."""
    text = text.replace("\n", " ")
    longest = max((len(m) for m in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
