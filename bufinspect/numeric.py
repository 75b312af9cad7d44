"""Numeric kernels over streamed chunks (numpy only: `import torch` alone costs seconds)."""

from __future__ import annotations

import math
import threading
from functools import lru_cache
from typing import Iterable

import numpy as np

from bufinspect import dtypes
from bufinspect.model import Entry, TensorStats


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


@lru_cache(maxsize=8)
def _ones(n: int) -> np.ndarray:
    return np.ones(n, np.float32)


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
        self.min = min(self.min, float(lo))
        self.max = max(self.max, float(hi))
        n = x.size
        if self.kind == "float" and x.dtype == np.float32 and n > 65536:
            s = float(np.dot(x, _ones(n)))  # BLAS: twice the speed of np.add.reduce
            mean = s / n
            m2 = float(np.dot(x, x)) - s * mean
            if not (m2 > 1e-3 * abs(s * mean)):  # cancellation: redo this chunk in float64
                x64 = x.astype(np.float64)
                mean = float(x64.mean())
                m2 = float(np.dot(x64 - mean, x64 - mean))
        else:
            x64 = x.astype(np.float64)
            mean = float(x64.mean())
            d = x64 - mean
            m2 = float(np.dot(d, d))
        tot = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / tot
        self.m2 += m2 + delta * delta * self.n * n / tot
        self.n = tot

    def result(self) -> TensorStats:
        if self.n == 0:
            return TensorStats(None, None, None, None, self.nan, self.inf, self.zeros)
        std = math.sqrt(max(self.m2, 0.0) / (self.n - 1)) if self.n > 1 else 0.0
        return TensorStats(self.min, self.max, self.mean, std, self.nan, self.inf, self.zeros)


def stats_kind(e: Entry) -> str | None:
    d = dtypes.DTYPES.get(e.dtype)
    if d is None or d.kind in ("quantized", "packed") or e.dtype == "complex32":
        return None
    return d.kind


def tensor_stats(entries: Iterable[Entry], progress=None, jobs: int = 1
                 ) -> dict[tuple[str, str], TensorStats]:
    """Stream every entry once, in file order, and return its statistics.

    Entries whose data cannot be read (meta tensors, quantized, packed dtypes) get no stats.
    `progress(nbytes)` is called after each piece, for a progress bar. With `jobs` > 1 the
    entries are split into balanced groups streamed by `jobs` workers (`bufinspect.parallel`);
    the statistics are the same whatever `jobs` is.
    """
    entries = [e for e in entries if stats_kind(e) is not None]
    if jobs <= 1 or len(entries) <= 1:
        return _stats_serial(entries, progress)
    from functools import partial

    from bufinspect import parallel

    if not parallel.uses_threads():
        progress = None  # a callback cannot cross into worker processes
    merged: dict[tuple[str, str], TensorStats] = {}
    for part in parallel.map_entries(entries, partial(_stats_serial, progress=progress), jobs):
        merged.update(part)
    return {(e.container, e.key): merged[(e.container, e.key)] for e in entries
            if (e.container, e.key) in merged}


def _stats_serial(entries: list[Entry], progress=None) -> dict[tuple[str, str], TensorStats]:
    """One worker's pass: its own stream buffers, its own accumulators."""
    from bufinspect.formats import stream

    acc: dict[int, StatsAccumulator] = {}
    for e, _, arr in stream.pieces(entries):
        a = acc.get(id(e))
        if a is None:
            a = acc[id(e)] = StatsAccumulator(stats_kind(e))
        a.add(as_float(arr, e.dtype) if a.kind == "float" else arr)
        if progress is not None:
            progress(arr.nbytes)
    out = {}
    for e in entries:
        a = acc.get(id(e))
        if a is None and e.numel == 0:
            a = StatsAccumulator(stats_kind(e))
        if a is not None:
            out[(e.container, e.key)] = a.result()
    return out


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
