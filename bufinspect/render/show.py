"""The `show` report as text: a header of facts, then buffers, undecided entries, parameters
grouped by module and other tensors, as rich tables (plain columns past PLAIN_ROWS rows) or
markdown."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from bufinspect.model import Entry, Role, ShowReport, TensorStats, summarize
from bufinspect.render.common import (NUMERIC, PLAIN_ROWS, clean, fmt_float, fmt_shape, human_bytes,
                                      human_count, markdown_table, md_cell, plain_table)


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
    if ck.metadata:
        lines.append(("metadata", clean(", ".join(f"{k}={v}" for k, v in ck.metadata.items()))[:200]))
    if ck.foreign_globals:
        lines.append(("classes", clean(", ".join(ck.foreign_globals))[:300]))
    return lines


def render_show_table(report: ShowReport, console: Any, *, depth: int | None = None,
                      explain: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for k, v in show_header(report):
        head.add_row(k, escape(v))
    console.print(head)
    for title, header, rows in show_sections(report, depth=depth, explain=explain):
        console.print()
        if len(rows) > PLAIN_ROWS:
            plain_table(console, title, header, rows)
            continue
        table = Table(title=title, title_justify="left", title_style="bold", show_edge=False,
                      header_style="dim")
        for h in header:
            table.add_column(h, justify="right" if h in NUMERIC else "left", overflow="fold",
                             no_wrap=h in ("key", "module", "container", "dtype", "shape"))
        for row in rows:
            table.add_row(*(escape(c) for c in row))
        console.print(table)


def render_show_markdown(report: ShowReport, *, depth: int | None = None,
                         explain: bool = False) -> str:
    parts = [f"## bufinspect show `{md_cell(clean(report.checkpoint.path))}`", ""]
    parts += [f"- **{k}**: {md_cell(v)}" for k, v in show_header(report)]
    for title, header, rows in show_sections(report, depth=depth, explain=explain):
        parts += ["", f"### {title}", "", markdown_table(header, rows)]
    return "\n".join(parts) + "\n"


