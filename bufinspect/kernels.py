"""Fused data-pass kernels: one read of each element (pair) gives every number a command reports.

`diff_partial(a, b, dtype, rtol, atol)` returns a `DiffPartial` and `stats_partial(x, dtype)` a
`StatsPartial` for one streamed piece: pure functions over raw element buffers whose results
merge (`numeric.DiffAccumulator.add_partial`, `StatsAccumulator.add_partial`,
`RangeAccumulator.merge_row`). The CPU version is `bufinspect._kernel` (C, built at install);
`scan.gpu.diff_partial` and `scan.gpu.stats_row` are its torch twins (GPU) and give the same
tuples. Without the compiled module (no compiler at install time, or `BUFINSPECT_NO_KERNEL=1`)
these functions return None and the numpy path in `numeric.py` computes the same fields.
A leaf module: no bufinspect imports, nothing imported until a data pass needs it.

Why C, by measurement on this 2-core machine (every tensor changed, 16M-element pieces in
memory, CPU ns per element, medians of 5, one thread): the numpy path took 4.8 (float32) / 5.4
(bfloat16) for diff and 0.52 / 1.37 for stats; this extension takes 0.62 / 0.72 for diff, 0.41 /
0.10 for stats and 0.31 / 0.05 for check's scan (float32 stats were already at memory speed;
bfloat16 runs on its raw 16-bit words, see `stats_bf16w` in _kernel.c).
A fused numba loop measured 2.4-3.2 / 3.7 for diff (issue #16), but `import numba` costs 0.46 s,
loading its cached kernel 0.21 s, a first compile 2.5-2.9 s, and it brings an LLVM wheel of
~100 MB; torch ops measured 13.9 plus a 1.6 s import; numexpr 25.6. The extension is ~240 KB,
imports in well under a millisecond (and only once bytes differ: `numeric` is only imported
then), has no run-time dependency, and its absence costs speed, not function: setup.py marks it
`optional`, so an install without a compiler still succeeds and runs the numpy path
(tests/test_kernels.py builds it with `CC=false` to prove it).

The C loops are vectorised by the compiler (`omp simd`, no -ffast-math), in clones for AVX2 and
AVX-512 picked at load time; sums go to 16 fixed lanes added in a fixed order, so every CPU gives
the same bits (the golden JSON documents hold them).

Float tolerance (tests/test_kernels.py checks every path against a float64 reference):
counts, minima, maxima, max_abs, max_rel and mismatches are exact and equal on every path.
Diff sums (mean_abs, rel_l2, cosine) are float64 and differ from the numpy path only by
summation order (relative 1e-12 or better). Stats of float32/float64, and of pieces up to 65,536
elements, are float64 sums; larger 16- and 8-bit float pieces sum float32 partials of at most 256
terms (bfloat16: 16), merged in float64: mean within 1e-7 of (|mean| + std) and std within 1e-7
relative, the tolerance the numpy path documents.
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
                import bufinspect._kernel as mod
            except ImportError:
                mod = None
        _native = mod
    return _native


def reset() -> None:
    """Look for the compiled module again (tests switch `BUFINSPECT_NO_KERNEL`)."""
    global _native
    _native = _UNSET


def _contiguous(x):
    flags = getattr(x, "flags", None)  # a memoryview of a stream buffer is contiguous as it is
    if flags is None or flags.c_contiguous:
        return x
    import numpy as np

    return np.ascontiguousarray(x)


def diff_partial(a, b, dtype: str, rtol: float, atol: float, table=None) -> DiffPartial | None:
    """Metrics of raw element arrays `a`, `b` (as streamed) in one fused pass, or None when the
    compiled kernel is absent or does not handle `dtype` (ints, bool, complex). 8-bit floats
    need `table`: their 256 values as float32."""
    k = native()
    code = CODES.get(dtype)
    if k is None or code is None:
        return None
    return DiffPartial(*k.diff(_contiguous(a), _contiguous(b), code, rtol, atol, table))


def stats_partial(x, dtype: str, moments: bool = True, table=None,
                  negatives: bool = True) -> StatsPartial | None:
    """Statistics of a raw element array in one pass (`moments=False`: counts and extremes only,
    mean and m2 left 0; `negatives=False`: `neg` left 0, which spares bfloat16 a compare per
    element), or None when the compiled kernel is absent or `dtype` is not a float."""
    k = native()
    code = CODES.get(dtype)
    if k is None or code is None:
        return None
    return StatsPartial(*k.stats(_contiguous(x), code, moments, table, negatives))
