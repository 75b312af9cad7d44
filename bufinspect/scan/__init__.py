"""The scan layer: every pass over tensor data, over `formats.stream`.

- `tensor_stats`: `show --stats` (`scan.stats`);
- `check_scan`: `check`'s NaN/Inf/negative-variance pass, CPU or GPU (`scan.checkscan`);
- `compare_pairs` with an `Engine`: `diff`'s paired sweep (`scan.sweep`);
- `scan.device`: the one rule that decides whether a GPU is used; `scan.gpu`: the torch twins of
  the numpy kernels in `bufinspect.numeric`.

Each pass takes a `parallel.Work` that says which share of the entries this process handles and
on how many threads; `distributed.RankWork` is the same seam across torch.distributed ranks.
Submodules are imported on first use: a listing, or a diff of identical files, never loads numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bufinspect.scan.device import cuda_available, cuda_device_count, resolve_device

if TYPE_CHECKING:
    from bufinspect.model import Entry
    from bufinspect.scan.sweep import Engine, compare_pairs


def __getattr__(name: str) -> Any:
    """`Engine` and `compare_pairs` load with `scan.sweep` on first use (listing never does)."""
    if name in ("Engine", "compare_pairs"):
        from bufinspect.scan import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'bufinspect.scan' has no attribute {name!r}")


def tensor_stats(entries, progress=None, jobs: int = 1, work=None):
    """`scan.stats.tensor_stats` (imported on first use: it needs numpy)."""
    from bufinspect.scan.stats import tensor_stats as run

    return run(entries, progress, jobs, work)


def check_scan(entries, device: str = "cpu", progress=None, jobs: int = 1, work=None) -> Any:
    """`scan.checkscan.check_scan` (imported on first use)."""
    from bufinspect.scan.checkscan import check_scan as run

    return run(entries, device, progress, jobs, work)


def scannable(e: "Entry") -> bool:
    """True for the entries `check_scan` reads (floating and complex tensors with data)."""
    from bufinspect.scan.checkscan import scannable as test

    return test(e)


__all__ = ["Engine", "check_scan", "compare_pairs", "cuda_available", "cuda_device_count",
           "resolve_device", "scannable", "tensor_stats"]
