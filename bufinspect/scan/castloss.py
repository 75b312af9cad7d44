"""What a dtype change cost (fp32 -> fp16, bf16, ...), for `diff` entries of status `dtype`.

Two measures. A against B, as for a changed entry (the same metrics in float64, with the
entry's tolerances). And the cast alone: A against A cast to B's dtype here (round to nearest
even, as torch's `.to()` does), so a reader can tell "the cast lost 5e-4" from "the values moved
too": `cast` = {max_abs, max_rel, overflow (finite in A, infinite after the cast), underflow
(non-zero in A, zero after it), exact (B holds exactly A cast)}. Both sides stream in element
order a few MiB at a time: memory stays flat whatever the tensor's size.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from bufinspect import dtypes
from bufinspect.model import Entry

_KINDS = ("float", "int", "uint", "bool")


def measurable(a: Entry, b: Entry) -> bool:
    """Real numbers on both sides, same shape, data readable: the cast can be measured."""
    from bufinspect.formats import stream

    ka, kb = dtypes.DTYPES.get(a.dtype), dtypes.DTYPES.get(b.dtype)
    return (ka is not None and kb is not None and ka.kind in _KINDS and kb.kind in _KINDS
            and ka.numpy is not None and kb.numpy is not None and a.shape == b.shape
            and stream.readable(a) and stream.readable(b))


def _as_f64(arr, dtype: str):
    import numpy as np

    from bufinspect.numeric import as_float

    return np.asarray(as_float(arr, dtype), dtype=np.float64)


def _side(e: Entry) -> Iterator[Any]:
    """`e`'s elements in C order as float64 chunks (copies: the reader reuses its buffers)."""
    from bufinspect.formats import stream

    if e.data is not None and e.data.part_boxes:  # chunks out of element order (DCP columns)
        yield _as_f64(stream.read_array(e), e.dtype)
        return
    for _, _, arr in stream.pieces([e], prefetch=False):
        yield _as_f64(arr, e.dtype)


def _paired(a: Entry, b: Entry) -> Iterator[tuple[Any, Any]]:
    """Equal-length float64 chunks of A and B, in step."""
    import numpy as np

    ga, gb = _side(a), _side(b)
    ra = rb = np.empty(0)
    while True:
        if ra.size == 0:
            ra = next(ga, None)
        if rb.size == 0:
            rb = next(gb, None)
        if ra is None or rb is None:
            return
        n = min(ra.size, rb.size)
        yield ra[:n], rb[:n]
        ra, rb = ra[n:], rb[n:]


def cast_to(x, dtype: str):
    """float64 values `x` after a cast to `dtype`, back in float64 (None: not modelled here)."""
    import numpy as np

    if dtype == "float64":
        return x
    if dtype in ("float32", "float16"):
        with np.errstate(over="ignore", invalid="ignore"):
            return x.astype(np.float32 if dtype == "float32" else np.float16).astype(np.float64)
    if dtype == "bfloat16":  # round to nearest even on the float32 bits, as torch does
        with np.errstate(over="ignore", invalid="ignore"):
            u = x.astype(np.float32).view(np.uint32)
        r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
             & np.uint32(0xFFFF0000))
        r = np.where(np.isnan(x), np.uint32(0x7FC00000), r)
        return r.view(np.float32).astype(np.float64)
    kind = dtypes.DTYPES[dtype].kind
    if kind == "bool":
        return (x != 0).astype(np.float64)
    if kind in ("int", "uint"):
        with np.errstate(invalid="ignore"):
            return np.trunc(x)
    return None  # float8 and the like: only A against B


def measure(a: Entry, b: Entry, rtol: float, atol: float) -> dict[str, Any]:
    """DiffEntry fields for a dtype change: max_abs, max_rel, mean_abs, rel_l2, cosine,
    mismatched, numel, nonfinite (A against B), and `cast` (A against A cast, see above)."""
    import numpy as np

    numel = a.numel
    max_abs = max_rel = 0.0
    sum_abs = sum_d2 = bb = aa = ab = 0.0
    mismatched = nonfinite = overflow = underflow = 0
    cast_abs = cast_rel = 0.0
    exact = modelled = True
    for x, y in _paired(a, b):
        c = cast_to(x, b.dtype) if modelled else None
        if c is None:
            modelled = False
        else:
            fx, fc = np.isfinite(x), np.isfinite(c)
            ok = fx & fc
            overflow += int(np.count_nonzero(fx & ~fc))
            underflow += int(np.count_nonzero(ok & (x != 0) & (c == 0)))
            e = np.abs(x[ok] - c[ok])
            if e.size:
                cast_abs = max(cast_abs, float(e.max()))
                with np.errstate(divide="ignore", invalid="ignore"):
                    cast_rel = max(cast_rel, float(np.where(e == 0, 0.0, e / np.abs(x[ok])).max()))
            exact = exact and bool(np.array_equal(c, y, equal_nan=True))
        fx, fy = np.isfinite(x), np.isfinite(y)
        both = fx & fy
        # NaN equal to NaN in the same place, inf equal to inf of the same sign
        same_special = ~both & ((np.isnan(x) & np.isnan(y)) | (x == y))
        nonfinite += int(np.count_nonzero(~both & ~same_special))
        xs, ys = x[both], y[both]
        d = np.abs(xs - ys)
        if d.size:
            max_abs = max(max_abs, float(d.max()))
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(d == 0, 0.0, d / np.abs(ys))
            max_rel = max(max_rel, float(rel.max()))
            sum_abs += float(d.sum())
            sum_d2 += float(np.dot(d, d))
            bb += float(np.dot(ys, ys))
            aa += float(np.dot(xs, xs))
            ab += float(np.dot(xs, ys))
            mismatched += int(np.count_nonzero(d > atol + rtol * np.abs(ys)))
    mismatched += nonfinite
    rel_l2 = math.sqrt(sum_d2) / math.sqrt(bb) if bb else (0.0 if sum_d2 == 0 else math.inf)
    cosine = max(-1.0, min(1.0, ab / math.sqrt(aa * bb))) if aa > 0 and bb > 0 else None
    return {"numel": numel, "max_abs": max_abs, "max_rel": max_rel,
            "mean_abs": sum_abs / numel if numel else 0.0, "rel_l2": rel_l2, "cosine": cosine,
            "mismatched": mismatched, "nonfinite": nonfinite,
            "cast": ({"max_abs": cast_abs, "max_rel": cast_rel, "overflow": overflow,
                      "underflow": underflow, "exact": exact} if modelled else None)}
