"""The `trend` report as text (a sparkline per tensor, fitted to the terminal; markdown) and as
a chart (matplotlib): file names on the x axis, each key over its own peak (or a log scale), 40
distinct line styles."""

from __future__ import annotations

import math
from typing import Any

from bufinspect.errors import UsageError
from bufinspect.model import TrendReport
from bufinspect.render.common import clean, fmt_float, markdown_table, md_code
from bufinspect.render.layout import KEY, LABEL, NUM, TEXT, Column
from bufinspect.render.tables import print_table, print_wrapped


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


def trend_rows(report: TrendReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the trend table; the status column only when some row has one."""
    with_status = any(row.note for row in report.rows)
    header = ["key", "trend", "last", "max"] + (["status"] if with_status else [])
    rows = []
    for row in report.rows:
        finite = [v for v in row.values if v is not None]
        cells = [clean(row.key), sparkline(list(row.values)), fmt_float(row.values[-1]),
                 fmt_float(max(finite, default=None))]
        rows.append(cells + ([clean(row.note)] if with_status else []))
    return header, rows


_COLUMNS = {c.name: c for c in (
    Column("key", KEY, 0), Column("trend", LABEL, 1), Column("last", NUM, 2),
    Column("max", NUM, 1), Column("status", TEXT, 3))}


def render_trend_table(report: TrendReport, console: Any) -> None:
    """One line per entry: sparkline of its change against the first checkpoint, by total drift."""
    print_wrapped(console, f"trend of {len(report.paths)} checkpoints against "
                           f"{clean(report.paths[0])} ({report.metric})", "bold")
    header, rows = trend_rows(report)
    print_table(console, [_COLUMNS[h] for h in header], rows)


def render_trend_markdown(report: TrendReport) -> str:
    """The trend table as GitHub-flavoured markdown (the sparkline kept as text)."""
    header, rows = trend_rows(report)
    parts = [f"## bufinspect trend of {len(report.paths)} checkpoints", "",
             f"- against {md_code(clean(report.paths[0]))}, metric `{report.metric}`, "
             f"scope {report.scope.value}",
             "- files: " + ", ".join(md_code(clean(p)) for p in report.paths)]
    if rows:
        parts += ["", markdown_table(header, rows)]
    return "\n".join(parts) + "\n"


SCALES = ("normalized", "log", "linear")
# colours x line styles x markers: 10 x 4 lines before a style repeats
_COLORS = 10
_LINES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def line_style(i: int) -> dict[str, Any]:
    """Matplotlib style of the i-th line: no two of the first 40 lines look the same."""
    return {"color": f"C{i % _COLORS}", "linestyle": _LINES[(i // _COLORS) % len(_LINES)],
            "marker": _MARKERS[i % len(_MARKERS)]}


def plot_series(report: TrendReport, *, top: int | None = 12, scale: str = "normalized"
                ) -> list[tuple[str, list[float]]]:
    """The (key, y values) the chart draws: the `top` most drifting keys (None: all), each
    divided by its own largest value with `normalized` (so a counter that grows to 1000 does
    not flatten a running_var that moves by 0.01), as measured otherwise. NaN: no value."""
    if scale not in SCALES:
        raise UsageError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    rows = report.rows if top is None else report.rows[:top]
    out = []
    for row in rows:
        ys = [math.nan if v is None or math.isinf(v) else float(v) for v in row.values]
        if scale == "normalized":
            peak = max((abs(y) for y in ys if y == y), default=0.0)
            ys = [y / peak if peak else y for y in ys]
        out.append((row.key, ys))
    return out


def plot(report: TrendReport, image_format: str, *, top: int | None = 12,
         scale: str = "normalized") -> bytes:
    """A line chart of the `top` most drifting keys (None: all) as `image_format` (png, svg,
    pdf) bytes (needs matplotlib; the CLI writes them through `formats`).

    The x axis names the checkpoint files; `scale` is `normalized` (each key over its own
    peak), `log` (symmetric log, zeros allowed) or `linear`.
    """
    import io
    import os

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'bufinspect[plot]'") from None
    series = plot_series(report, top=top, scale=scale)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    steps = list(range(len(report.paths)))
    for i, (key, ys) in enumerate(series):
        # a key is literal text: "$\\foo$" would be parsed as mathtext (and fail)
        ax.plot(steps, ys, label=key.replace("$", r"\$"), markersize=4, **line_style(i))
    ax.set_xticks(steps)
    names = [(os.path.basename(os.path.normpath(p)) or p).replace("$", r"\$")
             for p in report.paths]
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
    ax.set_xlabel("checkpoint")
    if scale == "log":
        ax.set_yscale("symlog", linthresh=1e-8)
    ax.set_ylabel(f"{report.metric} against {names[0]}"
                  + (" / its peak" if scale == "normalized" else ""))
    shown = f"top {len(series)} of {len(report.rows)}" if len(series) < len(report.rows) \
        else f"{len(series)} keys"
    ax.set_title(f"bufinspect trend ({report.scope.value}, {shown}, {scale})")
    if series:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncol=1 if len(series) <= 25 else 2)
    out = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(out, format=image_format)
    except ValueError as exc:  # an extension matplotlib cannot write, text it cannot lay out
        raise UsageError(f"--plot: {str(exc).splitlines()[0][:160]}") from None
    finally:
        plt.close(fig)
    return out.getvalue()
