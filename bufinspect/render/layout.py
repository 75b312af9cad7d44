"""Width-aware tables for people: which columns fit, how wide each is, how a cell gives way.
(A long module on purpose: the plan, key shortening, wrapping and the compact layout depend on
each other's widths, and one file keeps the rules they share in one place.)

The rules every human table follows (issue #14):

- a tensor key is never wrapped; when it must be shortened the middle of its module path gives
  way to `…` and the leaf name stays whole, and shortened keys stay distinct;
- a number is never split, and headers never wrap;
- each column has a priority: when the table does not fit, the lowest-priority columns drop
  first (`Plan.dropped`, for a one-line note) before a key loses width;
- below the width where the essential columns fit, rows switch to a compact per-entry layout.

Pure text in, lines out: no rich here (`render.tables` adds the styles), so the same plan serves
the styled tables and the plain columns of 50,000-row sections.
"""

from __future__ import annotations

import math
import re
import textwrap
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

KEY = "key"  # a dotted tensor key (or a file path): shortened in the middle, never wrapped
NUM = "num"  # a number: right-aligned, never split, never shortened
PATH = "path"  # a file path: shortened in the middle, the file name kept whole
LABEL = "label"  # a short word (status, dtype, shape): never split
TEXT = "text"  # prose (detail, message): wraps at word boundaries

GAP = 2  # spaces between columns
ELLIPSIS = "…"
COMPACT_BELOW = 40  # narrower than this, every table is listed entry by entry
_TEXT_MIN = 24  # a prose column narrower than this reads worse than dropping a column


@dataclass(frozen=True)
class Column:
    """A column: its header, what its cells hold, and how early it drops (0: never)."""

    name: str
    kind: str = LABEL
    priority: int = 0

    @property
    def right(self) -> bool:
        return self.kind == NUM


@dataclass
class Plan:
    """How a table is laid out at one width."""

    width: int
    kept: list[int]  # indices of the columns shown, in order
    widths: list[int]  # one per kept column
    dropped: list[str] = field(default_factory=list)  # names of the columns left out
    compact: bool = False
    needed: int = 0  # the width at which every column shows at its natural width
    heads: dict[int, float] = field(default_factory=dict)  # key column -> shortening scheme
    # key column -> {key: its shortened text} (computed once, while checking distinctness)
    short: dict[int, dict[str, str]] = field(default_factory=dict)


def cell_len(text: str) -> int:
    """Terminal cells `text` takes: wide East Asian characters count 2, combining marks 0."""
    if text.isascii() or text.replace(ELLIPSIS, "").isascii():  # the common cases, fast
        return len(text)
    n = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        n += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return n


def _cut(text: str, cells: int, *, tail: bool = False) -> str:
    """The longest head (or tail) of `text` that takes at most `cells` cells."""
    if cells <= 0:
        return ""
    if text.isascii():
        return text[-cells:] if tail else text[:cells]
    out, used = [], 0
    for ch in (reversed(text) if tail else text):
        w = cell_len(ch)
        if used + w > cells:
            break
        out.append(ch)
        used += w
    return "".join(reversed(out)) if tail else "".join(out)


# how a key gives way: the share of the kept cells taken from its head (the rest from its
# tail), or ABBREV (module names cut to their first letter, left to right, numbers kept:
# `e.t.0.attention.1.running_mean`); a column tries these in order and keeps the first that
# leaves its keys distinct
ABBREV = -1.0
HEADS = (1 / 3, ABBREV, 0.0, 2 / 3)


