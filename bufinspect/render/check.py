"""The `check` report as text: findings table and verdict (rich), markdown for a job summary,
GitHub workflow annotations."""

from __future__ import annotations

from typing import Any

from bufinspect.model import CheckReport, Severity
from bufinspect.render.common import (clean, markdown_table, md_cell)


_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


def check_verdict(report: CheckReport) -> str:
    """One line: `FAIL: 2 errors, 1 warning in 3 files (numeric checks on cpu)`."""
    counts = ", ".join(f"{report.count(s)} {s.value}{'s' if report.count(s) != 1 else ''}"
                       for s in Severity if report.count(s))
    files = f"{len(report.paths)} file{'s' if len(report.paths) != 1 else ''}"
    verdict = "OK" if report.ok else "FAIL"
    why = " (--strict: warnings fail)" if report.strict and not report.ok and \
        not report.count(Severity.ERROR) else ""
    return (f"{verdict}: {counts or 'no findings'} in {files}{why} "
            f"(numeric checks on {report.device})")


def check_rows(report: CheckReport) -> tuple[list[str], list[list[str]]]:
    """Findings as (header, rows): severity, id, file (when several), message."""
    many = len(report.paths) > 1
    header = ["severity", "id"] + (["file"] if many else []) + ["message"]
    rows = [[f.severity.value, f.id] + ([clean(f.path)] if many else []) + [clean(f.message)]
            for f in report.findings]
    return header, rows


def render_check_table(report: CheckReport, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    header, rows = check_rows(report)
    if rows:
        table = Table(show_edge=False, header_style="dim")
        for h in header:
            table.add_column(h, overflow="fold", no_wrap=h in ("severity", "id"))
        for row in rows:
            style = _SEVERITY_STYLE[Severity(row[0])]
            table.add_row(f"[{style}]{row[0]}[/]", *(escape(c) for c in row[1:]))
        console.print(table)
        console.print()
    style = "bold green" if report.ok else "bold red"
    console.print(f"[{style}]{escape(check_verdict(report))}[/]")


def render_check_markdown(report: CheckReport) -> str:
    """Markdown for a GitHub job summary (`>> $GITHUB_STEP_SUMMARY`)."""
    icon = ":white_check_mark:" if report.ok else ":x:"
    files = ", ".join(md_cell(clean(p)) for p in report.paths)
    parts = ["## bufinspect check", "", f"{icon} **{md_cell(check_verdict(report))}**", "",
             f"Files: {files}"]
    header, rows = check_rows(report)
    if rows:
        parts += ["", markdown_table(header, rows)]
    return "\n".join(parts) + "\n"


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def render_check_github(report: CheckReport) -> str:
    """GitHub Actions workflow commands: one `::error`/`::warning`/`::notice` line per finding."""
    level = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
    lines = [f"::{level[f.severity]} file={_gh_prop(clean(f.path))},title={_gh_prop(f.id)}::"
             f"{_gh_data(clean(f.message))}" for f in report.findings]
    return "".join(line + "\n" for line in lines)
