"""Data passes across processes and machines with torch.distributed (what users already run).

Under `torchrun` (or with `--distributed` and the usual RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
environment), every rank reads the checkpoints' metadata, takes its share of the tensors
(`parallel.partition`: contiguous runs of about equal bytes in file order), streams them with
its own local workers, and sends its results as JSON bytes over a gloo process group (only a
few KiB of results travel, so gloo serves whether or not the ranks have GPUs; a GPU scan runs on
the rank's own `cuda:LOCAL_RANK`). The report is identical to the single-process one.

`RankWork` is the seam: the analyses take a `parallel.Work`, and this one shares their data pass
(`show --stats`, `check`, `diff`) across ranks. Every rank receives every result (all-gather) and
builds the same report (a script can act on the verdict on every rank); the CLI prints it on
rank 0 only (`prints()`).

torch is imported only here, and only on this path. Nothing is pickled between ranks: results
are JSON (floats as their shortest repr, which round-trips exactly; NaN/Infinity as JSON's
extension tokens, which Python's json reads back), enums and tuples tagged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import timedelta
from enum import Enum
from typing import Any, Callable, Sequence, TypeVar

from bufinspect.errors import UsageError
from bufinspect.model import Entry
from bufinspect.parallel import Work

T = TypeVar("T")

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


def _gather_bytes(blob: bytes, dist: Any) -> list[bytes]:
    """Every rank's bytes, in rank order, on every rank (padded to one length for gloo)."""
    import torch

    size = torch.tensor([len(blob)], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8)
    if blob:
        mine[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    bufs = [torch.zeros(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(bufs, mine)
    return [b[: int(s.item())].numpy().tobytes() for b, s in zip(bufs, sizes)]


def default_jobs() -> int:
    """Workers per rank when --jobs is not given: this node's cores shared by its ranks."""
    from bufinspect import parallel

    try:
        ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        ranks = 1
    return max(parallel.default_jobs() // ranks, 1)


# ---- results as JSON: exact floats, tagged enums and tuples --------------------------------

def _types() -> dict[str, type]:
    """The result types that travel between ranks, by name."""
    from bufinspect.model import ScanStats, Status, TensorStats

    return {"Status": Status, "ScanStats": ScanStats, "TensorStats": TensorStats}


def _tag(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return {"$enum": type(obj).__name__, "value": obj.value}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if _types().get(name) is not type(obj):
            raise TypeError(f"cannot send {name} between ranks")
        return {"$data": name, "fields": {f.name: _tag(getattr(obj, f.name))
                                          for f in dataclasses.fields(obj)}}
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
        return _types()[d["$enum"]](d["value"])
    if "$data" in d:
        return _types()[d["$data"]](**d["fields"])
    return d


def dumps(obj: Any) -> bytes:
    """`obj` (dicts, lists, tuples, str enums, numbers, None) as JSON bytes that `loads` returns
    exactly: floats keep every bit (NaN and infinities included), tuples stay tuples."""
    return json.dumps(_tag(obj), allow_nan=True, separators=(",", ":")).encode()


def loads(blob: bytes) -> Any:
    """The inverse of `dumps`."""
    return json.loads(blob, object_hook=_untag)


# ---- the seam: a rank's share of a data pass ------------------------------------------------


class RankWork(Work):
    """`parallel.Work` across torch.distributed ranks: each rank takes a contiguous run of about
    1/N of the bytes (`parallel.partition`, in file order) and streams it on `jobs` local
    workers; `gather` all-gathers the typed results (JSON, see `dumps`), so every rank builds
    the same report.

    Use it as a context manager: it joins the process group already initialized, or makes a
    gloo one from the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and destroys it
    on exit. Only a few KiB of results travel, so gloo serves whether or not ranks have GPUs.
    """

    def __init__(self, jobs: int = 1) -> None:
        super().__init__(jobs)
        self._own = False
        self._dist: Any = None

    def __enter__(self) -> "RankWork":
        from bufinspect import _torch

        _torch.require("sharing the work across torch.distributed ranks (torchrun, --distributed)")
        import torch.distributed as dist

        self._own = not dist.is_initialized()
        if self._own:
            dist.init_process_group("gloo", timeout=_TIMEOUT)
        self._dist = dist
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._own:
            self._dist.destroy_process_group()
            self._own = False

    def share(self, items: Sequence[Entry]) -> list[int]:
        from bufinspect import parallel

        rank, world = self._dist.get_rank(), self._dist.get_world_size()
        where = {id(e): i for i, e in enumerate(items)}
        return sorted(where[id(e)] for e in parallel.partition(list(items), world)[rank])

    def gather(self, mine: list[int], results: list[T], total: int) -> list[T]:
        blobs = _gather_bytes(dumps([[i, r] for i, r in zip(mine, results)]), self._dist)
        out: list[Any] = [None] * total
        got = [False] * total
        for blob in blobs:
            for i, r in loads(blob):
                out[i], got[i] = r, True
        if not all(got):
            raise RuntimeError(f"distributed pass: no result for {got.count(False)} items")
        return out

    def device(self, device: str) -> str:
        """This rank's GPU (`cuda:LOCAL_RANK`, modulo the GPUs it sees) for a CUDA scan."""
        if not device.startswith("cuda"):
            return device
        from bufinspect.scan import cuda_device_count

        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        return f"cuda:{local % max(cuda_device_count(), 1)}"

    def progress(self, callback: Callable[[int], None] | None) -> None:
        return None  # one bar per rank would garble the terminal
