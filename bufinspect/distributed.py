"""Data passes across processes and machines with torch.distributed (what users already run).

Under `torchrun` (or with `--distributed` and the usual RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
environment), every rank reads the checkpoints' metadata, takes its share of the tensors
(`parallel.partition`: contiguous runs of about equal bytes in file order), streams them with
its own local workers, and sends its results as JSON bytes over a gloo process group (only a
few KiB of results travel, so gloo serves whether or not the ranks have GPUs; a GPU scan runs on
the rank's own `cuda:LOCAL_RANK`). The report is identical to the single-process one.

- `show --stats`: rank 0 gathers and builds the report; other ranks get None.
- `check` and `diff`: every rank receives every result (all-gather) and builds the same report
  (a script calling `distributed.diff` can act on the verdict on every rank); the CLI prints it
  on rank 0 only (`prints()`).

torch is imported only here, and only on this path. Nothing is pickled between ranks: results
are JSON (floats as their shortest repr, which round-trips exactly; NaN/Infinity as JSON's
extension tokens, which Python's json reads back), enums and tuples tagged.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import timedelta
from enum import Enum
from typing import Any, Callable, Iterable, Iterator, Sequence

from bufinspect.errors import UsageError
from bufinspect.model import Checkpoint, Entry, Role, ShowReport, TensorStats

_TIMEOUT = timedelta(minutes=10)


def launched() -> bool:
    """True when this process was started by torchrun with more than one rank."""
    return "TORCHELASTIC_RUN_ID" in os.environ and _world_from_env() > 1


def _world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def wanted(flag: bool | None) -> bool:
    """Whether to run distributed: the --distributed flag if given, else detect torchrun."""
    if flag is None:
        return launched()
    if flag and not ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        raise UsageError("--distributed needs RANK and WORLD_SIZE (launch with torchrun)",
                         "environment")
    return flag


def prints() -> bool:
    """True on the rank that prints the report (rank 0, or any process outside torchrun).

    The CLI's other ranks print nothing and exit 0, whatever the verdict: rank 0's exit code is
    the command's. Were they to exit 1 too, the first to finish would make torchrun stop the
    others, rank 0 possibly before its report is written.
    """
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


@contextmanager
def _group() -> Iterator[Any]:
    """torch.distributed with a process group: the one already initialized, or a gloo one from
    the environment (destroyed on exit)."""
    from bufinspect import _torch

    _torch.require("sharing the work across torch.distributed ranks (torchrun, --distributed)")
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", timeout=_TIMEOUT)
    try:
        yield dist
    finally:
        if own:
            dist.destroy_process_group()


def _gather_bytes(blob: bytes, dist: Any, everywhere: bool = False) -> list[bytes] | None:
    """Every rank's bytes, in rank order, on rank 0 (None elsewhere) or, with `everywhere`, on
    every rank; padded to one length for gloo's gather."""
    import torch

    size = torch.tensor([len(blob)], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8)
    if blob:
        mine[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    if everywhere:
        bufs = [torch.zeros(longest, dtype=torch.uint8) for _ in sizes]
        dist.all_gather(bufs, mine)
        return [b[: int(s.item())].numpy().tobytes() for b, s in zip(bufs, sizes)]
    if dist.get_rank() != 0:
        dist.gather(mine, dst=0)
        return None
    bufs = [torch.zeros(longest, dtype=torch.uint8) for _ in sizes]
    dist.gather(mine, gather_list=bufs, dst=0)
    return [b[: int(s.item())].numpy().tobytes() for b, s in zip(bufs, sizes)]


def tensor_stats(entries: Iterable[Entry], jobs: int = 1
                 ) -> dict[tuple[str, str], TensorStats] | None:
    """Statistics of `entries` computed across all ranks; the full table on rank 0, else None.

    Uses the process group that is already initialized, or creates (and destroys) a gloo one
    from the environment.
    """
    from bufinspect import numeric, parallel

    entries = [e for e in entries if numeric.stats_kind(e) is not None]
    with _group() as dist:
        rank, world = dist.get_rank(), dist.get_world_size()
        share = parallel.partition(entries, world)[rank]
        mine = numeric.tensor_stats(share, jobs=jobs)
        rows = [[c, k, [st.min, st.max, st.mean, st.std, st.nan, st.inf, st.zeros]]
                for (c, k), st in mine.items()]
        gathered = _gather_bytes(json.dumps(rows).encode(), dist)
    if gathered is None:
        return None
    merged = {}
    for blob in gathered:
        for c, k, vals in json.loads(blob):
            merged[(c, k)] = TensorStats(*vals)
    return {(e.container, e.key): merged[(e.container, e.key)] for e in entries
            if (e.container, e.key) in merged}


def show(checkpoint: Checkpoint, *, containers: Iterable[str] = (), roles: Iterable[Role] = (),
         filters: Iterable[str] = (), jobs: int = 1) -> ShowReport | None:
    """`listing.show(..., stats=True)` across ranks: the report on rank 0, None elsewhere."""
    from bufinspect import listing

    entries = listing.select(checkpoint, containers=containers, roles=roles, filters=filters)
    table = tensor_stats(entries, jobs)
    return None if table is None else ShowReport(checkpoint, tuple(entries), table)


def default_jobs() -> int:
    """Workers per rank when --jobs is not given: this node's cores shared by its ranks."""
    from bufinspect import parallel

    try:
        ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        ranks = 1
    return max(parallel.default_jobs() // ranks, 1)


# ---- results as JSON: exact floats, tagged enums and tuples --------------------------------

def _enums() -> dict[str, type[Enum]]:
    from bufinspect.diff import Status

    return {"Status": Status}


def _tag(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return {"$enum": type(obj).__name__, "value": obj.value}
    if isinstance(obj, tuple):
        return {"$tuple": [_tag(v) for v in obj]}
    if isinstance(obj, list):
        return [_tag(v) for v in obj]
    if isinstance(obj, dict):
        if any(not isinstance(k, str) or k.startswith("$") for k in obj):
            raise TypeError(f"cannot send a dict with keys {sorted(map(str, obj))[:5]}")
        return {k: _tag(v) for k, v in obj.items()}
    if hasattr(obj, "dtype") and hasattr(obj, "item"):  # a numpy scalar
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot send {type(obj).__name__} between ranks")


def _untag(d: dict[str, Any]) -> Any:
    if "$tuple" in d:
        return tuple(d["$tuple"])
    if "$enum" in d:
        return _enums()[d["$enum"]](d["value"])
    return d


def dumps(obj: Any) -> bytes:
    """`obj` (dicts, lists, tuples, str enums, numbers, None) as JSON bytes that `loads` returns
    exactly: floats keep every bit (NaN and infinities included), tuples stay tuples."""
    return json.dumps(_tag(obj), allow_nan=True, separators=(",", ":")).encode()


def loads(blob: bytes) -> Any:
    """The inverse of `dumps`."""
    return json.loads(blob, object_hook=_untag)


# ---- check and diff ------------------------------------------------------------------------

def _share(items: Sequence[Entry], dist: Any) -> list[int]:
    """Indices of this rank's share of `items` (balanced by bytes, in file order), ascending."""
    from bufinspect import parallel

    where = {id(e): i for i, e in enumerate(items)}
    share = parallel.partition(list(items), dist.get_world_size())[dist.get_rank()]
    return sorted(where[id(e)] for e in share)


def _local_device(device: str) -> str:
    """This rank's GPU (`cuda:LOCAL_RANK`, modulo the GPUs it sees) for a CUDA scan."""
    if not device.startswith("cuda"):
        return device
    from bufinspect.check import cuda_device_count

    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return f"cuda:{local % max(cuda_device_count(), 1)}"


def _shared_scan(entries: Sequence[Entry], device: str, progress: Any = None, jobs: int = 1
                 ) -> dict[int, Any]:
    """`check.scan` across ranks: each scans its share; every rank gets every entry's result."""
    from bufinspect import check as checking

    entries = list(entries)
    with _group() as dist:
        mine = _share(entries, dist)
        got = checking.scan([entries[i] for i in mine], _local_device(device), None, jobs)
        rows = [[i, [s.nan, s.inf, s.negative, s.min, s.max]] for i in mine
                for s in [got.get(id(entries[i]))] if s is not None]
        blobs = _gather_bytes(dumps(rows), dist, everywhere=True)
    out = {}
    for blob in blobs:
        for i, vals in loads(blob):
            out[id(entries[i])] = checking.ScanStats(*vals)
    return {id(e): out[id(e)] for e in entries if id(e) in out}


def check(paths: Sequence[str], **kwargs: Any) -> Any:
    """`check.check` with its numeric scan shared across ranks; the same report on every rank."""
    from bufinspect import check as checking

    kwargs["progress"] = None  # one bar per rank would garble the terminal
    return checking.check(paths, scanner=_shared_scan, **kwargs)


def _shared_compare(pairs: list[tuple[Entry, Entry]], tols: list[tuple[float, float]],
                    engine: Any, envelope: bool, progress: Callable[[int], None] | None = None,
                    jobs: int = 1) -> list[dict[str, Any]]:
    """`diff._compare` across ranks: each compares its share of the pairs (by A's bytes); every
    rank gets every pair's fields, in pair order."""
    from bufinspect import diff as diff_mod

    with _group() as dist:
        mine = _share([a for a, _ in pairs], dist)
        fields = (diff_mod._compare([pairs[i] for i in mine], [tols[i] for i in mine], engine,
                                    envelope, None, jobs) if mine else [])
        blobs = _gather_bytes(dumps([[i, f] for i, f in zip(mine, fields)]), dist,
                              everywhere=True)
    out: list[dict[str, Any] | None] = [None] * len(pairs)
    for blob in blobs:
        for i, f in loads(blob):
            out[i] = f
    missing = [i for i, f in enumerate(out) if f is None]
    if missing:
        raise RuntimeError(f"distributed diff: no result for {len(missing)} pairs")
    return out  # type: ignore[return-value]


def diff(a: Any, b: Any, **kwargs: Any) -> Any:
    """`diff.diff` with its data pass shared across ranks; the same report on every rank."""
    from bufinspect import diff as diff_mod

    kwargs["progress"] = None
    return diff_mod.diff(a, b, compare=_shared_compare, **kwargs)