def middle(text: str, width: int, head: float = HEADS[0]) -> str:
    """`text` in at most `width` cells: its middle replaced by `…` (`head` of the kept cells
    from the start, the rest from the end)."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    keep = width - 1
    first = int(keep * max(head, 0.0))
    return _cut(text, first) + ELLIPSIS + _cut(text, keep - first, tail=True)


def shorten_key(key: str, width: int, head: float = HEADS[0]) -> str:
    """`key` in at most `width` cells, the leaf name whole: `encoder.lay…11.attn.q.weight`.

    Only the module path is shortened; a leaf longer than the room (a key with no dots, a
    hostile one) is itself shortened in the middle, which is the best that fits.
    """
    if cell_len(key) <= width:
        return key
    module, dot, leaf = key.rpartition(".")
    room = width - cell_len(leaf) - 1  # cells left for the module path and its `…`
    if not dot or room < 1:
        return middle(key, width, head)
    return _elide_module(module, room, head) + "." + leaf


_INDEX = re.compile(r"[_-]?\d+$")


def _abbreviate(module: str, room: int) -> str | None:
    """Module names cut to their first letter from the left until the path fits, numbers kept
    (`block_12` -> `b_12`, `layer1` -> `l1`, `0` -> `0`); None when even that is too long."""
    measure = len if module.isascii() else cell_len
    total = measure(module)
    if total <= room:
        return module
    parts = module.split(".")
    for i, part in enumerate(parts):
        if total <= room:
            break
        if not part.isdigit():
            index = _INDEX.search(part) if part[-1:].isdigit() else None
            short = part[:1] + (index.group() if index and index.start() > 0 else "")
            total -= measure(part) - measure(short)
            parts[i] = short
    return ".".join(parts) if total <= room else None


def _elide_module(module: str, room: int, head: float) -> str:
    """A module path in `room` cells: whole components around a `…` where that wastes at most
    a few cells (`layer1.….bn1`), else the characters of its middle (`lay…0.bn1`)."""
    if head == ABBREV:
        return _abbreviate(module, room) or middle(module, room, 0.0)
    parts = module.split(".")
    lens = [cell_len(p) for p in parts]
    n = len(parts)
    head_len = [0] * (n + 1)  # cells of the first k parts, each with the dot after it
    for k in range(n):
        head_len[k + 1] = head_len[k] + lens[k] + 1
    best_len, best_at = 0, None
    for tail in range(n - 1, -1, -1):  # components nearest the leaf matter most
        tail_cells = head_len[n] - head_len[n - tail]  # the last `tail` parts and a dot each
        for first in range(n - tail - 1, -1, -1):
            total = head_len[first] + 1 + tail_cells  # head parts, "…", tail parts
            if best_len < total <= room:
                best_len, best_at = total, (first, tail)
    best = ""
    if best_at is not None:
        first, tail = best_at
        best = ".".join(parts[:first] + [ELLIPSIS] + (parts[n - tail:] if tail else []))
    if best and cell_len(best) >= room - 4 and head == HEADS[0]:
        return best
    return middle(module, room, head)


def shorten_path(path: str, width: int, head: float = HEADS[0]) -> str:
    """A file path in at most `width` cells, the file name whole where it fits."""
    if cell_len(path) <= width:
        return path
    folder, slash, name = path.rpartition("/")
    room = width - cell_len(name) - 1
    if not slash or room < 1:
        return middle(path, width, head)
    return middle(folder, room, head) + "/" + name


def _leaf_room(cell: str, kind: str) -> int:
    """The fewest cells that still show `cell`'s leaf (or file name) whole, with a `…`."""
    sep = "/" if kind == "path" else "."
    _, dot, leaf = cell.rpartition(sep)
    return min(cell_len(cell), cell_len(leaf) + 2 if dot else cell_len(cell))


def shorten(kind: str, text: str, width: int, head: float = HEADS[0]) -> str:
    return (shorten_path if kind == PATH else shorten_key)(text, width, head)


def distinct_head(cells: Sequence[str], width: int, kind: str = KEY) -> float | None:
    """The first of HEADS under which `cells` shortened to `width` stay distinct (None: none)."""
    found = distinct_shortening(cells, width, kind)
    return None if found is None else found[0]


def distinct_shortening(cells: Sequence[str], width: int, kind: str = KEY
                        ) -> tuple[float, dict[str, str]] | None:
    """The first of HEADS under which `cells` shortened to `width` stay distinct, with the
    shortened text of every cell that needs it (None: no scheme keeps them apart)."""
    long = [c for c in cells if cell_len(c) > width]
    if not long:
        return HEADS[0], {}
    whole = {c for c in cells if cell_len(c) <= width}
    for head in HEADS:
        # a shortened key must differ from every other shortened key and every key shown
        # whole; stop at the first clash (a scheme that fails usually fails early)
        seen = set(whole)
        short: dict[str, str] = {}
        for c in dict.fromkeys(long):
            text = shorten(kind, c, width, head)
            if text in seen:
                break
            seen.add(text)
            short[c] = text
        else:
            return head, short
    return None


