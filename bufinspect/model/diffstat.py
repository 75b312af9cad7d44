"""`diff --stat`: a per-module summary of a DiffReport, like `git diff --stat`.

One row per module (the key up to its last dot): how many of its tensors differ beyond
tolerance out of how many were compared, and its largest change (the entry that moved most, by
relative L2 change, or its metadata change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from bufinspect.model.reports import DIFFERENT, DiffEntry, Status


@dataclass(frozen=True)
class ModuleStat:
    module: str  # "" for keys without a dot
    changed: int  # entries that differ beyond tolerance (changed, added, removed, shape, dtype)
    total: int  # entries compared in scope
    largest: DiffEntry | None  # the entry that moved most

    @property
    def largest_change(self) -> tuple[str, float | None]:
        """How the largest change is measured: (`rel_l2`, value), (`max_abs`, value), or the
        status (`dtype`, None) for a metadata change; NaN/inf changes are (`nonfinite`, count)."""
        e = self.largest
        if e is None:
            return "", None
        if e.status in (Status.ADDED, Status.REMOVED, Status.SHAPE) or \
                (e.status is Status.DTYPE and e.max_abs is None):
            return e.status.value, None
        if e.nonfinite:
            return "nonfinite", float(e.nonfinite)
        if e.rel_l2:
            return "rel_l2", e.rel_l2
        return "max_abs", e.max_abs

    def to_dict(self) -> dict[str, Any]:
        metric, value = self.largest_change
        return {"module": self.module, "changed": self.changed, "total": self.total,
                "largest": None if self.largest is None else
                {"key": self.largest.key, "status": self.largest.status.value,
                 "metric": metric, "value": value}}


def module_stats(entries: Iterable[DiffEntry]) -> list[ModuleStat]:
    """Modules in the order their first key appears, each with its changed/total counts."""
    groups: dict[str, list[DiffEntry]] = {}
    for e in entries:
        groups.setdefault(e.key.rpartition(".")[0], []).append(e)
    out = []
    for module, group in groups.items():
        moved = [e for e in group if e.status in DIFFERENT]
        top = max(moved, key=lambda e: e.moved, default=None)
        out.append(ModuleStat(module, len(moved), len(group), top))
    return out
