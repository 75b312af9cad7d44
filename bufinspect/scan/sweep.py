"""The paired sweep of `diff`: both sides streamed in step, memcmp first, numbers only where
bytes differ.

Steps of about 4 MiB of each side go to `jobs` threads from a shared queue; each differing step
gets a `numeric.DiffAccumulator` of its own, merged in element order afterwards, so the result
does not depend on the number of workers or on a rank's share. Identical data never imports
numpy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from bufinspect import dtypes
from bufinspect.errors import UsageError
from bufinspect.model import Entry, Status
from bufinspect.parallel import Work
from bufinspect.scan.device import DEVICES, cuda_available, gpu_may_exist, resolve_device
from bufinspect.scan.gpu import diff_kernel

if TYPE_CHECKING:
    import numpy as np

_AUTO_CUDA_BYTES = 64 << 20  # --device auto moves to the GPU after this many differing bytes


class Engine:
    """Where the diff kernel runs: numpy on the CPU, or its torch twin on a GPU (`auto` moves to
    the GPU once 64 MiB of differing data has been seen and `device.gpu_may_exist`)."""

    def __init__(self, device: str):
        if device not in DEVICES:
            raise UsageError(f"--device {device!r}: expected auto, cpu or cuda")
        self.want = device
        self.cuda = None
        self.seen = 0
        if device == "cuda":
            resolve_device("cuda")  # a usage error without a usable GPU
            self.cuda = diff_kernel()

    @property
    def name(self) -> str:
        return "cuda:0" if self.cuda is not None else "cpu"

    def workers(self, jobs: int) -> int:
        """CPU threads for the sweep: one when a GPU does (or may take over) the numeric work."""
        if self.cuda is not None or (self.want == "auto" and gpu_may_exist()):
            return 1
        return max(int(jobs), 1)

    def add(self, acc, a: np.ndarray, b: np.ndarray, dtype: str) -> None:
        if (self.want == "auto" and self.cuda is None and self.seen < _AUTO_CUDA_BYTES
                <= self.seen + a.nbytes and gpu_may_exist()):
            self.cuda = diff_kernel() if cuda_available() else None
            self.want = "cpu" if self.cuda is None else "cuda"
        self.seen += a.nbytes
        kind = dtypes.DTYPES[dtype].kind
        if self.cuda is not None and acc.envelope is None and kind != "complex":
            self.cuda(acc, a, b, dtype)
        else:
            acc.add(a, b, dtype)


def _bb(entries: list[Entry]) -> dict[int, float]:
    """Sum of squares of whole entries (second pass, for entries that are partly equal)."""
    import numpy as np

    from bufinspect.formats import stream
    from bufinspect.numeric import widen64

    out: dict[int, float] = {}
    for e, _, arr in stream.pieces(entries):
        x = widen64(arr, e.dtype)
        sq = float(np.vdot(x, x).real) if x.dtype.kind == "c" else float(np.einsum("i,i->", x, x))
        out[id(e)] = out.get(id(e), 0.0) + sq
    return out


def compare_pairs(pairs: list[tuple[Entry, Entry]], tols: list[tuple[float, float]],
                  engine: Engine, envelope: bool, progress: Callable[[int], None] | None = None,
                  work: Work | None = None) -> list[dict[str, Any]]:
    """Stream the pairs in step; return per pair the metric fields of its DiffEntry.

    `work` (default: one worker) says which share of the pairs this process compares (by A's
    bytes) and on how many threads; every process gets every pair's fields, in pair order.
    """
    work = work or Work(1)
    mine = work.share([a for a, _ in pairs])
    fields = (_compare([pairs[i] for i in mine], [tols[i] for i in mine], engine, envelope,
                       work.progress(progress), work.jobs) if mine else [])
    return work.gather(mine, fields, len(pairs))


def _compare(pairs: list[tuple[Entry, Entry]], tols: list[tuple[float, float]], engine: Engine,
             envelope: bool, progress: Callable[[int], None] | None, jobs: int = 1
             ) -> list[dict[str, Any]]:
    """This process's share of `compare_pairs`.

    With `jobs` > 1 the sweep's steps (about 4 MiB of each side) go to `jobs` threads, each
    taking the next step in file order when it is free, with its own buffers (the reads, memcmp
    and numpy kernels release the GIL): a worker that stops to import numpy or to measure a
    differing step does not hold up the others. Every differing step gets an accumulator of its
    own; they are merged in element order afterwards, so the report is the same for any number
    of workers (and for any share of the pairs, which is what a torch.distributed rank
    computes). Identical data never imports numpy.
    """
    import threading

    from bufinspect import parallel
    from bufinspect.formats import stream

    readable = [i for i, (a, b) in enumerate(pairs)
                if stream.readable(a) and stream.readable(b)]
    sub = [pairs[i] for i in readable]
    counters = [i for i in readable if pairs[i][0].numel == 1
                and dtypes.DTYPES[pairs[i][0].dtype].kind in ("int", "uint", "bool")]
    values = iter(stream.read_scalars(e for i in counters for e in pairs[i]))
    scalars = {i: (next(values), next(values)) for i in counters}
    queue = iter(stream.pair_batches(sub))
    lock = threading.Lock()

    def take():
        while True:
            with lock:
                batch = next(queue, None)
            if batch is None:
                return
            yield batch

    def sweep(rest: bool) -> list[tuple[int, int, int, Any]]:
        """(pair, first element, elements, accumulator of a differing piece or None when
        identical) for the steps this worker took."""
        found = []
        for chunk in stream.paired_chunks(sub, skip_equal=True, batches=[] if rest else take(),
                                          rest=rest):
            for j, first, count, a, b in chunk.items:
                ea = sub[j][0]
                if progress is not None:
                    progress(2 * count * dtypes.itemsize(ea.dtype))
                if a is None or stream.same_bytes(a, b):
                    found.append((j, first, count, None))
                    continue
                from bufinspect.numeric import DiffAccumulator

                part = DiffAccumulator(*tols[readable[j]], envelope)
                engine.add(part, a, b, ea.dtype)
                found.append((j, first, count, part))
        return found

    jobs = engine.workers(jobs)
    tasks = [False] * jobs + [True]  # the last task: pairs read whole (strided views)
    equal: dict[int, int] = {}
    parts: dict[int, list[tuple[int, Any]]] = {}
    for found in parallel.map_groups(tasks, sweep, jobs, threads=True):
        for j, first, count, part in found:
            i = readable[j]
            if part is None:
                equal[i] = equal.get(i, 0) + count
            else:
                parts.setdefault(i, []).append((first, part))
    accs = {}
    if parts:  # numpy is loaded by now
        from bufinspect.numeric import DiffAccumulator

        for i, found in parts.items():
            acc = accs[i] = DiffAccumulator(*tols[i], envelope)
            acc.add_equal(equal.get(i, 0))
            for _, part in sorted(found, key=lambda f: f[0]):
                acc.merge(part)
    # entries with both equal and differing chunks: norms of the equal part, by a second pass
    partly = [pairs[i][1] for i, acc in accs.items() if acc.equal_elems]
    if partly:
        whole = _bb(partly)
        for i, acc in accs.items():
            if acc.equal_elems:
                eq = max(whole[id(pairs[i][1])] - acc.bb, 0.0)
                acc.aa += eq
                acc.ab += eq
                acc.bb += eq
    out = []
    readable_set = set(readable)
    for i, (ea, eb) in enumerate(pairs):
        if i not in readable_set:
            if ea.numel == 0:
                out.append({"status": Status.EQUAL, "numel": 0, "max_abs": 0.0, "max_rel": 0.0,
                            "mean_abs": 0.0, "mismatched": 0, "nonfinite": 0, "rel_l2": 0.0,
                            "cosine": None})
            else:
                out.append({"status": Status.CHANGED,
                            "note": "data not readable (meta tensor or packed/quantized dtype); "
                                    "not compared"})
            continue
        fields = metrics(accs[i], ea.numel) if i in accs else _identical(ea.numel, envelope)
        if i in scalars:
            fields["old"], fields["new"] = scalars[i]
        out.append(fields)
    return out


def _identical(numel: int, envelope: bool) -> dict[str, Any]:
    """What `metrics` gives for byte-identical data (without making an accumulator)."""
    return {"status": Status.EQUAL, "numel": numel, "max_abs": 0.0, "max_rel": 0.0,
            "mean_abs": 0.0, "mismatched": 0, "nonfinite": 0, "rel_l2": 0.0, "cosine": 1.0,
            "envelope": () if envelope else None}


def metrics(acc, numel: int) -> dict[str, Any]:
    """DiffEntry fields from an accumulator (status decided from the mismatches)."""
    if acc.diff_elems == 0:
        return _identical(numel, acc.envelope is not None)
    if acc.max_abs == 0 and acc.nonfinite == 0:
        status = Status.EQUAL
    else:
        status = Status.CLOSE if acc.mismatched == 0 else Status.CHANGED
    bb = acc.bb
    rel_l2 = math.sqrt(acc.sum_d2) / math.sqrt(bb) if bb else (0.0 if acc.sum_d2 == 0
                                                               else math.inf)
    cosine = acc.ab / math.sqrt(acc.aa * acc.bb) if acc.aa > 0 and acc.bb > 0 else None
    if cosine is not None:
        cosine = max(-1.0, min(1.0, cosine))
    env = None
    if acc.envelope is not None:
        env = tuple(tuple(p) for p in acc.envelope_points())
    return {"status": status, "numel": numel, "max_abs": acc.max_abs, "max_rel": acc.max_rel,
            "mean_abs": acc.sum_abs / numel if numel else 0.0, "mismatched": acc.mismatched,
            "nonfinite": acc.nonfinite, "rel_l2": rel_l2, "cosine": cosine, "envelope": env}


