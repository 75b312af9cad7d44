"""The fast stats kernel (bf16 integer checks, float32 row sums) against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

from bufinspect.numeric import StatsAccumulator, as_float


def _bf16(f: np.ndarray) -> np.ndarray:
    b = f.astype(np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def _raw(f: np.ndarray, dtype: str) -> np.ndarray:
    return _bf16(f) if dtype == "bfloat16" else f.astype(np.dtype(dtype))


def _stats(raw: np.ndarray, dtype: str, chunk: int, offset: int = 0):
    if offset:  # a piece that starts 2 bytes into its buffer
        buf = np.zeros(raw.nbytes + 8, np.uint8)
        v = np.frombuffer(buf.data, raw.dtype, raw.size, offset)
        v[...] = raw
        raw = v
    acc = StatsAccumulator("float")
    for i in range(0, raw.size, chunk):
        acc.add_raw(raw[i: i + chunk], dtype)
    return acc.result()


def _reference(raw: np.ndarray, dtype: str) -> dict:
    x = as_float(np.ascontiguousarray(raw), dtype).astype(np.float64)
    f = x[np.isfinite(x)]
    return {"min": f.min(), "max": f.max(), "mean": f.mean(), "std": f.std(ddof=1),
            "nan": int(np.isnan(x).sum()), "inf": int(np.isinf(x).sum()),
            "zeros": int((x == 0).sum())}


rng = np.random.default_rng(0)
N = 1_200_001  # several steps and pieces, odd
DATA = {
    "weights": rng.standard_normal(N) * 0.02,
    "offset 1e4": 1e4 + rng.standard_normal(N) * 0.5,
    "layernorm": 1 + rng.standard_normal(N) * 0.01,
    "positive": rng.random(N) + 1e-3,
    "negative": -rng.random(N) - 1e-3,
    "zeros": np.where(rng.random(N) < 0.1, 0.0, rng.standard_normal(N)),
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float16"])
@pytest.mark.parametrize("name", list(DATA))
@pytest.mark.parametrize("offset", [0, 2])
def test_matches_float64(dtype, name, offset):
    raw = _raw(DATA[name], dtype)
    if name == "zeros":
        raw[7] = 0x8000 if dtype == "bfloat16" else -0.0  # a negative zero counts too
    got, want = _stats(raw, dtype, 1 << 20, offset), _reference(raw, dtype)
    for k in ("min", "max", "nan", "inf", "zeros"):
        assert getattr(got, k) == want[k], k
    # float32 partials of 1024 terms: ~1e-7 of the magnitudes summed (the old whole-chunk dot
    # was off by 2e-5 in std on bf16 weights)
    assert abs(got.mean - want["mean"]) <= 1e-7 * (abs(want["mean"]) + want["std"])
    assert got.std == pytest.approx(want["std"], rel=1e-7)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_nonfinite_in_a_large_piece(dtype):
    raw = _raw(rng.standard_normal(N), dtype)
    if dtype == "bfloat16":
        raw[[10, 200_000, 300_000, 900_000]] = [0x7FC0, 0x7F80, 0xFF80, 0xFFC1]
    else:
        raw[[10, 200_000, 300_000, 900_000]] = [np.nan, np.inf, -np.inf, -np.nan]
    for chunk in (1 << 20, 200_001):
        got, want = _stats(raw, dtype, chunk), _reference(raw, dtype)
        assert (got.nan, got.inf, got.min, got.max) == (2, 2, want["min"], want["max"])
        assert got.std == pytest.approx(want["std"], rel=1e-7)


def test_small_tensors_batched_match_torch(tmp_path):
    """Whole small float tensors are reduced a batch at a time; each one's numbers must still be
    its own: NaN/Inf ones take the general path, zeros and signed zeros are counted, dtypes mix,
    and the result does not depend on --jobs."""
    import torch

    import bufinspect
    from bufinspect import scan

    g = torch.Generator().manual_seed(5)
    sd = {}
    for i in range(300):
        dt = (torch.float32, torch.float16, torch.bfloat16, torch.float64)[i % 4]
        t = torch.randn(1 + i * 7, generator=g) * (10.0 ** (i % 5)) + (1e4 if i % 7 == 0 else 0)
        if i % 11 == 0:
            t[0] = float("nan")
        if i % 13 == 0:
            t[-1] = float("-inf")
        if i % 3 == 0:
            t[t.numel() // 2] = -0.0 if i % 2 else 0.0
        sd[f"m{i}.running_mean"] = t.to(dt)
    sd["m.num_batches_tracked"] = torch.tensor(7)
    path = tmp_path / "small.pt"
    torch.save(sd, path)
    entries = bufinspect.load(str(path)).entries
    one = scan.tensor_stats(entries, jobs=1)
    assert scan.tensor_stats(entries, jobs=3) == one
    for key, t in sd.items():
        st = one[("", key)]
        x = t.double()
        f = x[torch.isfinite(x)]
        assert st.nan == int(torch.isnan(x).sum()) and st.inf == int(torch.isinf(x).sum()), key
        assert st.zeros == int((x == 0).sum()), key
        assert st.min == f.min().item() and st.max == f.max().item(), key
        assert st.mean == pytest.approx(f.mean().item(), rel=1e-12, abs=1e-12), key
        if f.numel() > 1:
            assert st.std == pytest.approx(f.std().item(), rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_squares_beyond_float32_fall_back_to_float64(dtype, monkeypatch):
    """Values whose float32 squares overflow (|x| > 1.8e19) must not turn std into inf: the
    numpy path (no compiled kernel) redoes such a piece in float64, as the kernel does."""
    from bufinspect import kernels

    f = rng.standard_normal(N)
    f[[5, 700_000]] = [-1e30, 3e25]
    raw = _raw(f, dtype)
    want = _reference(raw, dtype)
    for native in (True, False):
        if not native:
            monkeypatch.setattr(kernels, "_native", None)
        with np.errstate(over="ignore"):
            got = _stats(raw, dtype, 1 << 20)
        assert (got.min, got.max, got.zeros) == (want["min"], want["max"], want["zeros"])
        assert got.std == pytest.approx(want["std"], rel=1e-7), native
        assert abs(got.mean - want["mean"]) <= 1e-7 * (abs(want["mean"]) + want["std"])
