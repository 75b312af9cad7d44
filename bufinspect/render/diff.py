"""The `diff` report as text: a table sorted by how much each entry moved (fitted to the
terminal by `render.layout`), a per-module summary (`--stat`), markdown for job summaries, and
GitHub workflow annotations."""

from __future__ import annotations

from typing import Any

from bufinspect.model import DiffEntry, DiffReport, Status
from bufinspect.model.diffstat import module_stats
from bufinspect.render.common import (clean, fmt_float, fmt_shape, markdown_table, md_cell,
                                      md_code)
from bufinspect.render.layout import KEY, LABEL, NUM, TEXT, Column
from bufinspect.render.tables import print_table, print_wrapped



_RANK = {Status.ADDED: 0, Status.REMOVED: 0, Status.SHAPE: 0, Status.DTYPE: 0, Status.CHANGED: 1,
         Status.CLOSE: 2, Status.EQUAL: 3}
_STYLES = {Status.CHANGED: "red", Status.ADDED: "yellow", Status.REMOVED: "yellow",
           Status.SHAPE: "magenta", Status.DTYPE: "magenta", Status.CLOSE: "cyan",
           Status.EQUAL: "dim"}


def _diff_sorted(report: DiffReport) -> list[DiffEntry]:
    """Entries by how much they moved: metadata changes, then changed, then close, largest first."""
    return sorted(report.entries, key=lambda e: (_RANK[e.status], -e.moved))


def cast_detail(e: DiffEntry) -> str:
    """A dtype change: what the cast alone loses, and whether B is exactly A cast (then the
    metric columns are the cast's loss)."""
    text = f"dtype {e.dtype} -> {e.dtype_b}"
    cast = e.cast
    if e.max_abs is None or cast is None:
        return text
    counts = "".join(f", {cast[k]} {what}" for k, what in (("overflow", "overflow to inf"),
                                                           ("underflow", "underflow to 0"))
                     if cast[k])
    if cast["exact"]:
        if cast["max_abs"] == 0 and not counts:
            return f"{text}; lossless cast, B is exactly A cast"
        return f"{text}; B is exactly A cast (the columns are its loss){counts}"
    if cast["max_abs"] == 0 and not counts:
        return f"{text}; the cast alone is lossless, the values moved"
    return (f"{text}; the cast alone loses max_abs {fmt_float(cast['max_abs'])}, "
            f"max_rel {fmt_float(cast['max_rel'])}{counts}; the values also moved")


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


def _detail(e: DiffEntry, alignment: dict | None = None) -> str:
    st = e.status
    if st is Status.SHAPE:
        return f"shape {fmt_shape(e.shape)} -> {fmt_shape(e.shape_b)}"
    if st is Status.DTYPE:
        return cast_detail(e)
    if st is Status.ADDED:
        return f"only in B: {fmt_shape(e.shape)} {e.dtype}"
    if st is Status.REMOVED:
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


