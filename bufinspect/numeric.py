"""Numeric kernels over streamed chunks: pure array code, numpy only (`import torch` alone costs
seconds). One accumulator per question, each fed raw streamed pieces and merged in element order:
`StatsAccumulator` (show --stats), `RangeAccumulator` (check), `DiffAccumulator` (diff). The data
passes that feed them live in `bufinspect.scan`; their torch twins in `bufinspect.scan.gpu`."""

# Long on purpose (~600 lines): the three accumulators share the float helpers, the per-thread
# scratch and the bf16 tricks documented below. With the fused C kernel built (`kernels`, issue
# #16) each accumulator hands float pieces to it; the numpy code below is the fallback.

from __future__ import annotations

import math
import struct
import threading
from functools import lru_cache

from bufinspect import dtypes, kernels
from bufinspect.model import ScanStats, TensorStats


class _LazyNumpy:
    """numpy, imported on first use: with the fused kernel, `show --stats` and `check` hand it
    raw stream pieces (memoryviews) and never need numpy (~0.05-0.1 s of start-up)."""

    def __getattr__(self, name: str):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _LazyNumpy()


def _array(arr, dtype: str) -> np.ndarray:
    """A streamed piece as a numpy array of its raw elements (`stream.pieces(raw=True)` gives
    memoryviews of the stream buffer)."""
    if isinstance(arr, memoryview):
        return np.frombuffer(arr, np.dtype(dtypes.DTYPES[dtype].numpy))
    return arr


@lru_cache(maxsize=None)
def _fp8_table(name: str) -> np.ndarray:
    """All 256 values of an 8-bit float format, decoded by its bit layout."""
    ebits, mbits, bias, kind = {
        "float8_e4m3fn": (4, 3, 7, "fn"),
        "float8_e5m2": (5, 2, 15, "ieee"),
        "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
        "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
        "float8_e8m0fnu": (8, 0, 127, "e8m0"),
    }[name]
    out = np.empty(256, np.float32)
    for b in range(256):
        if kind == "e8m0":
            out[b] = math.nan if b == 255 else 2.0 ** (b - bias)
            continue
        sign = -1.0 if b >> 7 else 1.0
        e = (b >> mbits) & ((1 << ebits) - 1)
        m = b & ((1 << mbits) - 1)
        top = (1 << ebits) - 1
        if kind == "fnuz" and b == 0x80:
            out[b] = math.nan
        elif kind == "fn" and e == top and m == (1 << mbits) - 1:
            out[b] = math.nan
        elif kind == "ieee" and e == top:
            out[b] = sign * math.inf if m == 0 else math.nan
        elif e == 0:
            out[b] = sign * (m / (1 << mbits)) * 2.0 ** (1 - bias)
        else:
            out[b] = sign * (1 + m / (1 << mbits)) * 2.0 ** (e - bias)
    return out


def _table(dtype: str) -> np.ndarray | None:
    """The decode table the fused kernel needs for an 8-bit float dtype."""
    return _fp8_table(dtype) if dtype.startswith("float8") else None


def fused() -> bool:
    """True when the fused C kernel is built and enabled (`kernels.native`)."""
    return kernels.native() is not None


