"""The numeric pass of `check`: NaN/Inf counts, negative running variances and finite min/max,
every floating tensor streamed once, on the CPU (numpy, `jobs` threads) or on a GPU (chunks
through pinned host memory). Both feed `numeric.RangeAccumulator`, so their results are equal.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from bufinspect import dtypes, parallel
from bufinspect.model import Entry, ScanStats
from bufinspect.parallel import Work
from bufinspect.scan.gpu import range_row, torch_dtype


def counts_negatives(e: Entry) -> bool:
    """Negative values are counted for normalization running variances only."""
    return e.name == "running_var"


def scannable(e: Entry) -> bool:
    """True for the entries the numeric scan reads (floating and complex tensors with data)."""
    d = dtypes.DTYPES.get(e.dtype)
    return (d is not None and d.kind in ("float", "complex") and d.numpy is not None
            and e.data is not None and e.numel > 0)


def scan_cpu(entries: Sequence[Entry], progress: Callable[[int], None] | None = None,
             jobs: int = 1) -> dict[int, ScanStats]:
    """NaN/Inf/negative counts and finite min/max per entry (by id), numpy over streamed chunks.

    With `jobs` > 1 the entries are split into balanced runs in file order, one worker each
    (`bufinspect.parallel`); every worker owns its buffers, so memory stays bounded per worker.
    """
    from bufinspect.formats import stream
    from bufinspect.numeric import RangeAccumulator, fused

    raw = fused()  # the fused kernel takes the buffer's bytes as they are: no numpy import

    def run(group: list[Entry]) -> list[tuple[int, ScanStats]]:
        acc: dict[int, RangeAccumulator] = {}
        # read in line, 2 MiB at a time: the reductions find the bytes still in cache
        for e, _, arr in stream.pieces(group, 2 << 20, prefetch=False, raw=raw):
            acc.setdefault(id(e), RangeAccumulator()).add_raw(arr, e.dtype, counts_negatives(e))
            if progress is not None:
                progress(arr.nbytes)
        # positions in the group, not ids: ids do not survive a process pool
        return [(i, acc[id(e)].result()) for i, e in enumerate(group) if id(e) in acc]

    jobs = parallel.useful_jobs(entries, jobs)
    groups = parallel.partition(list(entries), max(1, jobs)) if jobs > 1 else [list(entries)]
    groups = [g for g in groups if g]
    results = parallel.map_groups(groups, run, jobs, threads=True)  # numpy frees the GIL
    return {id(g[i]): st for g, res in zip(groups, results) for i, st in res}


# pieces smaller than this are reduced on the host: a dozen kernel launches cost more than the
# work, and the bytes are already in host memory (results are exact either way)
GPU_MIN_BYTES = 64 << 10


def scan_gpu(entries: Sequence[Entry], device: str = "cuda:0",
             progress: Callable[[int], None] | None = None,
             min_bytes: int | None = None) -> dict[int, ScanStats]:
    """The same scan with torch on `device`: each streamed chunk is copied into one of two pinned
    host buffers, sent with a non-blocking copy and reduced there; results come back once at the
    end. Pieces under `min_bytes` (default `GPU_MIN_BYTES`) are reduced with numpy instead.
    (`device="cpu"` runs the same kernels without pinning: tests use it to compare paths.)
    """
    import torch

    from bufinspect.formats import stream
    from bufinspect.numeric import RangeAccumulator

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    pinned = ([torch.empty(stream.CHUNK_BYTES, dtype=torch.uint8).pin_memory() for _ in range(2)]
              if cuda else [])
    small = GPU_MIN_BYTES if min_bytes is None else min_bytes
    acc: dict[int, RangeAccumulator] = {}
    done: list[Any] = [None, None]
    partial: list[tuple[int, Any]] = []  # (entry id, [nan, inf, neg, min, max] on the device)
    slot = 0
    with torch.no_grad():
        for e, _, arr in stream.pieces(entries):
            if arr.nbytes < small:
                acc.setdefault(id(e), RangeAccumulator()).add_raw(arr, e.dtype,
                                                                  counts_negatives(e))
                if progress is not None:
                    progress(arr.nbytes)
                continue
            raw = torch.from_numpy(arr.view("u1"))
            if not cuda:
                x = raw  # reduced at once, before the buffer is reused
            elif raw.numel() > stream.CHUNK_BYTES:  # a strided tensor's own copy: send as is
                x = raw.to(dev)
            else:
                if done[slot] is not None:
                    done[slot].synchronize()  # the last copy out of this buffer has finished
                host = pinned[slot][: raw.numel()]
                host.copy_(raw)
                x = host.to(dev, non_blocking=True)
                done[slot] = torch.cuda.Event()
                done[slot].record()
                slot = 1 - slot
            partial.append((id(e), range_row(x.view(torch_dtype(e.dtype)), counts_negatives(e))))
            if progress is not None:
                progress(arr.nbytes)
    if partial:
        table = torch.stack([r for _, r in partial]).cpu().tolist()
        for (eid, _), (nan, inf, neg, lo, hi) in zip(partial, table, strict=True):
            acc.setdefault(eid, RangeAccumulator()).merge_row(int(nan), int(inf), int(neg), lo, hi)
    return {k: v.result() for k, v in acc.items()}


def check_scan(entries: Sequence[Entry], device: str = "cpu",
               progress: Callable[[int], None] | None = None, jobs: int = 1,
               work: Work | None = None) -> dict[int, ScanStats]:
    """The numeric pass of `check` on `device` (`scan_gpu` on cuda, else `scan_cpu`), by entry id.

    `work` (default `Work(jobs)`) says which share of the entries this process scans and on how
    many workers (a rank scans on its own GPU, `work.device`); every process gets every result.
    """
    work = work or Work(jobs)
    entries = list(entries)
    mine = work.share(entries)
    local = [entries[i] for i in mine]
    where = work.device(device)
    got: dict[int, ScanStats] = {}
    if local and where.startswith("cuda"):
        got = scan_gpu(local, where, work.progress(progress))
    elif local:
        got = scan_cpu(local, work.progress(progress), work.jobs)
    found = work.gather(mine, [got.get(id(e)) for e in local], len(entries))
    return {id(e): st for e, st in zip(entries, found) if st is not None}


