"""Data passes across processes and machines with torch.distributed (what users already run).

Under `torchrun` (or with `--distributed` and the usual RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
environment), every rank reads the checkpoint's metadata, takes its share of the tensors
(`parallel.partition`: contiguous runs of about equal bytes in file order), streams them with
its own local workers, and sends its statistics to rank 0 as JSON bytes over a gloo process group
(the data pass runs on CPUs; gloo works whether or not the ranks have GPUs). Rank 0 builds the
report, which is identical to the single-process one; other ranks print nothing.

torch is imported only here, and only on this path. Nothing is pickled between ranks.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any, Iterable

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


def _gather_bytes(blob: bytes, dist: Any) -> list[bytes] | None:
    """Every rank's bytes on rank 0 (None elsewhere), padded to one length for gloo's gather."""
    import torch

    size = torch.tensor([len(blob)], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8)
    if blob:
        mine[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
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
    import torch.distributed as dist

    from bufinspect import numeric, parallel

    entries = [e for e in entries if numeric.stats_kind(e) is not None]
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", timeout=_TIMEOUT)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        share = parallel.partition(entries, world)[rank]
        mine = numeric.tensor_stats(share, jobs=jobs)
        rows = [[c, k, [st.min, st.max, st.mean, st.std, st.nan, st.inf, st.zeros]]
                for (c, k), st in mine.items()]
        gathered = _gather_bytes(json.dumps(rows).encode(), dist)
    finally:
        if own:
            dist.destroy_process_group()
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