def as_float(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Raw elements of a floating dtype as a numpy float array (bfloat16/float8 widened)."""
    if dtype == "bfloat16":
        return np.left_shift(arr, 16, dtype=np.uint32).view(np.float32)  # one pass, no temp
    if dtype.startswith("float8"):
        return _fp8_table(dtype)[arr]
    if dtype == "float16":
        return arr.astype(np.float32)
    return arr


def split_nonfinite(x: np.ndarray) -> tuple[np.ndarray, int, int, float, float]:
    """(finite elements, NaN count, Inf count, finite min, finite max) of a float chunk.

    The common all-finite case costs one min and one max pass; min/max are inf/-inf when no
    element is finite.
    """
    lo, hi = x.min(), x.max()
    if math.isfinite(lo) and math.isfinite(hi):
        return x, 0, 0, float(lo), float(hi)
    nan, inf = np.isnan(x), np.isinf(x)
    x = x[~(nan | inf)]
    lo, hi = (float(x.min()), float(x.max())) if x.size else (math.inf, -math.inf)
    return x, int(np.count_nonzero(nan)), int(np.count_nonzero(inf)), lo, hi


# ---- stats kernel -------------------------------------------------------------------------
#
# A data pass must run near `cat` speed, so a large float piece (up to one stream chunk) is
# reduced with few passes, through reusable per-worker scratch (a fresh temporary costs a page
# fault per 4 KiB, more than the arithmetic):
#
# - bfloat16, in steps of _STEP elements: min, max, NaN/Inf and zeros come from integer
#   reductions on the raw 16-bit words (see `_add_bf16`), run on a step just before it is
#   widened, so that the step comes from memory once and from the L2 cache after that; only the
#   sums need floats, widened two words at a time (`w << 16`, `w & 0xFFFF0000` on the uint32
#   view: exact, and twice as fast as numpy's uint16 -> uint32 cast).
# - float32 (and float16, converted step by step): min/max in float (NaN propagates: finite min
#   and max mean no NaN/Inf, so the non-finite counts are skipped), zeros looked for with two
#   integer minimums (+0.0 is the smallest uint32, -0.0 the smallest int32) and only counted
#   when there are any.
# - sum and sum of squares in float32 BLAS, a row of _ROW elements at a time (gemv against
#   ones, a dot per row); the row results are added in float64 and pieces merged (Chan).
#   Precision: a float32 partial over m terms has a relative error of about sqrt(m) * 2**-24,
#   and worse on bf16 data (a 131072-term dot measured 5e-6: squares with few significant
#   bits), so no partial is longer than _ROW terms (1.5e-8 on the same data, at the same
#   speed). m2 = sum(x^2) - sum(x) * mean then loses log2(sum(x^2) / m2) more bits, so when that
#   ratio exceeds 2 (|mean| > std, e.g. values ~1e4 with a small spread) the piece is summed
#   again centred on its float32 mean (the subtraction is exact for values within a factor of 2
#   of it), with the exact correction m2 = sum(d^2) - sum(d)^2 / n.
# - pieces of up to _EXACT elements (small tensors), and steps holding a NaN or Inf, go through
#   the general float64 path (`StatsAccumulator.add`).

_STEP = 1 << 19  # bf16 elements per step: 1 MiB of words; fewer calls beat L2 residency here
_ROW = 1024  # elements per float32 partial sum (gemv row / per-row dot)
_EXACT = 1 << 16  # pieces up to this size are reduced in float64
_BF16 = struct.Struct("<I")
_F32 = struct.Struct("<f")


def _bf16_value(bits: int) -> float:
    return _F32.unpack(_BF16.pack(bits << 16))[0]


def bf16_range(u: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of raw bfloat16 words from three integer reductions (no widening), or None
    when they hold a NaN or an Inf. As int16, non-negative values order like their floats and
    +Inf/NaN sit from 0x7F80 up; as uint16, negative values order by magnitude and -Inf/NaN sit
    from 0xFF80 up."""
    maxs = int(np.maximum.reduce(u.view(np.int16)))
    maxu = int(np.maximum.reduce(u))
    if maxs >= 0x7F80 or maxu >= 0xFF80:
        return None
    # both signs present (the usual case): the two maxima are the extremes
    minu = int(np.minimum.reduce(u)) if maxs < 0 or maxu < 0x8000 else 0
    return _bf16_extremes(maxs, maxu, minu)


def _bf16_extremes(maxs: int, maxu: int, minu: int) -> tuple[float, float]:
    """(min, max) of finite bfloat16 words from their largest int16, largest uint16 and smallest
    uint16 values (see `bf16_range`)."""
    hi = _bf16_value(maxs if maxs >= 0 else minu)  # all negative: the smallest magnitude
    lo = _bf16_value(maxu if maxu >= 0x8000 else minu)  # none negative: the smallest
    return lo, hi


class _Scratch:
    """One worker thread's reusable buffers for the stats kernel (grown to the largest piece)."""

    def __init__(self) -> None:
        self.bits = np.empty(_STEP + 2, np.uint32)  # widened / converted / centred values
        self.f32 = self.bits.view(np.float32)
        self.raw = np.empty(_STEP // 2 + 1, np.uint32).view(np.uint16)  # realigned bf16 words
        self.ones = np.ones(_ROW, np.float32)
        self.rows = np.empty((2, 0), np.float32)  # per-row sums and sums of squares of a piece
        self.mask = np.empty(0, np.bool_)

    def row_sums(self, n: int) -> np.ndarray:
        if self.rows.shape[1] < n // _ROW:
            self.rows = np.empty((2, n // _ROW), np.float32)
        return self.rows


_local = threading.local()


def _scratch() -> _Scratch:
    sc = getattr(_local, "scratch", None)
    if sc is None:
        sc = _local.scratch = _Scratch()
    return sc


def _rowdot(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    if hasattr(np, "vecdot"):  # numpy >= 2.0: a BLAS dot per row
        np.vecdot(a, b, out=out)
    else:
        np.einsum("ij,ij->i", a, b, out=out)


def _sums(n: int, steps, sc: _Scratch) -> tuple[float, float]:
    """(sum, sum of squares) of a finite piece given as float32 `steps` (first index, view):
    a float32 partial per row of _ROW, the partials added in float64."""
    rows = sc.row_sums(n)
    tail_s = tail_q = 0.0
    for i, x in steps:
        m = x.size
        k = m - m % _ROW
        if k:
            r = i // _ROW
            xs = x[:k].reshape(-1, _ROW)
            with np.errstate(over="ignore"):  # an overflow gives inf: the caller redoes it
                np.dot(xs, sc.ones, out=rows[0, r: r + k // _ROW])
                _rowdot(xs, xs, rows[1, r: r + k // _ROW])
        if k < m:  # the piece's last partial row
            t = x[k:].astype(np.float64)
            tail_s += float(t.sum())
            tail_q += float(np.dot(t, t))
    tot = np.add.reduce(rows[:, : n // _ROW], axis=1, dtype=np.float64)
    return float(tot[0]) + tail_s, float(tot[1]) + tail_q


def _moments(n: int, steps, sc: _Scratch, sums: tuple[float, float] | None = None
             ) -> tuple[float, float]:
    """(mean, sum of squared deviations) of a finite piece (see the note above); `steps()`
    yields its float32 values step by step, in the scratch when they were converted; `sums`:
    `_sums` of them when already known."""
    s, q = sums or _sums(n, steps(), sc)
    mean = s / n
    m2 = q - s * mean
    if m2 < 0.5 * q:  # |mean| > std: recompute on centred values
        c = np.float32(mean)

        def centred():
            for i, x in steps():
                if x.base is sc.bits:  # converted values: centre them in place
                    np.subtract(x, c, out=x)
                    yield i, x
                    continue
                for j in range(0, x.size, _STEP):
                    d = sc.f32[: min(_STEP, x.size - j)]
                    np.subtract(x[j: j + _STEP], c, out=d)
                    yield i + j, d

        s, q = _sums(n, centred(), sc)
        mean = float(c) + s / n
        m2 = q - s * s / n
    return mean, m2


class _NonFinite(Exception):
    """A NaN or Inf turned up in a step of the fast path."""


class StatsAccumulator:
    """min/max/mean/std/NaN/Inf/zeros of one tensor, fed chunk by chunk (Chan's merge for std)."""

    __slots__ = ("n", "mean", "m2", "min", "max", "nan", "inf", "zeros", "kind")

    def __init__(self, kind: str):
        self.kind = kind
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.nan = self.inf = self.zeros = 0

    def add_raw(self, arr: np.ndarray | memoryview, dtype: str) -> None:
        """Add one streamed piece: raw elements as `stream.pieces` yields them."""
        if self.kind == "float":
            # fused, if built (`show --stats` reports no count of negatives)
            part = kernels.stats_partial(arr, dtype, table=_table(dtype), negatives=False)
            if part is not None:
                self.add_partial(part)
                return
        arr = _array(arr, dtype)
        if self.kind != "float" or arr.size <= _EXACT or dtype not in _FAST:
            self.add(as_float(arr, dtype) if self.kind == "float" else arr)
        else:
            _FAST[dtype](self, arr, _scratch())

    def add_partial(self, p: "kernels.StatsPartial") -> None:
        """Fold in one piece's statistics from the fused kernel (or a twin of it)."""
        self.nan += p.nan
        self.inf += p.inf
        self.zeros += p.zeros
        if p.n:
            self._merge(p.n, p.mean, p.m2, p.min, p.max)

    def _merge(self, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        tot = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / tot
        self.m2 += m2 + delta * delta * self.n * n / tot
        self.n = tot

    def _add_bf16(self, u: np.ndarray, sc: _Scratch) -> None:
        # As int16, non-negative values order like their floats, and the largest is +Inf/NaN
        # from 0x7F80 up; as uint16, negative values order by magnitude, -Inf/NaN from 0xFF80.
        # The integer reductions run per step, just before the step is widened: the step is
        # then read from memory once and from the L2 cache after that (whole-piece passes
        # measured 3x slower).
        n = u.size
        aligned = u.ctypes.data % 4 == 0
        bits, f32, raw = sc.bits, sc.f32, sc.raw
        ext = [-0x8000, 0, 0xFFFF]  # max int16, max uint16, min uint16 over the piece
        zeros = 0

        def steps(check: bool):
            nonlocal zeros
            for i in range(0, n, _STEP):
                v = u[i: i + _STEP]
                m = v.size
                if check:
                    s16 = v.view(np.int16)
                    maxs = int(np.maximum.reduce(s16))
                    maxu = int(np.maximum.reduce(v))
                    if maxs >= 0x7F80 or maxu >= 0xFF80:
                        raise _NonFinite
                    minu = int(np.minimum.reduce(v))
                    if minu == 0 or int(np.minimum.reduce(s16)) == -0x8000:  # a +0.0 or -0.0
                        zeros += m - int(np.count_nonzero(np.left_shift(v, 1, out=raw[:m])))
                    ext[:] = max(ext[0], maxs), max(ext[1], maxu), min(ext[2], minu)
                if not aligned or m % 2:  # the pair trick needs aligned, whole uint32 words
                    np.copyto(raw[:m], v)
                    raw[m] = 0  # padding: a +0.0 after the last element, outside the view
                    v = raw[: m + m % 2]
                w = v.view(np.uint32)
                p = w.size
                np.left_shift(w, 16, out=bits[:p])  # even elements
                np.bitwise_and(w, 0xFFFF0000, out=bits[p: 2 * p])  # odd elements
                yield i, f32[:m]

        try:
            first = _sums(n, steps(True), sc)
        except _NonFinite:  # NaN or Inf: the general path, step by step
            for i in range(0, n, _STEP):
                self.add(as_float(u[i: i + _STEP], "bfloat16"))
            return
        mean, m2 = _moments(n, lambda: steps(False), sc, first)
        if not (math.isfinite(mean) and math.isfinite(m2)):  # float32 squares overflowed
            for i in range(0, n, _STEP):
                self.add(as_float(u[i: i + _STEP], "bfloat16"))
            return
        lo, hi = _bf16_extremes(*ext)
        self.zeros += zeros
        self._merge(n, mean, m2, lo, hi)

    def _add_f32(self, x: np.ndarray, sc: _Scratch) -> None:
        n = x.size
        if x.dtype != np.float32 or x.ctypes.data % 4:  # float16; or BLAS on unaligned data,
            for i in range(0, n, _STEP):  # whose results could depend on where a piece landed
                v = sc.f32[: min(_STEP, n - i)]
                np.copyto(v, x[i: i + _STEP])
                self._add_f32(v, sc) if v.size > _EXACT else self.add(v.astype(np.float64))
            return
        lo, hi = float(np.minimum.reduce(x)), float(np.maximum.reduce(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            for i in range(0, n, _STEP):
                self.add(x[i: i + _STEP])
            return
        b = x.view(np.uint32)
        zeros = 0
        if int(np.minimum.reduce(b)) == 0 or int(np.minimum.reduce(b.view(np.int32))) == -2**31:
            if sc.mask.size < n:
                sc.mask = np.empty(n, np.bool_)
            zeros = int(np.count_nonzero(np.equal(x, 0, out=sc.mask[:n])))
        mean, m2 = _moments(n, lambda: iter([(0, x)]), sc)  # the whole piece: a call per pass
        if not (math.isfinite(mean) and math.isfinite(m2)):  # float32 squares overflowed
            for i in range(0, n, _STEP):  # (values beyond 1.8e19): float64, step by step
                self.add(x[i: i + _STEP])
            return
        self.zeros += zeros
        self._merge(n, mean, m2, lo, hi)

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        if self.kind == "complex":
            self.nan += int(np.count_nonzero(np.isnan(x)))
            self.inf += int(np.count_nonzero(np.isinf(x)))
            self.zeros += int(x.size - np.count_nonzero(x))
            return
        if x.dtype == np.bool_:
            x = x.view(np.uint8)
        if self.kind == "float":
            self.zeros += int(np.count_nonzero(x == 0))  # 4x faster than counting floats
        else:
            self.zeros += int(x.size - np.count_nonzero(x))
        if self.kind == "float":
            x, nan, inf, lo, hi = split_nonfinite(x)
            self.nan += nan
            self.inf += inf
            if x.size == 0:
                return
        else:
            lo, hi = x.min(), x.max()
        x64 = x.astype(np.float64)
        mean = float(x64.mean())
        d = x64 - mean
        self._merge(x.size, mean, float(np.dot(d, d)), float(lo), float(hi))

    def result(self) -> TensorStats:
        if self.n == 0:
            return TensorStats(None, None, None, None, self.nan, self.inf, self.zeros)
        std = math.sqrt(max(self.m2, 0.0) / (self.n - 1)) if self.n > 1 else 0.0
        return TensorStats(self.min, self.max, self.mean, std, self.nan, self.inf, self.zeros)


_FAST = {"bfloat16": StatsAccumulator._add_bf16, "float32": StatsAccumulator._add_f32,
         "float16": StatsAccumulator._add_f32}


# ---- range kernel (check) ------------------------------------------------------------------


class RangeAccumulator:
    """NaN/Inf counts, negatives and finite min/max of one tensor, fed chunk by chunk: what
    `check` needs. Exact (counts and extremes), so a GPU scan (`scan.gpu.range_row`) merges into
    it through `merge_row` and gives the same result."""

    __slots__ = ("nan", "inf", "neg", "min", "max")

    def __init__(self) -> None:
        self.nan = self.inf = self.neg = 0
        self.min = math.inf
        self.max = -math.inf

    def merge_row(self, nan: int, inf: int, neg: int, lo: float, hi: float) -> None:
        self.nan += nan
        self.inf += inf
        self.neg += neg
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)

    def add_raw(self, arr: np.ndarray | memoryview, dtype: str, negatives: bool) -> None:
        """Fold one streamed piece in (`negatives`: count values below zero too)."""
        part = kernels.stats_partial(arr, dtype, moments=False, table=_table(dtype),
                                     negatives=negatives)
        if part is not None:  # the fused kernel, if built
            neg = part.neg if part.min < 0 else 0
            self.merge_row(part.nan, part.inf, neg, part.min, part.max)
            return
        arr = _array(arr, dtype)
        if dtype == "bfloat16":  # the common all-finite case: integer reductions, no widening
            r = bf16_range(arr)
            if r is not None:
                lo, hi = r
                neg = int(np.count_nonzero(arr > 0x8000)) if lo < 0 and negatives else 0
                self.merge_row(0, 0, neg, lo, hi)  # (above 0x8000: below -0.0)
                return
        if dtypes.DTYPES[dtype].kind == "complex":
            self.merge_row(int(np.count_nonzero(np.isnan(arr))),
                           int(np.count_nonzero(np.isinf(arr))), 0, math.inf, -math.inf)
            return
        x, nan, inf, lo, hi = split_nonfinite(as_float(arr, dtype))
        neg = int(np.count_nonzero(x < 0)) if lo < 0 and negatives else 0
        self.merge_row(nan, inf, neg, lo, hi)

    def result(self) -> ScanStats:
        have = self.min <= self.max
        return ScanStats(self.nan, self.inf, self.neg, self.min if have else None,
                         self.max if have else None)


# ---- diff kernels --------------------------------------------------------------------------

_BLOCK = 1 << 16  # elements per inner step: float64 temporaries stay in cache
_ENV_SHIFT = 45  # float64 bits kept for an envelope bucket: sign, exponent, 7 mantissa bits


class DiffAccumulator:
    """Diff metrics of one entry pair, fed only the chunks whose bytes differ.

    Chunks that are byte-identical add nothing but `equal_elems`; the caller fills in the norms of
    those parts later when the entry turns out to differ (see `bufinspect.diff`). With `envelope`
    on, it also keeps, per bucket of |b| (7 mantissa bits), the largest |a-b|: enough to re-judge
    `|a-b| <= atol + rtol*|b|` for other tolerances (see `rejudge`).
    """

    __slots__ = ("rtol", "atol", "max_abs", "max_rel", "sum_abs", "sum_d2", "aa", "ab", "bb",
                 "mismatched", "nonfinite", "diff_elems", "equal_elems", "envelope")

    def __init__(self, rtol: float, atol: float, envelope: bool = False):
        self.rtol, self.atol = rtol, atol
        self.max_abs = self.max_rel = self.sum_abs = self.sum_d2 = 0.0
        self.aa = self.ab = self.bb = 0.0
        self.mismatched = self.nonfinite = self.diff_elems = self.equal_elems = 0
        self.envelope: dict[int, float] | None = {} if envelope else None

    def add(self, a: np.ndarray, b: np.ndarray, dtype: str) -> None:
        """Compare one chunk pair (raw elements as streamed) in float64."""
        if self.envelope is None:
            part = kernels.diff_partial(a, b, dtype, self.rtol, self.atol, table=_table(dtype))
            if part is not None:  # the fused kernel, if built
                self.add_partial(part)
                return
        cplx = dtypes.DTYPES[dtype].kind == "complex"
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            for i in range(0, a.size, _BLOCK):
                pa, pb = a[i: i + _BLOCK], b[i: i + _BLOCK]
                if cplx:
                    self._add(widen64(pa, dtype), widen64(pb, dtype), None)
                else:
                    w = _work(pa.size)
                    np.copyto(w[0], _narrow(pa, dtype), casting="unsafe")
                    np.copyto(w[1], _narrow(pb, dtype), casting="unsafe")
                    self._add(w[0], w[1], w)

    def _add(self, fa: np.ndarray, fb: np.ndarray, w) -> None:
        # reusable scratch (`w`): fresh temporaries cost a page fault per 4 KiB on every call
        n = fa.size
        if w is None:
            w = (None, None, np.empty(n), np.empty(n), np.empty(n), np.empty(n, bool))
        d, absb, t, mask = w[2], w[3], w[4], w[5]
        self.diff_elems += n
        np.subtract(fa, fb, out=d) if fa.dtype != np.complex128 else None
        if fa.dtype == np.complex128:
            d[...] = np.abs(fa - fb)
        else:
            np.abs(d, out=d)
        np.abs(fb, out=absb)
        bad_extra = 0
        if not (np.isfinite(np.add.reduce(d)) and np.isfinite(np.add.reduce(absb))):
            nan_a, nan_b = np.isnan(fa), np.isnan(fb)
            same = (fa == fb) | (nan_a & nan_b)  # equal infinities, NaN in the same place
            odd = ~same & ~np.isfinite(d)  # a new/removed NaN, or inf against anything else
            bad_extra = int(np.count_nonzero(odd))
            self.nonfinite += bad_extra
            d[same | odd] = 0.0
            absb[odd | ~np.isfinite(absb)] = 0.0
            fa = np.where(odd | same & ~np.isfinite(fa), 0.0, fa)
            fb = np.where(odd | same & ~np.isfinite(fb), 0.0, fb)
        np.multiply(absb, self.rtol, out=t)
        np.add(t, self.atol, out=t)
        np.greater(d, t, out=mask)
        self.mismatched += int(np.count_nonzero(mask)) + bad_extra
        mx = float(np.maximum.reduce(d)) if n else 0.0
        if mx > 0:
            self.max_abs = max(self.max_abs, mx)
            np.divide(d, absb, out=t)  # 0/0 gives NaN, which fmax skips
            rel = float(np.fmax.reduce(t))
            self.max_rel = max(self.max_rel, 0.0 if rel != rel else rel)
            self.sum_abs += float(np.add.reduce(d))
            self.sum_d2 += _dot(d, d)
            if self.envelope is not None:
                self._envelope(d, absb)
        if fa.dtype == np.complex128:
            self.aa += float(np.vdot(fa, fa).real)
            self.ab += float(np.vdot(fb, fa).real)
            self.bb += float(np.vdot(fb, fb).real)
        else:
            self.aa += _dot(fa, fa)
            self.ab += _dot(fb, fa)
            self.bb += _dot(fb, fb)

    def _envelope(self, d: np.ndarray, absb: np.ndarray) -> None:
        sel = d > 0
        keys = np.ascontiguousarray(absb[sel], np.float64).view(np.uint64) >> np.uint64(_ENV_SHIFT)
        lo = int(keys.min())
        top = np.full(int(keys.max()) - lo + 1, -1.0)
        np.maximum.at(top, (keys - np.uint64(lo)).astype(np.intp), d[sel])
        env = self.envelope
        for k in np.flatnonzero(top >= 0):
            key = lo + int(k)
            env[key] = max(env.get(key, 0.0), float(top[k]))

    def add_partial(self, p: "kernels.DiffPartial") -> None:
        """Fold in one piece's metrics from the fused kernel (or its torch twin)."""
        self.diff_elems += p.elems
        self.max_abs = max(self.max_abs, p.max_abs)
        self.max_rel = max(self.max_rel, p.max_rel)
        self.sum_abs += p.sum_abs
        self.sum_d2 += p.sum_d2
        self.aa += p.aa
        self.ab += p.ab
        self.bb += p.bb
        self.mismatched += p.mismatched
        self.nonfinite += p.nonfinite

    def add_equal(self, n: int) -> None:
        """Count `n` elements that were byte-identical (their norms come later, if needed)."""
        self.equal_elems += n

    def merge(self, other: "DiffAccumulator") -> None:
        """Fold in another chunk's accumulator of the same entry. Callers merge chunks in file
        order, so the sums (and the report) do not depend on how work was split."""
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.sum_abs += other.sum_abs
        self.sum_d2 += other.sum_d2
        self.aa += other.aa
        self.ab += other.ab
        self.bb += other.bb
        self.mismatched += other.mismatched
        self.nonfinite += other.nonfinite
        self.diff_elems += other.diff_elems
        self.equal_elems += other.equal_elems
        if self.envelope is not None and other.envelope:
            for key, d in other.envelope.items():
                self.envelope[key] = max(self.envelope.get(key, 0.0), d)

    def envelope_points(self) -> list[list[float]]:
        """The kept buckets as [|b| low, |b| high, max |a-b|], dominated buckets dropped."""
        out: list[list[float]] = []
        best = -1.0
        for key in sorted(self.envelope or ()):
            d = self.envelope[key]
            if d > best:
                lo = float(np.uint64(key << _ENV_SHIFT).view(np.float64))
                hi = float(np.uint64((key + 1) << _ENV_SHIFT).view(np.float64))
                out.append([lo, hi, d])
                best = d  # a bucket with larger |b| and no larger max can never decide anything
        return out


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """Dot product without BLAS: idle OpenBLAS threads made small dots ~90x slower here."""
    return float(np.einsum("i,i->", x, y))


_WORK = threading.local()


def _work(n: int) -> tuple[np.ndarray, ...]:
    """Views of n elements into this thread's reusable scratch (a, b, d, |b|, t, mask)."""
    w = getattr(_WORK, "arrays", None)
    if w is None:
        w = _WORK.arrays = [np.empty(_BLOCK) for _ in range(5)] + [np.empty(_BLOCK, bool)]
    return tuple(x[:n] for x in w)


def _narrow(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Raw elements in a dtype numpy can cast to float64 (bf16/fp8/fp16 widened, bool as 0/1)."""
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if dtypes.DTYPES[dtype].kind == "float":
        return as_float(arr, dtype)
    return arr


def widen64(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Raw streamed elements as float64 (complex128 for complex dtypes, 0/1 for bool)."""
    kind = dtypes.DTYPES[dtype].kind
    if kind == "complex":
        return arr.astype(np.complex128)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    if kind == "float":
        arr = as_float(arr, dtype)
    return arr.astype(np.float64)


def rejudge(points: list[list[float]], rtol: float, atol: float) -> bool | None:
    """Decide from envelope points whether every element meets `|a-b| <= atol + rtol*|b|`.

    True: all within; False: some element is not; None: too close to the boundary to tell
    from the buckets (within rtol * |b| * 2**-7 of it).
    """
    upper = max((d - rtol * lo for lo, _, d in points), default=0.0)
    if upper <= atol:
        return True
    lower = max((d - rtol * hi for _, hi, d in points), default=0.0)
    if lower > atol:
        return False
    return None
