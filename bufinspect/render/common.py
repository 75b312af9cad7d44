"""What every renderer shares: output formats, escaping of names from files, number and size
formats, strict JSON, markdown cells and the plain wide table."""

from __future__ import annotations

import json
from enum import Enum
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
from bufinspect.escape import clean  # noqa: E402,F401


def human_bytes(n: int) -> str:
    if n.bit_length() > 80:  # an unbounded size (a hostile shape) would overflow float()
        return f">2**{n.bit_length() - 1} B"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


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
    if v is None:
        return "-"
    return f"{v:.4g}"


def to_json(doc: dict[str, Any]) -> str:
    """Strict JSON: NaN and infinities become strings, never bare tokens."""
    try:  # the usual document holds none: skip the copying walk (1 s for 50,000 entries)
        return json.dumps(doc, indent=2, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(doc), indent=2, allow_nan=False)


def _finite(obj: Any) -> Any:
    if type(obj) is int and obj.bit_length() > 10_000:  # json cannot print it (4300 digits)
        return f"<{obj.bit_length()}-bit integer>"
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return json_number(obj)


# rich lays a table out cell by cell (~1.4 ms a row here); past this many rows a section prints
# as plain aligned columns, so a 300-buffer ResNet lists in the time a 30-row table takes
PLAIN_ROWS = 100
NUMERIC = {"size", "tensors", "elements", "min", "max", "mean", "std", "nan/inf", "zeros"}


def plain_table(console: Any, title: str, header: list[str], rows: list[list[str]]) -> None:
    """Aligned columns without rich's layout engine: linear time for 50,000-row sections."""
    columns = list(zip(*rows))  # (rows all have the header's length)
    widths = [max(len(h), *map(len, col)) if col else len(h)
              for h, col in zip(header, columns or [()] * len(header))]
    justify = [str.rjust if h in NUMERIC else str.ljust for h in header]

    def line(cells: list[str]) -> str:
        return "  ".join([j(c, w) for j, c, w in zip(justify, cells, widths)]).rstrip()

    console.print(title, style="bold", markup=False, highlight=False)
    console.print(line(header), style="dim", markup=False, highlight=False)
    console.file.write("\n".join(line(r) for r in rows) + "\n")


def md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`") \
        .replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace("_", "\\_") \
        .replace("[", "\\[").replace("]", "\\]")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
