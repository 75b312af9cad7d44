"""Narrower views of a diff: `diff --filter/--role`, the same selection as `show`.

`selector` builds the predicate `analysis.diff.diff` takes (`keep`), so entries outside the
selection are never read; `select_diff` applies the same predicate to a finished report (a
report re-judged from saved metrics). A view keeps the report's type, tolerances and alignment,
so every renderer (and the exit code) works on it unchanged.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Iterable

from bufinspect.model import Role


def selector(*, filters: Iterable[str] = (), roles: Iterable[Role | str] = ()
             ) -> Callable[[str, str | None, Role], bool] | None:
    """`keep(key, key_b, role)`: the role is one of `roles` and the key (A's or B's) matches one
    of the `filters` globs; None when nothing is selected (keep everything)."""
    globs, wanted = list(filters), {Role(r) for r in roles}
    if not globs and not wanted:
        return None

    def keep(key: str, key_b: str | None, role: Role) -> bool:
        if wanted and role not in wanted:
            return False
        names = (key, key_b) if key_b else (key,)
        return not globs or any(fnmatch.fnmatchcase(n, g) for n in names for g in globs)

    return keep


def select_diff(report: Any, *, filters: Iterable[str] = (), roles: Iterable[Role] = ()) -> Any:
    """The diff report with only the entries `selector(filters, roles)` keeps."""
    keep = selector(filters=filters, roles=roles)
    if keep is None:
        return report
    return dataclasses.replace(report, entries=tuple(
        e for e in report.entries if keep(e.key, e.key_b, e.role)))