def key_minimum(cells: Sequence[str], header: str, kind: str = KEY) -> int:
    """The narrowest key column that keeps every leaf whole and every shortened key distinct."""
    natural = max([cell_len(header)] + [cell_len(c) for c in cells])
    low = max([cell_len(header), 4] + [_leaf_room(c, kind) for c in cells])
    low = min(low, natural)
    if distinct_head(cells, low, kind) is not None:
        return low
    hi = natural  # distinct at the natural width; find the narrowest distinct width
    while low + 1 < hi:
        mid = (low + hi) // 2
        if distinct_head(cells, mid, kind) is not None:
            hi = mid
        else:
            low = mid
    return hi


def _natural(col: Column, cells: Sequence[str]) -> int:
    if all(map(str.isascii, cells)):  # C-speed for the usual all-ASCII column
        return max(cell_len(col.name), max(map(len, cells), default=0))
    return max([cell_len(col.name)] + [cell_len(c) for c in cells])


def plan(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> Plan:
    """Choose the columns and widths for `rows` in `width` cells.

    In order, until the table fits: prose columns wrap down to their minimum; columns of
    priority 2 and up drop, the largest number first (the rightmost among equals); keys give up
    their module path's middle down to their minimum; priority-1 columns (the key numbers)
    drop. When only priority-0 columns remain and still do not fit, or the width is under
    COMPACT_BELOW, the plan is compact. Spare cells go back to keys first, then prose.
    """
    cols = list(zip(*rows)) if rows else [()] * len(columns)
    natural = [_natural(c, cells) for c, cells in zip(columns, cols)]
    needed = sum(natural) + GAP * (len(columns) - 1)
    floor: dict[int, int] = {}
    heads: dict[tuple[int, int], tuple[float, dict[str, str]] | None] = {}

    def min_of(i: int, keys: bool) -> int:
        c = columns[i]
        if c.kind == TEXT:
            return min(natural[i], max(cell_len(c.name), _TEXT_MIN))
        if c.kind in (KEY, PATH) and keys:
            if i not in floor:  # every leaf whole (distinctness is checked at the final width)
                floor[i] = min(natural[i], max([cell_len(c.name), 4]
                                               + [_leaf_room(x, c.kind) for x in cols[i]]))
            return floor[i]
        return natural[i]

    def head_at(i: int, w: int) -> tuple[float, dict[str, str]] | None:
        if (i, w) not in heads:
            heads[(i, w)] = distinct_shortening(cols[i], w, columns[i].kind)
        return heads[(i, w)]

    def fitted(kept: list[int], keys: bool) -> list[int] | None:
        avail = width - GAP * (len(kept) - 1)
        if sum(natural[i] for i in kept) <= avail:
            return [natural[i] for i in kept]
        widths = {i: min_of(i, keys) for i in kept}
        spare = avail - sum(widths.values())
        if spare < 0:
            return None
        for kind in (KEY, PATH, TEXT):  # keys get their width back first, then prose
            for i in kept:
                if columns[i].kind == kind and spare > 0:
                    grow = min(spare, natural[i] - widths[i])
                    widths[i] += grow
                    spare -= grow
        for i in kept:  # a shortened key column must keep its keys apart
            if columns[i].kind in (KEY, PATH) and widths[i] < natural[i] \
                    and head_at(i, widths[i]) is None:
                return None
        return [widths[i] for i in kept]

    kept = list(range(len(columns)))
    if width < COMPACT_BELOW:
        return Plan(width, kept, natural, [], True, needed)
    for least, keys in ((2, False), (1, True)):
        while True:
            widths = fitted(kept, keys)
            if widths is not None:
                dropped = [c.name for i, c in enumerate(columns) if i not in kept]
                chosen, short = {}, {}
                for i, w in zip(kept, widths):
                    if columns[i].kind in (KEY, PATH) and w < natural[i]:
                        found = head_at(i, w)
                        chosen[i], short[i] = found if found else (HEADS[0], {})
                return Plan(width, kept, widths, dropped, False, needed, chosen, short)
            droppable = [i for i in kept if columns[i].priority >= least]
            if not droppable:
                break
            kept.remove(max(droppable, key=lambda i: (columns[i].priority, i)))
    return Plan(width, list(range(len(columns))), natural, [], True, needed)


def fit_cell(col: Column, text: str, width: int, head: float = HEADS[0]) -> list[str]:
    """A cell's lines at `width`: keys shortened, prose wrapped, anything else as is."""
    if cell_len(text) <= width:
        return [text]
    if col.kind in (KEY, PATH):
        return [shorten(col.kind, text, width, head)]
    if col.kind == TEXT:
        return wrap(text, width)
    return [text]  # numbers and labels are never cut: plan() gave them their natural width


class _Wrapper(textwrap.TextWrapper):
    """Also breaks after `|`, `,`, `/` and `:` inside a word (`layer:BatchNorm|InstanceNorm`,
    paths), so a long token wraps at a boundary instead of mid-name."""

    _soft = re.compile(r"(?<=[|,/:])(?=[^|,/:\s])")

    def _split(self, text: str) -> list[str]:  # type: ignore[override]
        out = []
        for chunk in super()._split(text):
            out += self._soft.split(chunk) if len(chunk) > 1 and not chunk.isspace() else [chunk]
        return out


def wrap(text: str, width: int, indent: str = "") -> list[str]:
    """Prose wrapped at word boundaries (a word longer than the line is folded)."""
    if width <= 0:
        return [text]
    if text.isascii():
        return _Wrapper(width, initial_indent=indent, subsequent_indent=indent,
                        break_on_hyphens=False).wrap(text) or [indent]
    lines, line = [], indent
    for word in text.split(" "):
        while cell_len(indent + word) > width:  # fold a word wider than the line
            if line.strip():
                lines.append(line)
            head = _cut(word, width - cell_len(indent)) or word[:1]
            lines.append(indent + head)
            word = word[len(head):]
            line = indent
        candidate = word if not line.strip() else line + " " + word
        if line.strip() and cell_len(candidate) > width:
            lines.append(line)
            line = indent + word
        else:
            line = indent + candidate.lstrip() if not line.strip() else candidate
    if line.strip() or not lines:
        lines.append(line)
    return lines


def _pad(text: str, width: int, right: bool) -> str:
    if text.isascii():
        return text.rjust(width) if right else text.ljust(width)
    space = " " * max(0, width - cell_len(text))
    return space + text if right else text + space


def table_lines(columns: Sequence[Column], rows: Sequence[Sequence[str]], p: Plan
                ) -> list[tuple[str, int | None]]:
    """The table's lines at plan `p`, each with the row it belongs to (None: header and rule).

    Lines never exceed `p.width` cells, except in compact mode where a key wider than the
    whole terminal has nowhere else to go.
    """
    if p.compact:
        return compact_lines(columns, rows, p.width)
    cols = [columns[i] for i in p.kept]
    out: list[tuple[str, int | None]] = []
    sep = " " * GAP
    out.append((sep.join(_pad(c.name, w, c.right) for c, w in zip(cols, p.widths)).rstrip(), None))
    out.append((sep.join("─" * w for w in p.widths), None))
    # columns whose cells all fit as they are and are plain ASCII are justified with str
    # methods (the common case, and linear time for 50,000 rows); the others go cell by cell
    fast = []
    for i, w in zip(p.kept, p.widths):
        cells = [row[i] for row in rows]
        fast.append(max(map(len, cells), default=0) <= w and all(map(str.isascii, cells)))
    justify = [str.rjust if c.right else str.ljust for c in cols]
    if all(fast):
        for r, row in enumerate(rows):
            out.append((sep.join([j(row[i], w) for j, i, w in zip(justify, p.kept, p.widths)])
                        .rstrip(), r))
        return out
    for r, row in enumerate(rows):
        cells = [[row[i]] if f and len(row[i]) <= w else
                 [p.short[i][row[i]]] if row[i] in p.short.get(i, ()) else
                 fit_cell(c, row[i], w, p.heads.get(i, HEADS[0]))
                 for c, i, w, f in zip(cols, p.kept, p.widths, fast)]
        if all(len(cell) == 1 for cell in cells):
            out.append((sep.join([_pad(cell[0], w, c.right)
                                  for cell, c, w in zip(cells, cols, p.widths)]).rstrip(), r))
            continue
        height = max(len(c) for c in cells)
        for k in range(height):
            line = sep.join(_pad(cell[k] if k < len(cell) else "", w, c.right)
                            for cell, c, w in zip(cells, cols, p.widths))
            out.append((line.rstrip(), r))
    return out


def compact_lines(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
                  ) -> list[tuple[str, int | None]]:
    """One block per row: its priority-0 labels and key on the first line, then `name value`
    pairs flowed under it (a pair is never split) and prose on lines of its own."""
    out: list[tuple[str, int | None]] = []
    indent = "  "
    for r, row in enumerate(rows):
        labels = [row[i] for i, c in enumerate(columns)
                  if c.priority == 0 and c.kind == LABEL and row[i]]
        names = [(c.kind, row[i]) for i, c in enumerate(columns)
                 if c.priority == 0 and c.kind in (KEY, PATH) and row[i]]
        first = "  ".join(labels)
        for kind, name in names:
            room = width - cell_len(first) - (2 if first else 0)
            if cell_len(name) > room and room >= _leaf_room(name, kind):
                name = shorten(kind, name, room, HEADS[1])  # the tail tells tensors apart
            elif cell_len(name) > room:  # on a line of its own, shortened if it must be
                out.append((first, r))
                first = ""
                if cell_len(name) > width and width >= _leaf_room(name, kind):
                    name = shorten(kind, name, width, HEADS[1])
            first = f"{first}  {name}" if first else name
        for piece in _fold(first, width):
            out.append((piece, r))
        line = indent
        for i, c in enumerate(columns):
            if c.priority == 0 and c.kind in (KEY, PATH, LABEL):
                continue
            value = row[i]
            if value in ("", "-"):
                continue
            if c.kind == TEXT:
                if line.strip():
                    out.append((line.rstrip(), r))
                    line = indent
                for piece in wrap(f"{c.name}: {value}", width, indent):
                    out.append((piece, r))
                continue
            pair = f"{c.name} {value}"
            if line.strip() and cell_len(line) + 2 + cell_len(pair) > width:
                out.append((line.rstrip(), r))
                line = indent
            line = line + ("  " if line.strip() else "") + pair
        if line.strip():
            out.append((line.rstrip(), r))
    return out


def _fold(text: str, width: int) -> list[str]:
    """Hard-fold a line that cannot be shortened (compact mode's key line, very narrow)."""
    out = []
    while cell_len(text) > width > 0:
        head = _cut(text, width) or text[:1]
        out.append(head)
        text = text[len(head):]
    out.append(text)
    return out


def dropped_note(p: Plan) -> str | None:
    """One line naming the columns a narrow terminal left out, and how to see them."""
    if not p.dropped:
        return None
    names = ", ".join(p.dropped)
    return (f"{names}: not shown at {p.width} columns (all fit at {p.needed}; "
            f"--format json has every field)")


# ---- numbers --------------------------------------------------------------------------------


def fmt_num(v: float | int | None, digits: int = 4) -> str:
    """A float in a fixed number of significant digits: `0.05802`, `1.000`, `2.476e-05`.

    `-` for None; `nan`, `inf`, `-inf` as such; exact zero as `0`. Scientific notation outside
    [1e-4, 1e5) keeps the column narrow (at most 10 cells for 4 digits).
    """
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-4 <= a < 10 ** digits:
        text = f"{v:#.{digits}g}"
        if "e" not in text:
            return text.rstrip(".")
    mantissa, _, exp = f"{v:.{digits - 1}e}".partition("e")
    return f"{mantissa}e{int(exp)}"


def column_starts(p: Plan) -> list[int]:
    """The first cell of each kept column in a table line (for styling one column)."""
    starts, at = [], 0
    for w in p.widths:
        starts.append(at)
        at += w + GAP
    return starts


def pairs_lines(pairs: Sequence[tuple[str, str]], width: int) -> list[str]:
    """`name  value` lines (a show header): names aligned, values wrapped under themselves."""
    if not pairs:
        return []
    label = max(cell_len(k) for k, _ in pairs)
    out = []
    for k, v in pairs:
        room = width - label - GAP
        if room < 20:  # too narrow to align: the value goes under its name
            out.append(k)
            out += wrap(v, width, "  ")
            continue
        lines = wrap(v, room) if v else [""]
        out.append((k + " " * (label - cell_len(k) + GAP) + lines[0]).rstrip())
        out += [" " * (label + GAP) + ln for ln in lines[1:]]
    return out
