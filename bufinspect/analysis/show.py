"""Checkpoint -> ShowReport: selection by container, role and key glob, optional statistics
(`scan.tensor_stats`)."""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable

from bufinspect import _gc
from bufinspect.errors import UsageError
from bufinspect.model import Checkpoint, Entry, Role, ShowReport
from bufinspect.parallel import Work
from bufinspect.scan import tensor_stats


def select(checkpoint: Checkpoint, *, containers: Iterable[str] = (), roles: Iterable[Role] = (),
           filters: Iterable[str] = ()) -> list[Entry]:
    """Entries of the chosen containers whose role and key match (all entries by default)."""
    containers, roles, filters = list(containers), set(roles), list(filters)
    known = {c.path for c in checkpoint.containers}
    for c in containers:
        if c not in known:
            shown = ", ".join(repr(k) for k in sorted(known)) or "none"
            raise UsageError(f"no container {c!r} (found: {shown})", checkpoint.path)
    out = []
    for e in checkpoint.entries:
        if containers and e.container not in containers:
            continue
        if roles and e.role not in roles:
            continue
        if filters and not any(fnmatch.fnmatchcase(e.key, g) for g in filters):
            continue
        out.append(e)
    return out


@_gc.paused()  # (the pass keeps what it builds until the report is done)
def show(checkpoint: Checkpoint, *, containers: Iterable[str] = (), roles: Iterable[Role] = (),
         filters: Iterable[str] = (), stats: bool = False,
         progress: Callable[[int], None] | None = None, jobs: int = 1,
         work: Work | None = None) -> ShowReport:
    """Build the `show` report; with `stats`, stream the selected tensors once for statistics
    (on `jobs` workers, or shared by `work`: the report is the same however it is split)."""
    entries = select(checkpoint, containers=containers, roles=roles, filters=filters)
    table = tensor_stats(entries, progress, jobs, work) if stats else None
    return ShowReport(checkpoint, tuple(entries), table)
