"""Fused data-pass kernels: one read of each element (pair) gives every number a command reports.

`diff_partial(a, b, dtype, rtol, atol)` returns a `DiffPartial` and `stats_partial(x, dtype)` a
`StatsPartial` for one streamed piece: pure functions over raw element buffers whose results
merge (`bufinspect.numeric.DiffAccumulator.add_partial`, `StatsAccumulator.add_partial`). The
CPU version is `bufinspect._kernel` (C, built at install); `torch_diff_partial` and
`torch_stats_partial` are its GPU twins and return the same tuples. Without the compiled module
(no compiler at install time, or `BUFINSPECT_NO_KERNEL=1`) the functions return None and the
numpy path in `numeric.py` computes the same fields.

Why C, by measurement on this 2-core machine (every tensor changed, 16M-element pieces in
memory, CPU ns per element, medians of 5): the numpy path took 4.8 (float32) / 5.4 (bfloat16)
for diff and 0.52 / 1.37 for stats; this extension takes 0.64 / 0.75 for diff, 0.41 / 0.24 for
stats and 0.31 / 0.19 for check's scan (float32 stats were already at memory speed). A fused
numba loop measured 2.4-3.2 / 3.7 for diff (issue #16), but `import numba` costs 0.46 s, loading
its cached kernel 0.21 s, a first compile 2.5-2.9 s, and it brings an LLVM wheel of ~100 MB;
torch ops measured 13.9 plus a 1.6 s import; numexpr 25.6. The extension is ~100 KB, imports in
well under a millisecond (and only once bytes differ: `numeric` is only imported then), has no
run-time dependency, and its absence costs speed, not function: setup.py marks it `optional`,
so an install without a compiler still succeeds and runs the numpy path.

Float tolerance (tests/test_kernels.py checks every path against a float64 reference):
counts, minima, maxima, max_abs, max_rel and mismatches are exact and equal on every path.
Diff sums (mean_abs, rel_l2, cosine) are float64 and differ from the numpy path only by
summation order (relative 1e-12 or better). Stats of float32/float64 are float64 sums; of
16- and 8-bit floats, float32 partials of 256 terms merged in float64: mean within 1e-7 of
(|mean| + std) and std within 1e-7 relative, the tolerance the numpy path documents.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3, "float8_e4m3fn": 4,
         "float8_e5m2": 4, "float8_e4m3fnuz": 4, "float8_e5m2fnuz": 4, "float8_e8m0fnu": 4}
DISABLE_ENV = "BUFINSPECT_NO_KERNEL"


class DiffPartial(NamedTuple):
    """Diff metrics of one piece pair; merged by `DiffAccumulator.add_partial`."""

    elems: int
    max_abs: float
    max_rel: float
    sum_abs: float
    sum_d2: float
    aa: float
    ab: float
    bb: float
    mismatched: int
    nonfinite: int


class StatsPartial(NamedTuple):
    """Statistics of one piece: `n` finite values with their `mean` and sum of squared
    deviations `m2` (Chan's merge), finite `min`/`max` (inf/-inf when none), NaN and Inf
    counts, zeros (either sign) and values below zero."""

    n: int
    mean: float
    m2: float
    min: float
    max: float
    nan: int
    inf: int
    zeros: int
    neg: int


_UNSET = object()
_native: Any = _UNSET


def native():
    """The compiled module, or None when it was not built or `BUFINSPECT_NO_KERNEL=1`."""
    global _native
    if _native is _UNSET:
        mod = None
        if os.environ.get(DISABLE_ENV, "") in ("", "0"):
            try:
                from bufinspect import _kernel as mod
            except ImportError:
                mod = None
        _native = mod
    return _native


def reset() -> None:
    """Look for the compiled module again (tests switch `BUFINSPECT_NO_KERNEL`)."""
    global _native
    _native = _UNSET


def _contiguous(x):
    import numpy as np

    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def _table(dtype: str):
    if CODES[dtype] != 4:
        return None
    from bufinspect.numeric import _fp8_table

    return _fp8_table(dtype)


def diff_partial(a, b, dtype: str, rtol: float, atol: float) -> DiffPartial | None:
    """Metrics of raw element arrays `a`, `b` (as streamed) in one fused pass, or None when the
    compiled kernel is absent or does not handle `dtype` (ints, bool, complex)."""
    k = native()
    code = CODES.get(dtype)
    if k is None or code is None:
        return None
    return DiffPartial(*k.diff(_contiguous(a), _contiguous(b), code, rtol, atol, _table(dtype)))


def stats_partial(x, dtype: str, moments: bool = True) -> StatsPartial | None:
    """Statistics of a raw element array in one pass (`moments=False`: counts and extremes only,
    mean and m2 left 0), or None when the compiled kernel is absent or `dtype` is not a float."""
    k = native()
    code = CODES.get(dtype)
    if k is None or code is None:
        return None
    return StatsPartial(*k.stats(_contiguous(x), code, moments, _table(dtype)))


# ---- GPU twins (torch) ---------------------------------------------------------------------
#
# The same partials from float64 torch tensors already on the device: the same element rules
# (NaN in both places and equal infinities are equal; a new NaN or an Inf against anything else
# is "nonfinite" and mismatched, and zeroed in the sums), reduced on the device and fetched with
# one transfer per piece. Used by `diff --device cuda` and `check` on a GPU; tests run them on
# torch's CPU device against the C kernel.

def torch_diff_partial(fa, fb, rtol: float, atol: float) -> DiffPartial:
    """`diff_partial` of two float64 torch tensors (any device)."""
    import torch

    zero = torch.zeros((), dtype=torch.float64, device=fa.device)
    d = (fa - fb).abs()
    absb = fb.abs()
    nan_a, nan_b = torch.isnan(fa), torch.isnan(fb)
    same = (fa == fb) | (nan_a & nan_b)
    odd = ~same & ~torch.isfinite(d)
    d = torch.where(same | odd, zero, d)
    absb = torch.where(odd | ~torch.isfinite(absb), zero, absb)
    fa = torch.where(odd | (same & ~torch.isfinite(fa)), zero, fa)
    fb = torch.where(odd | (same & ~torch.isfinite(fb)), zero, fb)
    mism = (d > absb * rtol + atol).sum() + odd.sum()
    rel = torch.where(d > 0, d / absb, zero)  # d / 0 = inf, as on the CPU
    n = d.numel()
    row = torch.stack([
        d.max() if n else zero, rel.max() if n else zero, d.sum(), torch.dot(d, d),
        torch.dot(fa, fa), torch.dot(fb, fa), torch.dot(fb, fb), mism.double(),
        odd.sum().double()])
    v = row.tolist()
    return DiffPartial(n, v[0], v[1], v[2], v[3], v[4], v[5], v[6], int(v[7]), int(v[8]))


def torch_stats_row(x, moments: bool = True):
    """`stats_partial` of a float torch tensor as a float64 row on its device (n, mean, m2,
    min, max, nan, inf, zeros, neg), left there so that many pieces are fetched at once."""
    import torch

    x = x.to(torch.float64)
    nan = torch.isnan(x)
    inf = torch.isinf(x)
    fin = ~(nan | inf)
    n = fin.sum()
    big = torch.tensor(float("inf"), dtype=torch.float64, device=x.device)
    lo = torch.where(fin, x, big).amin() if x.numel() else big
    hi = torch.where(fin, x, -big).amax() if x.numel() else -big
    if moments:
        xf = torch.where(fin, x, torch.zeros_like(x))
        nd = n.double().clamp(min=1)
        mean = xf.sum() / nd
        dev = torch.where(fin, x - mean, torch.zeros_like(x))
        m2 = torch.dot(dev, dev)
        mean = torch.where(n > 0, mean, torch.zeros_like(mean))
    else:
        mean = m2 = torch.zeros((), dtype=torch.float64, device=x.device)
    return torch.stack([n.double(), mean, m2, lo, hi, nan.sum().double(), inf.sum().double(),
                        (x == 0).sum().double(), (fin & (x < 0)).sum().double()])


def stats_from_row(v: list[float]) -> StatsPartial:
    """A `StatsPartial` from a fetched `torch_stats_row`."""
    return StatsPartial(int(v[0]), v[1], v[2], v[3], v[4], int(v[5]), int(v[6]), int(v[7]),
                        int(v[8]))
