"""The torch twins of the numpy kernels (scan.gpu), run on the CPU: the same accumulators, the
same numbers, so the GPU paths cannot drift from the CPU ones (on a GPU, test_check_gpu.py and
test_diff.py's cuda test compare whole reports)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bufinspect.numeric import DiffAccumulator
from bufinspect.scan.gpu import diff_kernel

RAW = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
       "bfloat16": np.uint16}


def _raw(t: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return t.to(getattr(torch, dtype)).numpy()


@pytest.mark.parametrize("dtype", sorted(RAW))
@pytest.mark.parametrize("nonfinite", [False, True])
def test_torch_diff_twin_matches_numpy(dtype, nonfinite):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50_000, generator=g)
    b = a + 1e-3 * torch.randn(50_000, generator=g)
    b[:100] = a[:100]  # equal elements
    if nonfinite:
        a[5], b[5] = float("nan"), float("nan")  # NaN in the same place: equal
        a[6], b[6] = 1.0, float("inf")  # a new inf
        a[7], b[7] = float("-inf"), float("-inf")
    ra, rb = _raw(a, dtype), _raw(b, dtype)
    cpu, twin = DiffAccumulator(1e-5, 1e-8), DiffAccumulator(1e-5, 1e-8)
    cpu.add(ra, rb, dtype)
    diff_kernel("cpu")(twin, ra, rb, dtype)
    for field in ("mismatched", "nonfinite", "diff_elems"):
        assert getattr(cpu, field) == getattr(twin, field), field
    for field in ("max_abs", "max_rel", "sum_abs", "sum_d2", "aa", "ab", "bb"):
        x, y = getattr(cpu, field), getattr(twin, field)
        assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-300), (field, x, y)
