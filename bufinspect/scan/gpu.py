"""torch kernels for the GPU paths: the twins of `bufinspect.numeric`'s numpy kernels.

Each computes what its numpy twin computes, in the same precision, and hands it to the same
accumulator type (`DiffAccumulator`, `RangeAccumulator`), so merging, results and reports are
shared code. Both run on any torch device: the tests run them on the CPU against the numpy
kernels and a float64 reference, and `scripts/gpu-check.sh` on a GPU. torch is imported only when
a GPU path is chosen.
"""

from __future__ import annotations

import math

from bufinspect import dtypes


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)



def range_row(x, negatives: bool):
    """The torch twin of `numeric.RangeAccumulator.add_raw` for one chunk: [nan, inf, negative,
    finite min, finite max] as a float64 tensor on the chunk's device, merged later with
    `RangeAccumulator.merge_row` (one transfer back per scan, not one per chunk)."""
    import torch

    inf = torch.tensor(math.inf, dtype=torch.float64, device=x.device)
    if x.is_complex():
        return torch.stack([torch.isnan(x).sum().double(), torch.isinf(x).sum().double(),
                            torch.zeros_like(inf), inf, -inf])
    if x.element_size() < 4:
        x = x.float()
    finite = torch.isfinite(x)
    nan = torch.isnan(x).sum()
    n_inf = x.numel() - finite.sum() - nan
    big = torch.full((), math.inf, dtype=x.dtype, device=x.device)
    lo = torch.where(finite, x, big).amin()
    hi = torch.where(finite, x, -big).amax()
    neg = (finite & (x < 0)).sum() if negatives else torch.zeros((), device=x.device)
    return torch.stack([nan.double(), n_inf.double(), neg.double(), lo.double(), hi.double()])


def diff_kernel(device: str = "cuda:0"):
    """The torch twin of `numeric.DiffAccumulator.add`: the same float64 arithmetic, step by
    step, folded into the same accumulator fields (so merging and metrics are shared). Returns
    `add(acc, a, b, dtype)`, or None when `device` is cuda and no GPU is usable. `device="cpu"`
    runs it on the host: tests compare it with the numpy kernel there."""
    try:
        import torch
    except ImportError:
        return None
    if device.startswith("cuda") and not torch.cuda.is_available():
        return None
    import numpy as np

    from bufinspect.numeric import as_float

    dev = torch.device(device)

    def add(acc, a: np.ndarray, b: np.ndarray, dtype: str) -> None:
        def up(x):
            if x.dtype == np.bool_:
                x = x.view(np.uint8)
            if dtypes.DTYPES[dtype].kind == "float":
                x = as_float(x, dtype)
            return torch.from_numpy(np.ascontiguousarray(x)).to(dev).to(torch.float64)

        fa, fb = up(a), up(b)
        acc.diff_elems += fa.numel()
        d = (fa - fb).abs()
        absb = fb.abs()
        extra = 0
        if not bool(torch.isfinite(d).all() and torch.isfinite(absb).all()):
            nan_a, nan_b = torch.isnan(fa), torch.isnan(fb)
            same = (fa == fb) | (nan_a & nan_b)
            odd = ~same & ~torch.isfinite(d)
            extra = int(odd.sum())
            acc.nonfinite += extra
            zero = torch.zeros((), dtype=torch.float64, device=dev)
            d = torch.where(same | odd, zero, d)
            absb = torch.where(odd | ~torch.isfinite(absb), zero, absb)
            fa = torch.where(odd | (same & ~torch.isfinite(fa)), zero, fa)
            fb = torch.where(odd | (same & ~torch.isfinite(fb)), zero, fb)
        acc.mismatched += int((d > acc.atol + acc.rtol * absb).sum()) + extra
        mx = float(d.max()) if d.numel() else 0.0
        if mx > 0:
            acc.max_abs = max(acc.max_abs, mx)
            rel = torch.where(d == 0, torch.zeros_like(d), d / absb)
            acc.max_rel = max(acc.max_rel, float(rel.max()))
            acc.sum_abs += float(d.sum())
            acc.sum_d2 += float(torch.dot(d, d))
        acc.aa += float(torch.dot(fa, fa))
        acc.ab += float(torch.dot(fb, fa))
        acc.bb += float(torch.dot(fb, fb))

    return add
