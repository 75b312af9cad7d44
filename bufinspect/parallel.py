"""A worker pool over entries (balanced groups in file order, results in a fixed order), and
`Work`, which says how a data pass is shared between processes and threads.

`map_entries(entries, fn, jobs)` cuts the entries (sorted by where their bytes are) into `jobs`
contiguous groups of about equal bytes and runs `fn(group)` for each on a pool. Each call of
`fn` streams its own group through its own `stream.pieces` buffers, so memory stays bounded per
worker; results come back in group order, so output never depends on scheduling.

Threads are the default: numpy releases the GIL in the reductions that dominate a data pass.
`BUFINSPECT_POOL=process` switches to processes (then `fn` and its results must pickle).
`partition` is also what `bufinspect.distributed` uses to give each rank its share.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

from bufinspect.model import Entry

T = TypeVar("T")


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _where(e: Entry) -> tuple[str, int]:
    if e.data is None:
        return ("", 0)
    return (e.data.file, e.data.offset)


def partition(entries: Sequence[Entry], groups: int) -> list[list[Entry]]:
    """`groups` contiguous runs of the entries in file order, of about equal bytes each.

    Always returns exactly `groups` lists (some may be empty), so rank i can take list i.
    """
    groups = max(int(groups), 1)
    ordered = sorted(entries, key=_where)
    total = sum(e.nbytes for e in ordered)
    out: list[list[Entry]] = [[] for _ in range(groups)]
    done = 0
    for e in ordered:
        # the group whose byte range holds this entry's midpoint
        i = min(int((done + e.nbytes / 2) * groups / total), groups - 1) if total else 0
        out[i].append(e)
        done += e.nbytes
    return out


# a streamed piece costs ~15 us of Python with the GIL held, whatever its size: more workers only
# pay where bytes, not pieces, dominate (100,000 tensors of 640 bytes: 3.2 s on 2 threads, 2.8 s
# on one)
MIN_BYTES_PER_ENTRY = 64 << 10


def useful_jobs(entries: Sequence[Entry], jobs: int) -> int:
    """`jobs`, or 1 when the entries are too small on average for workers to pay off."""
    if jobs <= 1 or not entries:
        return max(int(jobs), 1)
    return jobs if sum(e.nbytes for e in entries) >= MIN_BYTES_PER_ENTRY * len(entries) else 1


def uses_threads() -> bool:
    """True unless BUFINSPECT_POOL=process asks for worker processes."""
    return os.environ.get("BUFINSPECT_POOL", "thread") != "process"


def _executor(jobs: int, threads: bool = False):
    # imported here, and processes only when asked for: concurrent.futures.process (with
    # multiprocessing and socket) costs ~20 ms, and listing never needs a pool
    if not (threads or uses_threads()):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))
    from concurrent.futures.thread import ThreadPoolExecutor

    return ThreadPoolExecutor(jobs, thread_name_prefix="bufinspect")


def map_entries(entries: Sequence[Entry], fn: Callable[[list[Entry]], T], jobs: int) -> list[T]:
    """Run `fn` over balanced groups of `entries` on `jobs` workers; results in group order.

    Args:
        entries: the entries to work on (any order; groups follow file order).
        fn: called once per non-empty group; must only touch the entries it is given.
        jobs: number of workers; 1 runs `fn(entries)` in this thread.

    Returns:
        One result per non-empty group, in file order of the groups.
    """
    entries = list(entries)
    jobs = max(1, min(int(jobs), len(entries)))
    if jobs == 1:
        return [fn(entries)] if entries else []
    return map_groups([g for g in partition(entries, jobs) if g], fn, jobs)


def map_groups(groups: Sequence[list[Entry]], fn: Callable[[list[Entry]], T], jobs: int,
               threads: bool = False) -> list[T]:
    """Run `fn` on each group on up to `jobs` workers (`threads`: never processes, so `fn` may be
    a closure); results in group order."""
    if jobs <= 1 or len(groups) <= 1:
        return [fn(g) for g in groups]
    with _executor(min(jobs, len(groups)), threads) as pool:
        return list(pool.map(fn, groups))


class Work:
    """How one data pass is shared out: the seam between `--jobs` and torch.distributed ranks.

    A pass asks `share(items)` for the indices this process handles, streams them on `jobs`
    local workers, and hands its typed results (one per index, in order) to `gather`, which
    returns every item's result in item order. This local default takes everything;
    `bufinspect.distributed.RankWork` takes a contiguous run of about 1/N of the bytes and
    all-gathers the results, so every process builds the same report.
    """

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(int(jobs), 1)

    def share(self, items: Sequence[Entry]) -> list[int]:
        """Indices of `items` this process works on, ascending."""
        return list(range(len(items)))

    def gather(self, mine: list[int], results: list[T], total: int) -> list[T]:
        """Every item's result, in item order, given this process's `results` for `mine`."""
        return list(results)

    def device(self, device: str) -> str:
        """The device this process scans on (a rank uses its own GPU)."""
        return device

    def progress(self, callback: Callable[[int], None] | None) -> Callable[[int], None] | None:
        """The progress callback to use (none across ranks: bars would garble the terminal)."""
        return callback
