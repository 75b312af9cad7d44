"""A series of checkpoints -> TrendReport: how far each tensor drifted from the first, per step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from bufinspect.errors import UsageError
from bufinspect.model import SCHEMA

METRICS = ("max_abs", "rel_l2", "mean_abs", "max_rel")


@dataclass(frozen=True)
class TrendRow:
    """One key: its metric against the first checkpoint at every step (None: not comparable)."""

    key: str
    role: str
    values: tuple[float | None, ...]
    note: str = ""

    @property
    def total(self) -> float:
        """Total drift: the sum of the finite values (inf when a NaN/inf appeared)."""
        return sum(v for v in self.values if v is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "role": self.role, "values": list(self.values),
                "total": self.total, "note": self.note}


@dataclass(frozen=True)
class TrendReport:
    """Rows sorted by total drift, largest first."""

    paths: tuple[str, ...]
    metric: str
    scope: str
    rows: tuple[TrendRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "command": "trend", "paths": list(self.paths),
                "metric": self.metric, "scope": self.scope,
                "rows": [r.to_dict() for r in self.rows]}


def trend(paths: Sequence[str], *, metric: str = "max_abs", scope: str = "buffers",
          progress: Callable[[int], None] | None = None, **diff_options) -> TrendReport:
    """Diff every checkpoint against the first and collect one metric per key and step.

    Args:
        paths: two or more checkpoints, in order (e.g. one per epoch).
        metric: `max_abs` (default), `rel_l2` (||a-b|| / ||b||: scale-free, but always 1 for a
            buffer that started at zero, such as a fresh running_mean), `mean_abs`, `max_rel`.
        scope: as for `bufinspect.diff.diff`.
        **diff_options: passed to `bufinspect.diff.diff` (tolerances, alignment, device...).
    """
    from bufinspect import load
    from bufinspect.diff import Status, diff

    if len(paths) < 2:
        raise UsageError("trend needs at least two checkpoints")
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    first = load(paths[0])
    series: dict[str, list[float | None]] = {}
    roles: dict[str, str] = {}
    notes: dict[str, str] = {}
    for i, path in enumerate(paths[1:], start=1):
        report = diff(first, load(path), scope=scope, progress=progress, **diff_options)
        for e in report.entries:
            values = series.setdefault(e.key, [0.0] + [None] * (i - 1))
            roles.setdefault(e.key, e.role.value)
            if e.status in (Status.EQUAL, Status.CLOSE, Status.CHANGED) and e.note is None:
                v = getattr(e, metric)
                values.append(math.inf if e.nonfinite else v)
            else:
                values.append(None)
                notes.setdefault(e.key, f"{e.status.value} at step {i}")
        for key, values in series.items():
            if len(values) < i + 1:
                values.append(None)
    rows = [TrendRow(k, roles[k], tuple(v), notes.get(k, "")) for k, v in series.items()]
    rows.sort(key=lambda r: -r.total)
    return TrendReport(tuple(str(p) for p in paths), metric, scope, tuple(rows))


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


def plot(report: TrendReport, out: str, *, top: int | None = 12,
         scale: str = "normalized") -> int:
    """Write a line chart of the `top` most drifting keys to `out` (needs matplotlib).

    The x axis names the checkpoint files; `scale` is `normalized` (each key over its own
    peak), `log` (symmetric log, zeros allowed) or `linear`. Returns the number of lines drawn.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'bufinspect[plot]'") from None
    import os

    series = plot_series(report, top=top, scale=scale)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    steps = list(range(len(report.paths)))
    for i, (key, ys) in enumerate(series):
        ax.plot(steps, ys, label=key, markersize=4, **line_style(i))
    ax.set_xticks(steps)
    names = [os.path.basename(os.path.normpath(p)) or p for p in report.paths]
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
    ax.set_xlabel("checkpoint")
    what = f"{report.metric} against {names[0]}"
    if scale == "log":
        ax.set_yscale("symlog", linthresh=1e-8)
    ax.set_ylabel(what + (" / its peak" if scale == "normalized" else ""))
    shown = f"top {len(series)} of {len(report.rows)}" if len(series) < len(report.rows) \
        else f"{len(series)} keys"
    ax.set_title(f"bufinspect trend ({report.scope}, {shown}, {scale})")
    if series:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncol=1 if len(series) <= 25 else 2)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return len(series)
