"""The `check` report as text: findings grouped by file, one result line per file (pytest
style) and the verdict, fitted to the terminal; markdown for a job summary; GitHub workflow
annotations. `verbose` lists every key a finding concerns (messages cut long lists)."""

from __future__ import annotations

from typing import Any

from bufinspect.model import CheckReport, Finding, Severity
from bufinspect.render.common import clean, markdown_table, md_cell, md_code
from bufinspect.render.layout import LABEL, PATH, TEXT, Column
from bufinspect.render.tables import print_table, print_wrapped

_SEVERITY_STYLE = {Severity.ERROR.value: "bold red", Severity.WARNING.value: "yellow",
                   Severity.INFO.value: "dim"}
_RESULT_STYLE = {"FAIL": "bold red", "ERROR": "bold red", "PASS": "green"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_verdict(report: CheckReport) -> str:
    """One line: `FAIL: 2 errors, 1 warning in 3 files (numeric checks on cpu)`."""
    counts = ", ".join(_plural(report.count(s), s.value) for s in Severity if report.count(s))
    files = _plural(len(report.paths), "file")
    verdict = "OK" if report.ok else "FAIL"
    why = " (--strict: warnings fail)" if report.strict and not report.ok and \
        not report.count(Severity.ERROR) and not report.errors else ""
    if report.errors:
        verdict = "ERROR"
        why = f", {len(report.errors)} unreadable" + why
    return (f"{verdict}: {counts or 'no findings'} in {files}{why} "
            f"(numeric checks on {report.device})")


def finding_message(f: Finding, verbose: bool = False) -> str:
    """A finding's message; `verbose` adds every key it concerns (messages cut long lists)."""
    msg = clean(f.message)
    if verbose and len(f.keys) > 1:
        msg += " [keys: " + ", ".join(clean(k) for k in f.keys) + "]"
    return msg


def check_rows(report: CheckReport, *, verbose: bool = False
               ) -> tuple[list[str], list[list[str]]]:
    """Findings as (header, rows): severity, id, file (when several), message."""
    many = len(report.paths) > 1
    header = ["severity", "id"] + (["file"] if many else []) + ["message"]
    rows = [[f.severity.value, f.id] + ([clean(f.path)] if many else [])
            + [finding_message(f, verbose)] for f in report.findings]
    return header, rows


def check_file_results(report: CheckReport) -> list[tuple[str, str, str]]:
    """One (verdict, file, counts) per file, pytest style: `PASS`, `FAIL` or `ERROR`
    (unreadable: the counts are the reason)."""
    failing = (Severity.ERROR, Severity.WARNING) if report.strict else (Severity.ERROR,)
    errors = {e.path: e.message for e in report.errors}
    out = []
    for path in report.paths:
        if path in errors:
            out.append(("ERROR", clean(path), clean(errors[path])))
            continue
        mine = [f for f in report.findings if f.path == path]
        counts = ", ".join(_plural(sum(f.severity is s for f in mine), s.value)
                           for s in Severity if any(f.severity is s for f in mine))
        verdict = "FAIL" if any(f.severity in failing for f in mine) else "PASS"
        out.append((verdict, clean(path), counts or "no findings"))
    return out


_FINDING_COLUMNS = [Column("severity", LABEL, 0), Column("id", LABEL, 0),
                    Column("message", TEXT, 0)]
_RESULT_COLUMNS = [Column("result", LABEL, 0), Column("file", PATH, 0),
                   Column("findings", TEXT, 0)]


def render_check_table(report: CheckReport, console: Any, *, verbose: bool = False) -> None:
    """Findings grouped by file, then one result line per file, then the verdict."""
    many = len(report.paths) > 1
    for path in report.paths:
        mine = [f for f in report.findings if f.path == path]
        if not mine:
            continue
        rows = [[f.severity.value, f.id, finding_message(f, verbose)] for f in mine]
        print_table(console, _FINDING_COLUMNS, rows, title=clean(path) if many else None,
                    cell_styles={"severity": _SEVERITY_STYLE.get})
        console.file.write("\n")
    if many or report.errors:
        print_table(console, _RESULT_COLUMNS, [list(r) for r in check_file_results(report)],
                    cell_styles={"result": _RESULT_STYLE.get})
        console.file.write("\n")
    print_wrapped(console, check_verdict(report), "bold green" if report.ok else "bold red")


def render_check_markdown(report: CheckReport, *, verbose: bool = False) -> str:
    """Markdown for a GitHub job summary (`>> $GITHUB_STEP_SUMMARY`)."""
    icon = ":white_check_mark:" if report.ok else ":x:"
    files = ", ".join(md_code(clean(p)) for p in report.paths)
    parts = ["## bufinspect check", "", f"{icon} **{md_cell(check_verdict(report))}**", "",
             f"Files: {files}"]
    header, rows = check_rows(report, verbose=verbose)
    if rows:
        parts += ["", markdown_table(header, rows)]
    if len(report.paths) > 1 or report.errors:
        parts += ["", markdown_table(["result", "file", "findings"],
                                     [list(r) for r in check_file_results(report)])]
    return "\n".join(parts) + "\n"


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def render_check_github(report: CheckReport, *, verbose: bool = False) -> str:
    """GitHub Actions workflow commands: one `::error`/`::warning`/`::notice` line per finding,
    and one `::error` per unreadable file."""
    level = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
    lines = [f"::error file={_gh_prop(clean(e.path))},title=unreadable::"
             f"{_gh_data(clean(e.message))}" for e in report.errors]
    lines += [f"::{level[f.severity]} file={_gh_prop(clean(f.path))},title={_gh_prop(f.id)}::"
              f"{_gh_data(finding_message(f, verbose))}" for f in report.findings]
    return "".join(line + "\n" for line in lines)
