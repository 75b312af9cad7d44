"""Reports -> text: rich tables for people, markdown for job summaries, JSON for machines.

Renderers take a report and explicit keyword arguments, never the parsed command line. Every name
that came from a file goes through `clean()` so that control characters, ANSI escapes, bidi
overrides and rich markup print as inert, visible text.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from enum import Enum
from typing import Any, Iterable, NoReturn

from bufinspect import layout
from bufinspect.layout import KEY, LABEL, NUM, PATH, TEXT, Column, fmt_num
from bufinspect.model import Entry, Role, ShowReport, TensorStats, json_number, summarize


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    GITHUB = "github"


def assert_never(value: NoReturn) -> NoReturn:  # pragma: no cover - unreachable by design
    raise AssertionError(f"unhandled value: {value!r}")


# C0/C1 controls, DEL, and the bidi embedding/override/isolate characters
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def clean(text: str) -> str:
    """Make a name from a file safe to print: unsafe characters become visible escapes."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", text)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


def human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def fmt_shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def fmt_float(v: float | None) -> str:
    """A measured float in four significant digits, never wider than 10 cells (layout.fmt_num)."""
    return fmt_num(v)


def to_json(doc: dict[str, Any]) -> str:
    """Strict JSON: NaN and infinities become strings, never bare tokens."""
    try:  # the usual document holds none: skip the copying walk (1 s for 50,000 entries)
        return json.dumps(doc, indent=2, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(doc), indent=2, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return json_number(obj)


# ---- show ----------------------------------------------------------------------------------

_ROLE_ORDER = (Role.BUFFER, Role.UNKNOWN, Role.PARAMETER, Role.OTHER)


def _group(entries: Iterable[Entry], depth: int | None) -> list[tuple[str, list[Entry]]]:
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        module = e.module
        if depth is not None:
            module = ".".join(module.split(".")[:depth]) if module else ""
        name = "/".join(p for p in (e.container, module) if p)
        groups[name].append(e)
    return list(groups.items())


def _entry_row(e: Entry, stats: TensorStats | None, with_stats: bool, with_container: bool,
               explain: bool) -> list[str]:
    row = []
    if with_container:
        row.append(clean(e.container) or "(root)")
    row += [clean(e.key), fmt_shape(e.shape), e.dtype, clean(e.device or "-"),
            human_bytes(e.nbytes)]
    if e.role is Role.BUFFER:
        row.append({True: "yes", False: "no"}.get(e.persistent, "-"))  # None: not recorded
    if explain:
        row.append(clean(e.evidence))
    if with_stats:
        if stats is None:
            row += ["-"] * 6
        else:
            row += [fmt_float(stats.min), fmt_float(stats.max), fmt_float(stats.mean),
                    fmt_float(stats.std), str(stats.nan + stats.inf), str(stats.zeros)]
    return row


def show_sections(report: ShowReport, *, depth: int | None = None, explain: bool = False
                  ) -> list[tuple[str, list[str], list[list[str]]]]:
    """The show report as (title, header, rows) sections, shared by the table and markdown views.

    Buffers and unknown entries are listed in full; parameters are grouped by module (up to
    `depth` components) unless statistics or `explain` were asked for; other tensors are grouped.
    """
    with_stats = report.stats is not None
    with_container = len({e.container for e in report.entries}) > 1

    def entry_header(role: Role) -> list[str]:
        return ((["container"] if with_container else [])
                + ["key", "shape", "dtype", "device", "size"]
                + (["persistent"] if role is Role.BUFFER else [])
                + (["evidence"] if explain else [])
                + (["min", "max", "mean", "std", "nan/inf", "zeros"] if with_stats else []))
    by_role: dict[Role, list[Entry]] = defaultdict(list)
    for e in report.entries:
        by_role[e.role].append(e)
    sections = []
    titles = {Role.BUFFER: "Buffers", Role.UNKNOWN: "Undecided (role unknown)",
              Role.PARAMETER: "Parameters", Role.OTHER: "Other tensors"}
    for role in _ROLE_ORDER:
        entries = by_role.get(role)
        if not entries:
            continue
        listed = role in (Role.BUFFER, Role.UNKNOWN) or with_stats or explain
        if listed:
            stats = report.stats or {}
            rows = [_entry_row(e, stats.get((e.container, e.key)), with_stats, with_container,
                               explain) for e in entries]
            sections.append((f"{titles[role]} ({len(entries)})", entry_header(role), rows))
        else:
            rows = []
            for name, group in _group(entries, depth if role is Role.PARAMETER else 0):
                dts = sorted({e.dtype for e in group})
                devs = sorted({e.device or "-" for e in group})
                rows.append([clean(name) or "(root)", str(len(group)),
                             human_count(sum(e.numel for e in group)),
                             human_bytes(sum(e.nbytes for e in group)), ", ".join(dts),
                             clean(", ".join(devs))])
            what = "module" if role is Role.PARAMETER else "container"
            sections.append((f"{titles[role]} ({len(entries)}, by {what})",
                             [what, "tensors", "elements", "size", "dtypes", "devices"], rows))
    return sections


def _count(n: int) -> str:
    """`11,689,512 (11.7M)`: exact, with the short form when it helps."""
    return f"{n:,}" + (f" ({human_count(n)})" if n >= 10_000 else "")


def metadata_summary(metadata: dict[str, str]) -> str:
    """File metadata for the header: role metadata bufinspect wrote summarised, the rest cut."""
    import json

    parts = []
    for k, v in metadata.items():
        if k == "bufinspect.roles":
            try:
                doc = json.loads(v)
                roles: dict[str, int] = {}
                for c in (doc.get("containers") or {}).values():
                    for r in (c.get("roles") or {}).values():
                        roles[str(r)] = roles.get(str(r), 0) + 1
                n = sum(roles.values())
                detail = ", ".join(f"{r} {roles[r]}" for r in sorted(roles))
                parts.append(f"roles of {n} tensors written by bufinspect annotate ({detail})")
            except (ValueError, AttributeError, TypeError):
                parts.append("bufinspect.roles (unreadable)")
        else:
            text = f"{k}={v}"
            parts.append(text if len(text) <= 80 else text[:77] + "...")
    return clean(", ".join(parts))[:400]


def value_text(v: Any) -> str:
    """A training value as Python writes it (`0.01`, `[0.9, 0.999]`, `'adam'`)."""
    return clean(repr(v) if not isinstance(v, str) else v)


def values_rows(report: ShowReport) -> list[list[str]]:
    return [[clean(k), value_text(v)] for k, v in report.checkpoint.values]


def show_header(report: ShowReport) -> list[tuple[str, str]]:
    ck = report.checkpoint
    s = summarize(report.entries)
    roles = "  ".join(f"{r.value} {s[r.value]['count']} ({human_bytes(s[r.value]['nbytes'])})"
                      for r in _ROLE_ORDER if s[r.value]["count"])
    lines = [
        ("file", clean(ck.path)),
        ("format", f"{ck.format.value}, {human_bytes(ck.size)}"),
        ("containers", ", ".join(f"{clean(c.path) or '(root)'} ({c.kind.value})"
                                 for c in ck.containers) or "none"),
        ("tensors", f"{len(report.entries)}: {roles}" if roles else "0"),
        ("dtypes", ", ".join(f"{k} {v}" for k, v in sorted(s["dtypes"].items()))),
        ("devices", clean(", ".join(f"{k} {v}" for k, v in sorted(s["devices"].items())))),
        ("evidence", ", ".join(f"{k} {v}" for k, v in sorted(s["evidence"].items()))),
    ]
    counts = [(r.value, s[r.value]["numel"]) for r in _ROLE_ORDER if s[r.value]["count"]]
    if counts:
        lines.insert(4, ("elements", ", ".join(f"{role} {_count(n)}" for role, n in counts)))
    if ck.metadata:
        lines.append(("metadata", metadata_summary(ck.metadata)))
    if ck.foreign_globals:
        lines.append(("classes", clean(", ".join(ck.foreign_globals))[:300]))
    return lines


def print_lines(console: Any, lines: Iterable[str], style: str | None = None) -> None:
    """Plain lines on the console (inert: no markup, no highlighting), one style for all."""
    text = "\n".join(lines)
    if style and console.color_system is not None:
        from rich.text import Text

        console.print(Text(text, style=style), soft_wrap=True)
    else:
        console.file.write(text + "\n")


def print_table(console: Any, columns: list[Column], rows: list[list[str]], *,
                title: str | None = None, row_styles: list[str | None] | None = None,
                cell_styles: dict[str, Any] | None = None) -> layout.Plan:
    """A table laid out for the console's width (see bufinspect.layout), styled on a terminal.

    `row_styles` gives each row a style; `cell_styles` maps a column name to a function of the
    cell's text returning its style. Past PLAIN_ROWS rows, or without colour, the lines are
    written as plain text: linear time for 50,000-row sections. A note under the table names the
    columns a narrow terminal left out.
    """
    p = layout.plan(columns, rows, console.width)
    lines = layout.table_lines(columns, rows, p)
    styled = console.color_system is not None and len(rows) <= PLAIN_ROWS
    if title:
        print_lines(console, layout.wrap(title, console.width), "bold")
    if not styled:
        console.file.write("".join(text + "\n" for text, _ in lines))
    else:
        from rich.text import Text

        starts = layout.column_starts(p)
        kept = [columns[i].name for i in p.kept]
        seen: set[int] = set()
        out = []
        for text, r in lines:
            t = Text(text)
            if r is None:
                t.stylize("dim")
            else:
                if row_styles and row_styles[r]:
                    t.stylize(row_styles[r])
                if cell_styles and not p.compact and r not in seen:
                    for name, fn in cell_styles.items():
                        if name in kept:
                            k = kept.index(name)
                            style = fn(rows[r][p.kept[k]])
                            if style:
                                t.stylize(style, starts[k], starts[k] + p.widths[k])
                seen.add(r)
            out.append(t)
        console.print(Text("\n").join(out), soft_wrap=True)
    note = layout.dropped_note(p)
    if note:
        print_lines(console, layout.wrap(note, console.width), "dim")
    return p


# column kinds and priorities (0: never dropped; larger numbers drop first at narrow widths)
_SHOW_COLUMNS = {c.name: c for c in (
    Column("container", LABEL, 0), Column("key", KEY, 0), Column("module", KEY, 0),
    Column("shape", LABEL, 2), Column("dtype", LABEL, 1), Column("device", LABEL, 4),
    Column("size", NUM, 3), Column("persistent", LABEL, 5), Column("evidence", TEXT, 1),
    Column("min", NUM, 1), Column("max", NUM, 1), Column("mean", NUM, 3), Column("std", NUM, 3),
    Column("nan/inf", NUM, 1), Column("zeros", NUM, 5), Column("tensors", NUM, 1),
    Column("elements", NUM, 2), Column("dtypes", TEXT, 3), Column("devices", TEXT, 4))}


def render_show_table(report: ShowReport, console: Any, *, depth: int | None = None,
                      explain: bool = False) -> None:
    """The human `show`: the header, then one table per section, each fitted to the width."""
    print_lines(console, layout.pairs_lines(show_header(report), console.width))
    values = values_rows(report)
    if values:
        console.file.write("\n")
        print_table(console, [Column("name", PATH, 0), Column("value", TEXT, 0)], values,
                    title=f"Values ({len(values)})")
    for title, header, rows in show_sections(report, depth=depth, explain=explain):
        console.file.write("\n")
        print_table(console, [_SHOW_COLUMNS[h] for h in header], rows, title=title)


# past this many rows a section prints without per-line styling (a 50,000-row section lists in
# linear time; styling ~1.4 ms a row through rich was measured)
PLAIN_ROWS = 100
_NUMERIC = {"size", "tensors", "elements", "min", "max", "mean", "std", "nan/inf", "zeros"}


def _md_cell(text: str) -> str:
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
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def render_show_markdown(report: ShowReport, *, depth: int | None = None,
                         explain: bool = False) -> str:
    parts = [f"## bufinspect show {md_code(clean(report.checkpoint.path))}", ""]
    parts += [f"- **{k}**: {_md_cell(v)}" for k, v in show_header(report)]
    values = values_rows(report)
    if values:
        parts += ["", f"### Values ({len(values)})", "", markdown_table(["name", "value"], values)]
    for title, header, rows in show_sections(report, depth=depth, explain=explain):
        parts += ["", f"### {title}", "", markdown_table(header, rows)]
    return "\n".join(parts) + "\n"


# ---- diff ----------------------------------------------------------------------------------


_META = ("added", "removed", "shape", "dtype")


def _diff_sorted(report) -> list:
    """Entries by how much they moved: metadata changes, then changed, then close, largest first."""
    rank = {"added": 0, "removed": 0, "shape": 0, "dtype": 0, "changed": 1, "close": 2, "equal": 3}
    return sorted(report.entries, key=lambda e: (rank[e.status.value], -e.moved))


def _detail(e, alignment: dict | None = None) -> str:
    st = e.status.value
    if st == "shape":
        return f"shape {fmt_shape(e.shape)} -> {fmt_shape(e.shape_b)}"
    if st == "dtype":
        from bufinspect import castloss

        return castloss.summary(e)
    if st == "added":
        return f"only in B: {fmt_shape(e.shape)} {e.dtype}"
    if st == "removed":
        return f"only in A: {fmt_shape(e.shape)} {e.dtype}"
    parts = []
    if e.old is not None:
        parts.append(f"{e.old} -> {e.new}")
    if e.nonfinite:
        parts.append(f"{e.nonfinite} NaN/inf differ")
    if e.note:
        parts.append(e.note)
    if e.approximate:
        parts.append("near the tolerance: re-run on the files")
    if e.key_b and e.key_b != e.key and e.key_b != aligned_key_b(alignment, e.key):
        parts.append(f"B: {e.key_b}")  # a rename the header's mapping does not explain
    return "; ".join(parts)


def aligned_key_b(alignment: dict | None, key: str) -> str | None:
    """B's key for A's `key` under the recorded alignment (None when it cannot be replayed)."""
    if not alignment:
        return None
    common = key
    for op in alignment.get("a", ()):
        verb, _, arg = op.partition(" ")
        if verb == "strip" and common.startswith(arg):
            common = common[len(arg):]
        elif verb == "add":
            common = arg + common
        elif verb == "rename":
            old, _, new = arg.partition("=")
            if common == old or (old.endswith(".") and common.startswith(old)):
                common = new + common[len(old):]
    for op in reversed(alignment.get("b", ())):
        verb, _, arg = op.partition(" ")
        if verb != "strip":
            return None
        common = arg + common
    return common


def diff_rows(report, *, show_equal: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the diff table (names cleaned), sorted by how much each entry moved."""
    header = ["status", "key", "max_abs", "max_rel", "mean_abs", "rel_l2", "cosine",
              "mismatched", "detail"]
    rows = []
    for e in _diff_sorted(report):
        if e.status.value == "equal" and not show_equal:
            continue
        mism = "-" if e.mismatched is None else f"{e.mismatched}/{e.numel}"
        rows.append([e.status.value, clean(e.key), fmt_float(e.max_abs), fmt_float(e.max_rel),
                     fmt_float(e.mean_abs), fmt_float(e.rel_l2), fmt_float(e.cosine), mism,
                     clean(_detail(e, report.alignment))])
    return header, rows


def _tolerance_text(report) -> str:
    text = f"rtol={report.rtol:g}, atol={report.atol:g}"
    if report.tolerances:
        text += "; " + ", ".join(clean(str(t)) for t in report.tolerances)
    return text


def diff_verdict(report) -> str:
    """One line: the verdict, the counts and the tolerances used."""
    s = report.summary
    counts = ", ".join(f"{v} {k}" for k, v in s.items() if v) or "nothing in scope"
    where = f"{report.scope.value}, {_tolerance_text(report)}"
    if report.from_metrics:
        where += ", re-judged from saved metrics"
    if report.has_differences:
        return f"DIFFERENT: {counts} ({where})"
    return f"SAME within tolerance: {counts} ({where})"


def diff_alignment(report) -> list[str]:
    """Lines saying how keys were aligned (empty when nothing was changed), with the mapping
    once (`B: module.<key>`) instead of B's key in every row."""
    out = []
    template = aligned_key_b(report.alignment, "<key>")
    for side, name in (("a", "A"), ("b", "B")):
        ops = report.alignment.get(side)
        if ops:
            how = " (automatic)" if report.alignment.get("auto") else ""
            out.append(f"keys of {name} ({clean(report.paths[0 if side == 'a' else 1])}): "
                       + ", ".join(clean(o) for o in ops) + how)
    if out and template and template != "<key>" and not report.alignment.get("a"):
        out[-1] += f"; B: {clean(template)}"
    return out


def _equal_line(report, show_equal: bool) -> str | None:
    n = report.summary["equal"]
    if n and not show_equal:
        return f"{n} equal entr{'y' if n == 1 else 'ies'} not listed (--show-equal lists them)"
    return None


_DIFF_COLUMNS = {c.name: c for c in (
    Column("status", LABEL, 0), Column("key", KEY, 0), Column("max_abs", NUM, 1),
    Column("max_rel", NUM, 3), Column("mean_abs", NUM, 4), Column("rel_l2", NUM, 5),
    Column("cosine", NUM, 6), Column("mismatched", NUM, 2), Column("detail", TEXT, 1))}
_STATUS_STYLE = {"changed": "red", "added": "yellow", "removed": "yellow", "shape": "magenta",
                 "dtype": "magenta", "close": "cyan", "equal": "dim"}


def diff_stat_rows(report) -> tuple[list[str], list[list[str]], str]:
    """`--stat`: header, one row per module with a change, and the summary line."""
    from bufinspect import diffstat

    stats = diffstat.module_stats(report.entries)
    moved = [m for m in stats if m.changed]
    rows = [[clean(m.module) or "(root)", f"{m.changed}/{m.total}",
             diffstat.bar(m.changed, m.total),
             clean(f"{m.largest} ({m.largest_key.rpartition('.')[2]})")] for m in moved]
    changed = sum(m.changed for m in stats)
    total = sum(m.total for m in stats)
    line = (f"{len(moved)} of {len(stats)} module{'s' if len(stats) != 1 else ''} changed, "
            f"{changed} of {total} tensor{'s' if total != 1 else ''}")
    return ["module", "changed", "share", "largest change"], rows, line


_STAT_COLUMNS = {c.name: c for c in (
    Column("module", KEY, 0), Column("changed", NUM, 0), Column("share", LABEL, 2),
    Column("largest change", TEXT, 1))}


def _limit_line(shown: int, total: int) -> str | None:
    if shown >= total:
        return None
    return (f"... and {total - shown} more entr{'y' if total - shown == 1 else 'ies'} "
            f"(--limit {shown}; --format json lists every entry)")


def render_diff_table(report, console: Any, *, show_equal: bool = False, stat: bool = False,
                      limit: int | None = None) -> None:
    """The human diff: alignment, a table sorted by movement (or per module with `stat`), the
    equal count, the verdict."""
    width = console.width
    print_lines(console, layout.wrap(f"diff {clean(report.paths[0])} -> "
                                     f"{clean(report.paths[1])}", width), "bold")
    for line in diff_alignment(report):
        print_lines(console, layout.wrap(line, width))
    if stat:
        header, rows, summary = diff_stat_rows(report)
        if rows:
            print_table(console, [_STAT_COLUMNS[h] for h in header], rows)
        print_lines(console, layout.wrap(summary, width))
    else:
        header, rows = diff_rows(report, show_equal=show_equal)
        total = len(rows)
        rows = rows[:limit] if limit else rows
        if rows:
            print_table(console, [_DIFF_COLUMNS[h] for h in header], rows,
                        row_styles=[_STATUS_STYLE.get(r[0]) for r in rows])
        more = _limit_line(len(rows), total)
        if more:
            print_lines(console, layout.wrap(more, width), "dim")
        line = _equal_line(report, show_equal)
        if line:
            print_lines(console, layout.wrap(line, width), "dim")
    print_lines(console, layout.wrap(diff_verdict(report), width),
                "bold red" if report.has_differences else "bold green")


def render_diff_markdown(report, *, show_equal: bool = False, stat: bool = False,
                         limit: int | None = None) -> str:
    """The diff as GitHub-flavoured markdown (for job summaries)."""
    parts = [f"## bufinspect diff {md_code(clean(report.paths[0]))} -> "
             f"{md_code(clean(report.paths[1]))}", ""]
    parts += [f"- {_md_cell(line)}" for line in diff_alignment(report)]
    parts.append(f"- **{_md_cell(diff_verdict(report))}**")
    if stat:
        header, rows, summary = diff_stat_rows(report)
        if rows:
            parts += ["", markdown_table(header, rows)]
        parts += ["", _md_cell(summary)]
        return "\n".join(parts) + "\n"
    header, rows = diff_rows(report, show_equal=show_equal)
    total = len(rows)
    rows = rows[:limit] if limit else rows
    if rows:
        parts += ["", markdown_table(header, rows)]
    for line in (_limit_line(len(rows), total), _equal_line(report, show_equal)):
        if line:
            parts += ["", _md_cell(line)]
    return "\n".join(parts) + "\n"


def _gh(text: str, prop: bool = False) -> str:
    """Escape for a workflow command (data part; `prop` also escapes ',' and ':')."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def render_diff_github(report) -> str:
    """GitHub Actions annotations: one `::error` per differing entry, then a `::notice` verdict."""
    out = []
    for e in _diff_sorted(report):
        st = e.status.value
        if st in ("equal", "close"):
            continue
        what = {"changed": "changed", "added": "added", "removed": "removed",
                "shape": "changed shape", "dtype": "changed dtype"}[st]
        msg = f"{clean(e.key)} {what}"
        if st == "changed" and e.note is None:
            msg += (f": max_abs={fmt_float(e.max_abs)} max_rel={fmt_float(e.max_rel)} "
                    f"mismatched={e.mismatched}/{e.numel} (rtol={e.rtol:g}, atol={e.atol:g})")
        detail = _detail(e)
        if detail and (st != "changed" or e.old is not None or e.nonfinite or e.note):
            msg += f" [{clean(detail)}]"
        path = report.paths[1] if st != "removed" else report.paths[0]
        out.append(f"::error file={_gh(clean(path), True)},title=bufinspect diff::{_gh(msg)}")
    kind = "error" if report.has_differences else "notice"
    out.append(f"::{kind} title=bufinspect diff::{_gh(diff_verdict(report))}")
    return "\n".join(out) + "\n"


_SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None]) -> str:
    """Unicode sparkline scaled to the largest value (0 is the lowest bar, None/NaN a space)."""
    finite = [v for v in values if v is not None and v == v and v != float("inf")]
    top = max(finite, default=0.0)
    out = []
    for v in values:
        if v is None or v != v:
            out.append(" ")
        elif v == float("inf"):
            out.append("!")
        else:
            out.append(_SPARK[min(int(v / top * (len(_SPARK) - 1) + 0.5), len(_SPARK) - 1)]
                       if top > 0 else _SPARK[0])
    return "".join(out)


def trend_rows(report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the trend table; the status column only when some row has one."""
    with_status = any(row.note for row in report.rows)
    header = ["key", "trend", "last", "max"] + (["status"] if with_status else [])
    rows = []
    for row in report.rows:
        finite = [v for v in row.values if v is not None]
        cells = [clean(row.key), sparkline(row.values), fmt_float(row.values[-1]),
                 fmt_float(max(finite, default=None))]
        rows.append(cells + ([clean(row.note)] if with_status else []))
    return header, rows


def render_trend_markdown(report) -> str:
    """The trend table as GitHub-flavoured markdown (the sparkline kept as text)."""
    header, rows = trend_rows(report)
    parts = [f"## bufinspect trend of {len(report.paths)} checkpoints", "",
             f"- against {md_code(clean(report.paths[0]))}, metric `{report.metric}`, "
             f"scope {report.scope}",
             "- files: " + ", ".join(md_code(clean(p)) for p in report.paths)]
    if rows:
        parts += ["", markdown_table(header, rows)]
    return "\n".join(parts) + "\n"


_TREND_COLUMNS = {c.name: c for c in (
    Column("key", KEY, 0), Column("trend", LABEL, 1), Column("last", NUM, 2),
    Column("max", NUM, 1), Column("status", TEXT, 3))}


def render_trend_table(report, console: Any) -> None:
    """One line per entry: sparkline of its change against the first checkpoint, by total drift."""
    print_lines(console, layout.wrap(f"trend of {len(report.paths)} checkpoints against "
                                     f"{clean(report.paths[0])} ({report.metric})",
                                     console.width), "bold")
    header, rows = trend_rows(report)
    print_table(console, [_TREND_COLUMNS[h] for h in header], rows)


# ---- check ---------------------------------------------------------------------------------

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def check_verdict(report: Any) -> str:
    """One line: `FAIL: 2 errors, 1 warning in 3 files (numeric checks on cpu)`."""
    counts = ", ".join(f"{report.count(s)} {s}{'s' if report.count(s) != 1 else ''}"
                       for s in ("error", "warning", "info") if report.count(s))
    files = f"{len(report.paths)} file{'s' if len(report.paths) != 1 else ''}"
    verdict = "OK" if report.ok else "FAIL"
    why = " (--strict: warnings fail)" if report.strict and not report.ok and \
        not report.count("error") and not getattr(report, "errors", ()) else ""
    unreadable = len(getattr(report, "errors", ()))
    if unreadable:
        verdict = "ERROR"
        why = f", {unreadable} unreadable" + why
    return (f"{verdict}: {counts or 'no findings'} in {files}{why} "
            f"(numeric checks on {report.device})")


def check_rows(report: Any, *, verbose: bool = False) -> tuple[list[str], list[list[str]]]:
    """Findings as (header, rows): severity, id, file (when several), message."""
    many = len(report.paths) > 1
    header = ["severity", "id"] + (["file"] if many else []) + ["message"]
    rows = [[f.severity, f.id] + ([clean(f.path)] if many else [])
            + [finding_message(f, verbose)] for f in report.findings]
    return header, rows


_CHECK_COLUMNS = {c.name: c for c in (
    Column("severity", LABEL, 0), Column("id", LABEL, 0), Column("file", PATH, 0),
    Column("message", TEXT, 0))}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_file_results(report: Any) -> list[tuple[str, str, str]]:
    """One (verdict, file, counts) per file, pytest style: `PASS`, `FAIL` or `ERROR` (unreadable)."""
    failing = ("error", "warning") if report.strict else ("error",)
    errors = {e.path: e.message for e in getattr(report, "errors", ())}
    out = []
    for path in report.paths:
        if path in errors:
            out.append(("ERROR", clean(path), clean(errors[path])))
            continue
        mine = [f for f in report.findings if f.path == path]
        counts = ", ".join(_plural(sum(f.severity == s for f in mine), s)
                           for s in ("error", "warning", "info")
                           if any(f.severity == s for f in mine))
        verdict = "FAIL" if any(f.severity in failing for f in mine) else "PASS"
        out.append((verdict, clean(path), counts or "no findings"))
    return out


_RESULT_STYLE = {"FAIL": "bold red", "ERROR": "bold red", "PASS": "green"}


def finding_message(f: Any, verbose: bool = False) -> str:
    """A finding's message; `verbose` adds every key it concerns (messages cut long lists)."""
    msg = clean(f.message)
    if verbose and f.keys and ("more" in f.message or len(f.keys) > 1):
        msg += " [keys: " + ", ".join(clean(k) for k in f.keys) + "]"
    return msg


def render_check_table(report: Any, console: Any, *, verbose: bool = False) -> None:
    """Findings grouped by file, then one result line per file, then the verdict."""
    columns = [_CHECK_COLUMNS[h] for h in ("severity", "id", "message")]
    many = len(report.paths) > 1
    for path in report.paths:
        mine = [f for f in report.findings if f.path == path]
        if not mine:
            continue
        rows = [[f.severity, f.id, finding_message(f, verbose)] for f in mine]
        print_table(console, columns, rows, title=clean(path) if many else None,
                    cell_styles={"severity": _SEVERITY_STYLE.get})
        console.file.write("\n")
    if many or getattr(report, "errors", ()):
        results = check_file_results(report)
        print_table(console, [Column("result", LABEL, 0), Column("file", PATH, 0),
                              Column("findings", TEXT, 0)],
                    [list(r) for r in results], cell_styles={"result": _RESULT_STYLE.get})
        console.file.write("\n")
    print_lines(console, layout.wrap(check_verdict(report), console.width),
                "bold green" if report.ok else "bold red")


def render_check_markdown(report: Any, *, verbose: bool = False) -> str:
    """Markdown for a GitHub job summary (`>> $GITHUB_STEP_SUMMARY`)."""
    icon = ":white_check_mark:" if report.ok else ":x:"
    files = ", ".join(md_code(clean(p)) for p in report.paths)
    parts = ["## bufinspect check", "", f"{icon} **{_md_cell(check_verdict(report))}**", "",
             f"Files: {files}"]
    header, rows = check_rows(report, verbose=verbose)
    if rows:
        parts += ["", markdown_table(header, rows)]
    if len(report.paths) > 1 or getattr(report, "errors", ()):
        parts += ["", markdown_table(["result", "file", "findings"],
                                     [list(r) for r in check_file_results(report)])]
    return "\n".join(parts) + "\n"


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def render_check_github(report: Any, *, verbose: bool = False) -> str:
    """GitHub Actions workflow commands: one `::error`/`::warning`/`::notice` line per finding,
    and one `::error` per unreadable file."""
    level = {"error": "error", "warning": "warning", "info": "notice"}
    lines = [f"::error file={_gh_prop(clean(e.path))},title=unreadable::"
             f"{_gh_data(clean(e.message))}" for e in getattr(report, "errors", ())]
    lines += [f"::{level[f.severity]} file={_gh_prop(clean(f.path))},title={_gh_prop(f.id)}::"
              f"{_gh_data(finding_message(f, verbose))}" for f in report.findings]
    return "".join(line + "\n" for line in lines)
