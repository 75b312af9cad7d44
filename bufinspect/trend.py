"""A series of checkpoints -> TrendReport: how far each tensor drifted from the first, per step."""

from __future__ import annotations

import io
import math
import os
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


def plot(report: TrendReport, out: str, *, top: int = 12) -> None:
    """Write a line chart of the `top` most drifting keys to `out` (needs matplotlib)."""
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
    ax.set_title(f"bufinspect trend ({report.scope})")
    if report.rows:
        ax.legend(fontsize="small", loc="upper left")
    from bufinspect.formats import write

    fmt = os.path.splitext(out)[1][1:].lower() or "png"
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format=fmt)
    except ValueError as exc:  # an unknown extension, or text matplotlib cannot lay out
        raise UsageError(f"cannot draw the plot ({str(exc).splitlines()[0][:120]})",
                         out) from None
    finally:
        plt.close(fig)
    write.write_atomic(out, buf.getvalue(), inputs=report.paths)
