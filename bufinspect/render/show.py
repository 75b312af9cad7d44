"""The `show` report as text: a header of facts, the training values, then buffers, undecided
entries, parameters grouped by module and other tensors, as tables fitted to the terminal
(`render.layout`) or markdown."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

from bufinspect.model import Entry, Role, ShowReport, TensorStats, summarize
from bufinspect.render import layout
from bufinspect.render.common import (clean, fmt_float, fmt_shape, human_bytes, human_count,
                                      markdown_table, md_cell, md_code)
from bufinspect.render.layout import KEY, LABEL, NUM, PATH, TEXT, Column
from bufinspect.render.tables import print_lines, print_table


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


def value_text(v: object) -> str:
    """A training value as Python writes it (`0.01`, `[0.9, 0.999]`, `adam`)."""
    return clean(v if isinstance(v, str) else repr(v))


def values_rows(report: ShowReport) -> list[list[str]]:
    """The training values (epoch, step, learning rates...) as (name, value) rows."""
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
    if counts:  # total elements per role, after "tensors"
        lines.insert(4, ("elements", ", ".join(f"{role} {_count(n)}" for role, n in counts)))
    if ck.metadata:
        lines.append(("metadata", metadata_summary(ck.metadata)))
    if ck.foreign_globals:
        lines.append(("classes", clean(", ".join(ck.foreign_globals))[:300]))
    if ck.calls:
        lines.append(("calls", clean(calls_line(ck.calls))[:300]))
    return lines


# column kinds and priorities (0: never dropped; larger numbers drop first at narrow widths)
_COLUMNS = {c.name: c for c in (
    Column("container", LABEL, 0), Column("key", KEY, 0), Column("module", KEY, 0),
    Column("shape", LABEL, 2), Column("dtype", LABEL, 1), Column("device", LABEL, 4),
    Column("size", NUM, 3), Column("persistent", LABEL, 5), Column("evidence", TEXT, 1),
    Column("min", NUM, 1), Column("max", NUM, 1), Column("mean", NUM, 3), Column("std", NUM, 3),
    Column("nan/inf", NUM, 1), Column("zeros", NUM, 5), Column("tensors", NUM, 1),
    Column("elements", NUM, 2), Column("dtypes", TEXT, 3), Column("devices", TEXT, 4))}
_VALUE_COLUMNS = [Column("name", PATH, 0), Column("value", TEXT, 0)]


def calls_line(calls: Sequence[tuple[str, int]]) -> str:
    """`when loaded by torch.load, not run here: functools.partial \u00d712, ...` (header)."""
    return "when loaded by torch.load, not run here: " + ", ".join(
        f"{name} \u00d7{count}" for name, count in calls)


def render_show_table(report: ShowReport, console: Any, *, depth: int | None = None,
                      explain: bool = False) -> None:
    """The human `show`: the header, the training values, then one table per section, each
    fitted to the console's width."""
    print_lines(console, layout.pairs_lines(show_header(report), console.width))
    values = values_rows(report)
    if values:
        console.file.write("\n")
        print_table(console, _VALUE_COLUMNS, values, title=f"Values ({len(values)})")
    for title, header, rows in show_sections(report, depth=depth, explain=explain):
        console.file.write("\n")
        print_table(console, [_COLUMNS[h] for h in header], rows, title=title)


def render_show_markdown(report: ShowReport, *, depth: int | None = None,
                         explain: bool = False) -> str:
    parts = [f"## bufinspect show {md_code(clean(report.checkpoint.path))}", ""]
    parts += [f"- **{k}**: {md_cell(v)}" for k, v in show_header(report)]
    values = values_rows(report)
    if values:
        parts += ["", f"### Values ({len(values)})", "", markdown_table(["name", "value"], values)]
    for title, header, rows in show_sections(report, depth=depth, explain=explain):
        parts += ["", f"### {title}", "", markdown_table(header, rows)]
    return "\n".join(parts) + "\n"
