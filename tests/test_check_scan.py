"""The numpy scan and the torch scan (the GPU path's kernels) agree exactly, on every dtype."""

from __future__ import annotations

import math

import pytest
import torch

import bufinspect
from bufinspect import check as checking
from conftest import SAMPLES

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
          torch.float8_e5m2, torch.complex64]


def planted(path):
    """Tensors of every scanned dtype with NaN, +-Inf and negatives, some larger than a chunk."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for dt in DTYPES:
        name = str(dt).removeprefix("torch.")
        x = torch.randn(1000, generator=g)
        x[[3, 50]] = float("nan")
        x[7] = float("inf")
        x[8] = float("-inf")
        sd[f"{name}.running_var"] = x.to(dt)
    big = torch.randn(1_500_000, generator=g)  # 6 MB: streamed in two chunks
    big[[10, 1_400_000]] = float("nan")
    big[1_200_000] = -1e30
    sd["big.weight"] = big
    sd["strided.weight"] = torch.randn(64, 64, generator=g).t()  # saved as a non-contiguous view
    # finite bfloat16 takes the integer fast path: signed zeros, all-negative, all-positive
    clean = torch.randn(5000, generator=g)
    clean[0], clean[1] = -0.0, 0.0
    sd["bf16clean.running_var"] = clean.to(torch.bfloat16)
    sd["bf16neg.running_var"] = (-(torch.rand(3000, generator=g) + 0.1)).to(torch.bfloat16)
    sd["bf16pos.weight"] = torch.rand(1_200_000, generator=g).to(torch.bfloat16)  # > a chunk
    torch.save(sd, path)
    return sd


def _same(a: checking.ScanStats, b: checking.ScanStats) -> bool:
    return (a.nan, a.inf, a.negative) == (b.nan, b.inf, b.negative) and \
        (a.min == b.min or (a.min is None and b.min is None)) and a.max == b.max


def test_numpy_and_torch_kernels_agree(tmp_path):
    sd = planted(tmp_path / "planted.pt")
    entries = [e for e in bufinspect.load(str(tmp_path / "planted.pt")).entries
               if checking.scannable(e)]
    assert len(entries) == len(sd)
    a = checking.scan_cpu(entries)
    b = checking.scan_gpu(entries, "cpu", min_bytes=0)
    for e in entries:
        assert _same(a[id(e)], b[id(e)]), (e.key, a[id(e)], b[id(e)])
        t = sd[e.key]
        t = t.float() if t.element_size() < 4 and not t.is_complex() else t
        assert a[id(e)].nan == int(torch.isnan(t).sum()), e.key
        assert a[id(e)].inf == int(torch.isinf(t).sum()), e.key
        if not t.is_complex():
            f = t.double()[torch.isfinite(t)]
            want = int((f < 0).sum()) if e.name == "running_var" else 0  # only where it matters
            assert a[id(e)].negative == want and (want or e.name != "running_var"), e.key
            assert a[id(e)].min == float(f.min()) and a[id(e)].max == float(f.max()), e.key


@pytest.mark.parametrize("name", ["cnn_state_dict.pt", "train_adam.pt", "bn_after_train.pt",
                                  "cnn.safetensors"])
def test_kernels_agree_on_samples(name):
    entries = [e for e in bufinspect.load(str(SAMPLES / name)).entries if checking.scannable(e)]
    a = checking.scan_cpu(entries)
    b = checking.scan_gpu(entries, "cpu", min_bytes=0)
    assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    assert all(math.isfinite(s.min) for s in a.values())
