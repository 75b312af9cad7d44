"""Reports -> text: rich tables for people, markdown for job summaries, GitHub workflow
annotations, strict JSON for machines.

Renderers take a typed report (`bufinspect.model`) and explicit keyword arguments, never the
parsed command line. Every name that came from a file goes through `clean()` so that control
characters, ANSI escapes, bidi overrides and rich markup print as inert, visible text. Only this
package and the CLI import rich.

To add an output format: a member of `OutputFormat`, a branch in `cli.emit`, and the renderer
for each report type here (the test in tests/test_cli_docs.py proves every format is handled).
"""

from __future__ import annotations

from typing import Any

from bufinspect.errors import UsageError
from bufinspect.model import CheckReport, DiffReport, ShowReport, TrendReport
from bufinspect.render.common import (OutputFormat, assert_never, clean, fmt_float, fmt_shape,
                                      human_bytes, human_count, markdown_table, report_json,
                                      report_json_chunks, to_json)

# the per-report renderers load on first use (PEP 562): a JSON run never imports them
_LAZY = {
    "check_file_results": "check", "check_rows": "check", "check_verdict": "check",
    "render_check_github": "check", "render_check_markdown": "check",
    "render_check_table": "check",
    "diff_alignment": "diff", "diff_rows": "diff", "diff_stat_rows": "diff",
    "diff_verdict": "diff", "render_diff_github": "diff", "render_diff_markdown": "diff",
    "render_diff_table": "diff",
    "render_show_markdown": "show", "render_show_table": "show", "show_header": "show",
    "show_sections": "show", "values_rows": "show",
    "line_style": "trend", "plot": "trend", "plot_series": "trend",
    "render_trend_markdown": "trend", "render_trend_table": "trend", "sparkline": "trend",
    "trend_rows": "trend",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"bufinspect.render.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bufinspect.render' has no attribute {name!r}")


Report = ShowReport | DiffReport | CheckReport | TrendReport


def table(report: Report, console: Any, **options: Any) -> None:
    """Print the human table of any report on a rich console."""
    if isinstance(report, ShowReport):
        from bufinspect.render.show import render_show_table

        render_show_table(report, console, **options)
    elif isinstance(report, DiffReport):
        from bufinspect.render.diff import render_diff_table

        render_diff_table(report, console, **options)
    elif isinstance(report, CheckReport):
        from bufinspect.render.check import render_check_table

        render_check_table(report, console, **options)
    elif isinstance(report, TrendReport):
        from bufinspect.render.trend import render_trend_table

        render_trend_table(report, console)
    else:
        assert_never(report)


def markdown(report: Report, **options: Any) -> str:
    """GitHub-flavoured markdown of any report."""
    if isinstance(report, ShowReport):
        from bufinspect.render.show import render_show_markdown

        return render_show_markdown(report, **options)
    if isinstance(report, DiffReport):
        from bufinspect.render.diff import render_diff_markdown

        return render_diff_markdown(report, **options)
    if isinstance(report, CheckReport):
        from bufinspect.render.check import render_check_markdown

        return render_check_markdown(report, **options)
    if isinstance(report, TrendReport):
        from bufinspect.render.trend import render_trend_markdown

        return render_trend_markdown(report)
    assert_never(report)


def github(report: Report, **options: Any) -> str:
    """GitHub Actions workflow commands for a report (diff, check)."""
    if isinstance(report, DiffReport):
        from bufinspect.render.diff import render_diff_github

        return render_diff_github(report)
    if isinstance(report, CheckReport):
        from bufinspect.render.check import render_check_github

        return render_check_github(report, **options)
    raise UsageError("--format github is for diff and check")


__all__ = [
    "OutputFormat", "Report", "assert_never", "check_rows", "check_verdict", "clean",
    "check_file_results", "diff_alignment", "diff_rows", "diff_stat_rows", "diff_verdict",
    "fmt_float", "fmt_shape", "github",
    "human_bytes", "human_count", "markdown", "markdown_table", "plot", "render_check_github",
    "render_check_markdown", "render_check_table", "render_diff_github", "render_diff_markdown",
    "render_diff_table", "render_show_markdown", "render_show_table", "render_trend_markdown",
    "render_trend_table", "report_json", "report_json_chunks", "show_header", "show_sections",
    "sparkline", "table", "to_json", "trend_rows", "values_rows",
]
