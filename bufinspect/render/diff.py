"""The `diff` report as text: a table sorted by how much each entry moved (rich), markdown for
job summaries, and GitHub workflow annotations."""

from __future__ import annotations

from typing import Any

from bufinspect.model import DiffEntry, DiffReport, Status
from bufinspect.render.common import (clean, fmt_float, fmt_shape, markdown_table, md_cell)



_RANK = {Status.ADDED: 0, Status.REMOVED: 0, Status.SHAPE: 0, Status.DTYPE: 0, Status.CHANGED: 1,
         Status.CLOSE: 2, Status.EQUAL: 3}
_STYLES = {Status.CHANGED: "red", Status.ADDED: "yellow", Status.REMOVED: "yellow",
           Status.SHAPE: "magenta", Status.DTYPE: "magenta", Status.CLOSE: "cyan",
           Status.EQUAL: "dim"}


def _diff_sorted(report: DiffReport) -> list[DiffEntry]:
    """Entries by how much they moved: metadata changes, then changed, then close, largest first."""
    return sorted(report.entries, key=lambda e: (_RANK[e.status], -e.moved))


def _detail(e: DiffEntry) -> str:
    st = e.status
    if st is Status.SHAPE:
        return f"shape {fmt_shape(e.shape)} -> {fmt_shape(e.shape_b)}"
    if st is Status.DTYPE:
        return f"dtype {e.dtype} -> {e.dtype_b}"
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
    if e.key_b and e.key_b != e.key:
        parts.append(f"B: {e.key_b}")
    return "; ".join(parts)


def diff_rows(report: DiffReport, *, show_equal: bool = False) -> tuple[list[str], list[list[str]]]:
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
                     clean(_detail(e))])
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
    """Lines saying how keys were aligned (empty when nothing was changed)."""
    out = []
    for side, name in (("a", "A"), ("b", "B")):
        ops = report.alignment.get(side)
        if ops:
            how = " (automatic)" if report.alignment.get("auto") else ""
            out.append(f"keys of {name} ({clean(report.paths[0 if side == 'a' else 1])}): "
                       + ", ".join(clean(o) for o in ops) + how)
    return out


def _equal_line(report: DiffReport, show_equal: bool) -> str | None:
    n = report.summary[Status.EQUAL.value]
    if n and not show_equal:
        return f"{n} equal entr{'y' if n == 1 else 'ies'} not listed (--show-equal lists them)"
    return None


def render_diff_table(report: DiffReport, console: Any, *, show_equal: bool = False) -> None:
    """The human diff: alignment, a table sorted by movement, the equal count, the verdict."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]diff[/bold] {escape(clean(report.paths[0]))} -> "
                  f"{escape(clean(report.paths[1]))}")
    for line in diff_alignment(report):
        console.print(escape(line))
    header, rows = diff_rows(report, show_equal=show_equal)
    if rows:
        table = Table(show_edge=False, header_style="dim")
        for h in header:
            table.add_column(h, justify="left" if h in ("status", "key", "detail") else "right",
                             no_wrap=h not in ("detail", "key"), overflow="fold",  # numbers never wrap
                             min_width=6 if h == "detail" else None)
        for row in rows:
            table.add_row(*(escape(c) for c in row), style=_STYLES.get(Status(row[0])))
        console.print(table)
    line = _equal_line(report, show_equal)
    if line:
        console.print(line, style="dim")
    verdict = diff_verdict(report)
    console.print(escape(verdict), style="bold red" if report.has_differences else "bold green")


def render_diff_markdown(report: DiffReport, *, show_equal: bool = False) -> str:
    """The diff as GitHub-flavoured markdown (for job summaries)."""
    parts = [f"## bufinspect diff `{md_cell(clean(report.paths[0]))}` -> "
             f"`{md_cell(clean(report.paths[1]))}`", ""]
    parts += [f"- {md_cell(line)}" for line in diff_alignment(report)]
    parts.append(f"- **{md_cell(diff_verdict(report))}**")
    header, rows = diff_rows(report, show_equal=show_equal)
    if rows:
        parts += ["", markdown_table(header, rows)]
    line = _equal_line(report, show_equal)
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
        detail = _detail(e)
        if detail and (st is not Status.CHANGED or e.old is not None or e.nonfinite or e.note):
            msg += f" [{clean(detail)}]"
        path = report.paths[1] if st is not Status.REMOVED else report.paths[0]
        out.append(f"::error file={_gh(clean(path), True)},title=bufinspect diff::{_gh(msg)}")
    kind = "error" if report.has_differences else "notice"
    out.append(f"::{kind} title=bufinspect diff::{_gh(diff_verdict(report))}")
    return "\n".join(out) + "\n"


