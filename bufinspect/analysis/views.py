"""Narrower views of finished reports: `diff --filter/--role`, the same selection as `show`.

A view keeps the report's type, tolerances and alignment, so every renderer (and the exit code)
works on it unchanged.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Iterable

from bufinspect.model import Role


def select_diff(report: Any, *, filters: Iterable[str] = (), roles: Iterable[Role] = ()) -> Any:
    """The diff report with only entries whose role is in `roles` and whose key (A's or B's)
    matches one of the `filters` globs; an empty selector keeps everything."""
    filters, roles = list(filters), {Role(r) for r in roles}
    if not filters and not roles:
        return report

    def keep(e: Any) -> bool:
        if roles and e.role not in roles:
            return False
        if filters:
            names = [e.key] + ([e.key_b] if e.key_b else [])
            return any(fnmatch.fnmatchcase(n, g) for n in names for g in filters)
        return True

    return dataclasses.replace(report, entries=tuple(e for e in report.entries if keep(e)))
