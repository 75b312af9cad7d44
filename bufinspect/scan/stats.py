"""The statistics pass of `show --stats`: every selected tensor streamed once, in file order.

Every piece goes to `numeric.StatsAccumulator` (the fused kernel when it is built); without the
kernel, whole small float tensors (BatchNorm buffers, biases) are reduced a batch at a time
(`_SmallFloats`).
"""

from __future__ import annotations

from functools import partial
from typing import Iterable

from bufinspect import dtypes, numeric, parallel
from bufinspect.model import Entry, TensorStats
from bufinspect.numeric import StatsAccumulator, as_float
from bufinspect.parallel import Work

STATS_CHUNK = 2 << 20  # stream chunk of the stats pass (measured best of 0.5-4 MiB)


def stats_kind(e: Entry) -> str | None:
    d = dtypes.DTYPES.get(e.dtype)
    if d is None or d.kind in ("quantized", "packed") or e.dtype == "complex32":
        return None
    return d.kind


def tensor_stats(entries: Iterable[Entry], progress=None, jobs: int = 1,
                 work: Work | None = None) -> dict[tuple[str, str], TensorStats]:
    """Stream every entry once, in file order, and return its statistics.

    Entries whose data cannot be read (meta tensors, quantized, packed dtypes) get no stats.
    `progress(nbytes)` is called after each piece, for a progress bar. `work` (default
    `Work(jobs)`) says which share of the entries this process streams and on how many workers
    (balanced groups, `bufinspect.parallel`); the statistics are the same however it is split.
    """
    entries = [e for e in entries if stats_kind(e) is not None]
    work = work or Work(jobs)
    mine = work.share(entries)
    local = [entries[i] for i in mine]
    table = _stats_local(local, work.progress(progress), work.jobs)
    found = work.gather(mine, [table.get((e.container, e.key)) for e in local], len(entries))
    return {(e.container, e.key): st for e, st in zip(entries, found) if st is not None}


def _stats_local(entries: list[Entry], progress, jobs: int) -> dict[tuple[str, str], TensorStats]:
    if parallel.useful_jobs(entries, jobs) <= 1 or len(entries) <= 1:
        return _stats_serial(entries, progress)
    if not parallel.uses_threads():
        progress = None  # a callback cannot cross into worker processes
    merged: dict[tuple[str, str], TensorStats] = {}
    for part in parallel.map_entries(entries, partial(_stats_serial, progress=progress), jobs):
        merged.update(part)
    return merged


def _stats_serial(entries: list[Entry], progress=None) -> dict[tuple[str, str], TensorStats]:
    """One worker's pass: its own stream buffers, its own accumulators."""
    from bufinspect.formats import stream

    acc: dict[int, StatsAccumulator] = {}
    small = _SmallFloats(acc)
    batch = not numeric.fused()  # the fused kernel takes a whole small tensor in ~1 us as is
    # read in line, 2 MiB at a time: the chunk is still in cache when it is reduced; the fused
    # kernel takes the buffer's bytes as they are (numpy is then never imported)
    for e, first, arr in stream.pieces(entries, STATS_CHUNK, prefetch=False, raw=not batch):
        if (batch and arr.size == e.numel and arr.size <= _SMALL and not first
                and stats_kind(e) == "float"):
            small.add(e, arr)  # a whole small float tensor: batched with its neighbours
        else:
            a = acc.get(id(e))
            if a is None:
                a = acc[id(e)] = StatsAccumulator(stats_kind(e))
            a.add_raw(arr, e.dtype)
        if progress is not None:
            progress(arr.nbytes)
    small.flush()
    out = {}
    for e in entries:
        a = acc.get(id(e))
        if a is None and e.numel == 0:
            a = StatsAccumulator(stats_kind(e))
        if a is not None:
            out[(e.container, e.key)] = a.result()
    return out


_SMALL = 1 << 14  # whole float tensors up to this many elements are reduced in batches
_BATCH = 1 << 18  # elements per batch


class _SmallFloats:
    """Statistics of many small float tensors (BatchNorm buffers, biases) a batch at a time:
    one `reduceat` per statistic over their concatenated float64 values instead of a dozen
    numpy calls per tensor (about 100 us each, which dominated checkpoints of 50,000 tensors).
    Each tensor's numbers depend only on its own elements, so batching never changes them."""

    def __init__(self, acc: dict[int, StatsAccumulator]) -> None:
        self.acc = acc
        self.entries: list[Entry] = []
        self.values: list = []  # numpy arrays
        self.size = 0

    def add(self, e: Entry, arr) -> None:
        import numpy as np

        self.entries.append(e)
        self.values.append(as_float(arr, e.dtype).astype(np.float64))  # a copy: views expire
        self.size += arr.size
        if self.size >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        import numpy as np

        x = np.concatenate(self.values)
        counts = np.array([v.size for v in self.values])
        starts = np.cumsum(counts) - counts
        lo, hi = np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts)
        zeros = np.add.reduceat(x == 0, starts, dtype=np.int64)
        with np.errstate(invalid="ignore", over="ignore"):
            means = np.add.reduceat(x, starts) / counts
            d = x - np.repeat(means, counts)
            m2 = np.add.reduceat(d * d, starts)
        finite = np.isfinite(lo) & np.isfinite(hi)  # NaN propagates into min and max
        for k, e in enumerate(self.entries):
            a = self.acc[id(e)] = StatsAccumulator("float")
            if finite[k]:
                a.zeros += int(zeros[k])
                a._merge(int(counts[k]), float(means[k]), float(m2[k]), float(lo[k]),
                         float(hi[k]))
            else:  # NaN or Inf: the general path counts and skips them
                a.add(self.values[k])
        self.entries, self.values, self.size = [], [], 0