def diff_rows(report: DiffReport, *, show_equal: bool = False
              ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the diff table (names cleaned), sorted by how much each entry moved."""
    header = ["status", "key", "max_abs", "max_rel", "mean_abs", "rel_l2", "cosine",
              "mismatched", "detail"]
    rows = []
    for e in _diff_sorted(report):
        if e.status is Status.EQUAL and not show_equal:
            continue
        mism = "-" if e.mismatched is None else f"{e.mismatched}/{e.numel}"
        rows.append([e.status.value, clean(e.key), fmt_float(e.max_abs), fmt_float(e.max_rel),
                     fmt_float(e.mean_abs), fmt_float(e.rel_l2), fmt_float(e.cosine), mism,
                     clean(_detail(e, report.alignment))])
    return header, rows


def _tolerance_text(report: DiffReport) -> str:
    text = f"rtol={report.rtol:g}, atol={report.atol:g}"
    if report.tolerances:
        text += "; " + ", ".join(clean(str(t)) for t in report.tolerances)
    return text


def diff_verdict(report: DiffReport) -> str:
    """One line: the verdict, the counts and the tolerances used."""
    s = report.summary
    counts = ", ".join(f"{v} {k}" for k, v in s.items() if v) or "nothing in scope"
    where = f"{report.scope.value}, {_tolerance_text(report)}"
    if report.from_metrics:
        where += ", re-judged from saved metrics"
    if report.has_differences:
        return f"DIFFERENT: {counts} ({where})"
    return f"SAME within tolerance: {counts} ({where})"


def diff_alignment(report: DiffReport) -> list[str]:
    """Lines saying how keys were aligned (empty when nothing was changed), with the mapping
    once (`B: module.<key>`) instead of B's key in every row."""
    out = []
    for side, name in (("a", "A"), ("b", "B")):
        ops = report.alignment.get(side)
        if ops:
            how = " (automatic)" if report.alignment.get("auto") else ""
            out.append(f"keys of {name} ({clean(report.paths[0 if side == 'a' else 1])}): "
                       + ", ".join(clean(o) for o in ops) + how)
    template = aligned_key_b(report.alignment, "<key>")
    if out and template and template != "<key>" and not report.alignment.get("a"):
        out[-1] += f"; B: {clean(template)}"
    return out


def diff_notes(report: DiffReport) -> list[str]:
    """`note (id): ...` lines on running statistics (analysis.diagnostics), for the summary."""
    return [f"note ({n.id}): {clean(n.message)}" for n in report.notes]


def _equal_line(report: DiffReport, show_equal: bool) -> str | None:
    n = report.summary[Status.EQUAL.value]
    if n and not show_equal:
        return f"{n} equal entr{'y' if n == 1 else 'ies'} not listed (--show-equal lists them)"
    return None


def _limit_line(shown: int, total: int) -> str | None:
    if shown >= total:
        return None
    return (f"... and {total - shown} more entr{'y' if total - shown == 1 else 'ies'} "
            f"(--limit {shown}; --format json lists every entry)")


def _bar(changed: int, total: int, width: int = 10) -> str:
    """`███░░░░░░░`: the share of a module's tensors that changed."""
    full = round(width * changed / total) if total else 0
    return "█" * max(full, 1 if changed else 0) + "░" * (width - max(full, 1 if changed else 0))


def diff_stat_rows(report: DiffReport) -> tuple[list[str], list[list[str]], str]:
    """`--stat`: header, one row per module with a change, and the summary line."""
    stats = module_stats(report.entries)
    rows = []
    for m in stats:
        if not m.changed:
            continue
        metric, value = m.largest_change
        how = metric if value is None else f"{metric} {fmt_float(value)}"
        leaf = m.largest.key.rpartition(".")[2] if m.largest else ""
        rows.append([clean(m.module) or "(root)", f"{m.changed}/{m.total}",
                     _bar(m.changed, m.total), clean(f"{how} ({leaf})")])
    changed = sum(m.changed for m in stats)
    total = sum(m.total for m in stats)
    line = (f"{len(rows)} of {len(stats)} module{'s' if len(stats) != 1 else ''} changed, "
            f"{changed} of {total} tensor{'s' if total != 1 else ''}")
    return ["module", "changed", "share", "largest change"], rows, line


_COLUMNS = {c.name: c for c in (
    Column("status", LABEL, 0), Column("key", KEY, 0), Column("max_abs", NUM, 1),
    Column("max_rel", NUM, 3), Column("mean_abs", NUM, 4), Column("rel_l2", NUM, 5),
    Column("cosine", NUM, 6), Column("mismatched", NUM, 2), Column("detail", TEXT, 1),
    Column("module", KEY, 0), Column("changed", NUM, 0), Column("share", LABEL, 2),
    Column("largest change", TEXT, 1))}


def render_diff_table(report: DiffReport, console: Any, *, show_equal: bool = False,
                      stat: bool = False, limit: int | None = None) -> None:
    """The human diff: alignment, a table sorted by movement (or per module with `stat`), the
    equal count, the verdict. `limit` lists only the N largest changes."""
    print_wrapped(console, f"diff {clean(report.paths[0])} -> {clean(report.paths[1])}", "bold")
    for line in diff_alignment(report):
        print_wrapped(console, line)
    if stat:
        header, rows, summary = diff_stat_rows(report)
        if rows:
            print_table(console, [_COLUMNS[h] for h in header], rows)
        print_wrapped(console, summary)
    else:
        header, rows = diff_rows(report, show_equal=show_equal)
        total = len(rows)
        rows = rows[:limit] if limit else rows
        if rows:
            print_table(console, [_COLUMNS[h] for h in header], rows,
                        row_styles=[_STYLES.get(Status(r[0])) for r in rows])
        for line in (_limit_line(len(rows), total), _equal_line(report, show_equal)):
            if line:
                print_wrapped(console, line, "dim")
    for note in diff_notes(report):  # remarks on running statistics (analysis.diffnotes)
        print_wrapped(console, note, "yellow")
    print_wrapped(console, diff_verdict(report),
                  "bold red" if report.has_differences else "bold green")


def render_diff_markdown(report: DiffReport, *, show_equal: bool = False, stat: bool = False,
                         limit: int | None = None) -> str:
    """The diff as GitHub-flavoured markdown (for job summaries)."""
    parts = [f"## bufinspect diff {md_code(clean(report.paths[0]))} -> "
             f"{md_code(clean(report.paths[1]))}", ""]
    parts += [f"- {md_cell(line)}" for line in diff_alignment(report)]
    parts.append(f"- **{md_cell(diff_verdict(report))}**")
    parts += [f"- {md_cell(note)}" for note in diff_notes(report)]
    if stat:
        header, rows, summary = diff_stat_rows(report)
        if rows:
            parts += ["", markdown_table(header, rows)]
        parts += ["", md_cell(summary)]
        return "\n".join(parts) + "\n"
    header, rows = diff_rows(report, show_equal=show_equal)
    total = len(rows)
    rows = rows[:limit] if limit else rows
    if rows:
        parts += ["", markdown_table(header, rows)]
    for line in (_limit_line(len(rows), total), _equal_line(report, show_equal)):
        if line:
            parts += ["", md_cell(line)]
    return "\n".join(parts) + "\n"


def _gh(text: str, prop: bool = False) -> str:
    """Escape for a workflow command (data part; `prop` also escapes ',' and ':')."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def render_diff_github(report: DiffReport) -> str:
    """GitHub Actions annotations: one `::error` per differing entry, then a `::notice` verdict."""
    out = []
    for e in _diff_sorted(report):
        st = e.status
        if st in (Status.EQUAL, Status.CLOSE):
            continue
        what = {Status.CHANGED: "changed", Status.ADDED: "added", Status.REMOVED: "removed",
                Status.SHAPE: "changed shape", Status.DTYPE: "changed dtype"}[st]
        msg = f"{clean(e.key)} {what}"
        if st is Status.CHANGED and e.note is None:
            msg += (f": max_abs={fmt_float(e.max_abs)} max_rel={fmt_float(e.max_rel)} "
                    f"mismatched={e.mismatched}/{e.numel} (rtol={e.rtol:g}, atol={e.atol:g})")
        detail = _detail(e, report.alignment)
        if detail and (st is not Status.CHANGED or e.old is not None or e.nonfinite or e.note):
            msg += f" [{clean(detail)}]"
        path = report.paths[1] if st is not Status.REMOVED else report.paths[0]
        out.append(f"::error file={_gh(clean(path), True)},title=bufinspect diff::{_gh(msg)}")
    for n in report.notes:
        out.append(f"::notice title=bufinspect diff {_gh(n.id, True)}::{_gh(clean(n.message))}")
    kind = "error" if report.has_differences else "notice"
    out.append(f"::{kind} title=bufinspect diff::{_gh(diff_verdict(report))}")
    return "\n".join(out) + "\n"


