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



def stats_row(x, moments: bool = True):
    """The torch twin of the fused stats kernel (`kernels.stats_partial`) for one chunk: a float64
    row on the chunk's device (n finite, mean, m2, finite min, finite max, nan, inf, zeros,
    negatives), left there so a scan fetches all its rows at once (`stats_from_row`)."""
    import torch

    x = x.to(torch.float64)
    nan = torch.isnan(x)
    inf = torch.isinf(x)
    fin = ~(nan | inf)
    n = fin.sum()
    big = torch.tensor(math.inf, dtype=torch.float64, device=x.device)
    lo = torch.where(fin, x, big).amin() if x.numel() else big
    hi = torch.where(fin, x, -big).amax() if x.numel() else -big
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    mean = m2 = zero
    if moments:
        mean = torch.where(fin, x, zero).sum() / n.double().clamp(min=1)
        dev = torch.where(fin, x - mean, zero)
        m2 = torch.dot(dev, dev)
    return torch.stack([n.double(), mean, m2, lo, hi, nan.sum().double(), inf.sum().double(),
                        (x == 0).sum().double(), (fin & (x < 0)).sum().double()])


def stats_from_row(v: list[float]):
    """A `kernels.StatsPartial` from a fetched `stats_row`."""
    from bufinspect.kernels import StatsPartial

    return StatsPartial(int(v[0]), v[1], v[2], v[3], v[4], int(v[5]), int(v[6]), int(v[7]),
                        int(v[8]))


def range_row(x, negatives: bool):
    """The torch twin of `numeric.RangeAccumulator.add_raw` for one chunk: [nan, inf, negative,
    finite min, finite max] as a float64 tensor on the chunk's device, merged later with
    `RangeAccumulator.merge_row` (one transfer back per scan, not one per chunk). The fields of
    `stats_row`, the fused kernel's twin."""
    import torch

    if x.is_complex():
        inf = torch.tensor(math.inf, dtype=torch.float64, device=x.device)
        return torch.stack([torch.isnan(x).sum().double(), torch.isinf(x).sum().double(),
                            torch.zeros_like(inf), inf, -inf])
    row = stats_row(x, moments=False)
    neg = row[8] if negatives else torch.zeros_like(row[8])
    return torch.stack([row[5], row[6], neg, row[3], row[4]])


def diff_partial(fa, fb, rtol: float, atol: float):
    """The torch twin of the fused diff kernel (`kernels.diff_partial`) on two float64 tensors
    of any device: the same element rules (NaN in both places and equal infinities are equal; a
    new NaN, or an Inf against anything else, is `nonfinite`, mismatched, and zeroed in the
    sums), reduced on the device and fetched with one transfer."""
    import torch

    from bufinspect.kernels import DiffPartial

    zero = torch.zeros((), dtype=torch.float64, device=fa.device)
    d = (fa - fb).abs()
    absb = fb.abs()
    same = (fa == fb) | (torch.isnan(fa) & torch.isnan(fb))
    odd = ~same & ~torch.isfinite(d)
    d = torch.where(same | odd, zero, d)
    absb = torch.where(odd | ~torch.isfinite(absb), zero, absb)
    fa = torch.where(odd | (same & ~torch.isfinite(fa)), zero, fa)
    fb = torch.where(odd | (same & ~torch.isfinite(fb)), zero, fb)
    n = d.numel()
    rel = torch.where(d > 0, d / absb, zero)  # d / 0 = inf, as on the CPU
    row = torch.stack([
        d.max() if n else zero, rel.max() if n else zero, d.sum(), torch.dot(d, d),
        torch.dot(fa, fa), torch.dot(fb, fa), torch.dot(fb, fb),
        ((d > absb * rtol + atol).sum() + odd.sum()).double(), odd.sum().double()])
    v = row.tolist()
    return DiffPartial(n, v[0], v[1], v[2], v[3], v[4], v[5], v[6], int(v[7]), int(v[8]))


def diff_kernel(device: str = "cuda:0"):
    """The torch twin of `numeric.DiffAccumulator.add`: `diff_partial` on the device, folded in
    with `DiffAccumulator.add_partial` like the fused CPU kernel's partials. Returns
    `add(acc, a, b, dtype)`, or None when `device` is cuda and no GPU is usable. `device="cpu"`
    runs it on the host: tests compare it with the CPU kernels there."""
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

        acc.add_partial(diff_partial(up(a), up(b), acc.rtol, acc.atol))

    return add
