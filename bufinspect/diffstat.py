"""`diff --stat`: a per-module summary of a DiffReport, like `git diff --stat`.

One row per module (the key up to its last dot): how many of its tensors differ beyond
tolerance out of how many were compared, and its largest change (the entry that moved most, by
relative L2 change, or its metadata change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

_DIFFERENT = ("changed", "added", "removed", "shape", "dtype")


@dataclass(frozen=True)
class ModuleStat:
    module: str  # "" for keys without a dot
    changed: int  # entries that differ beyond tolerance (changed, added, removed, shape, dtype)
    total: int  # entries compared in scope
    largest_key: str | None  # the entry that moved most
    largest: str  # how it moved: `rel_l2 0.3223`, `max_abs 3.000`, `dtype`, `added`...

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "changed": self.changed, "total": self.total,
                "largest_key": self.largest_key, "largest": self.largest}


def _how(e: Any) -> str:
    from bufinspect.layout import fmt_num

    st = e.status.value
    if st in ("added", "removed", "shape", "dtype"):
        return st
    if e.nonfinite:
        return f"{e.nonfinite} NaN/inf differ"
    if e.rel_l2 is not None and e.rel_l2 != 0:
        return f"rel_l2 {fmt_num(e.rel_l2)}"
    return f"max_abs {fmt_num(e.max_abs)}"


def module_stats(entries: Iterable[Any]) -> list[ModuleStat]:
    """Modules in the order their first key appears, each with its changed/total counts."""
    groups: dict[str, list[Any]] = {}
    for e in entries:
        groups.setdefault(e.key.rpartition(".")[0], []).append(e)
    out = []
    for module, group in groups.items():
        moved = [e for e in group if e.status.value in _DIFFERENT]
        top = max(moved, key=lambda e: e.moved, default=None)
        out.append(ModuleStat(module, len(moved), len(group), top.key if top else None,
                              _how(top) if top else ""))
    return out


def bar(changed: int, total: int, width: int = 10) -> str:
    """`███░░░░░░░`: the share of a module's tensors that changed."""
    full = round(width * changed / total) if total else 0
    if changed and not full:
        full = 1
    return "█" * full + "░" * (width - full)
