"""A series of checkpoints -> TrendReport: how far each tensor drifted from the first, per step."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from bufinspect import _gc
from bufinspect.analysis.diff import diff
from bufinspect.errors import UsageError
from bufinspect.model import Checkpoint, Role, Scope, Status, TrendReport, TrendRow

METRICS = ("max_abs", "rel_l2", "mean_abs", "max_rel")


@_gc.paused()  # (the pass keeps what it builds until the report is done)
def trend(checkpoints: Sequence[Checkpoint], *, metric: str = "max_abs",
          scope: Scope | str = Scope.BUFFERS, progress: Callable[[int], None] | None = None,
          **diff_options: Any) -> TrendReport:
    """Diff every checkpoint against the first and collect one metric per key and step.

    Args:
        checkpoints: two or more loaded checkpoints, in order (e.g. one per epoch);
            `bufinspect.trend` takes paths.
        metric: `max_abs` (default), `rel_l2` (||a-b|| / ||b||: scale-free, but always 1 for a
            buffer that started at zero, such as a fresh running_mean), `mean_abs`, `max_rel`.
        scope: as for `analysis.diff.diff`.
        **diff_options: passed to `analysis.diff.diff` (tolerances, alignment, device...).
    """
    scope = Scope(scope)
    if len(checkpoints) < 2:
        raise UsageError("trend needs at least two checkpoints")
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    first = checkpoints[0]
    series: dict[str, list[float | None]] = {}
    roles: dict[str, Role] = {}
    notes: dict[str, str] = {}
    for i, ck in enumerate(checkpoints[1:], start=1):
        report = diff(first, ck, scope=scope, progress=progress, notes=False, **diff_options)
        for e in report.entries:
            values = series.setdefault(e.key, [0.0] + [None] * (i - 1))
            roles.setdefault(e.key, e.role)
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
    return TrendReport(tuple(ck.path for ck in checkpoints), metric, scope, tuple(rows))
