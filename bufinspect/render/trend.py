"""The `trend` report as text (a sparkline per tensor) and as a chart (matplotlib)."""

from __future__ import annotations

import math
from typing import Any

from bufinspect.errors import UsageError
from bufinspect.model import TrendReport
from bufinspect.render.common import (clean, fmt_float)


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


def render_trend_table(report: TrendReport, console: Any) -> None:
    """One line per entry: sparkline of its change against the first checkpoint, by total drift."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]trend[/bold] of {len(report.paths)} checkpoints against "
                  f"{escape(clean(report.paths[0]))} ({report.metric})")
    table = Table(show_edge=False, header_style="dim")
    for h in ("key", "trend", "last", "max", "status"):
        table.add_column(h, justify="right" if h in ("last", "max") else "left", no_wrap=True)
    for row in report.rows:
        finite = [v for v in row.values if v is not None]
        table.add_row(escape(clean(row.key)), sparkline(row.values),
                      fmt_float(row.values[-1]), fmt_float(max(finite, default=None)),
                      escape(row.note))
    console.print(table)


def plot(report: TrendReport, image_format: str, *, top: int = 12) -> bytes:
    """A line chart of the `top` most drifting keys as `image_format` (png, svg, pdf) bytes
    (needs matplotlib; the CLI writes them through `formats`)."""
    import io

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'bufinspect[plot]'") from None
    fig, ax = plt.subplots(figsize=(9, 5))
    steps = list(range(len(report.paths)))
    for row in report.rows[:top]:
        ys = [math.nan if v is None or math.isinf(v) else v for v in row.values]
        # a key is literal text: "$\\foo$" would be parsed as mathtext (and fail)
        ax.plot(steps, ys, marker="o", label=row.key.replace("$", r"\$"))
    ax.set_xlabel("checkpoint")
    ax.set_xticks(steps)
    ax.set_ylabel(f"{report.metric} against checkpoint 0")
    ax.set_title(f"bufinspect trend ({report.scope.value})")
    if report.rows:
        ax.legend(fontsize="small", loc="upper left")
    out = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(out, format=image_format)
    except ValueError as exc:  # an extension matplotlib cannot write, text it cannot lay out
        raise UsageError(f"--plot: {str(exc).splitlines()[0][:160]}") from None
    finally:
        plt.close(fig)
    return out.getvalue()
