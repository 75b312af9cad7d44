"""The numpy scan and the torch scan (the GPU path's kernels) agree exactly, on every dtype."""

from __future__ import annotations

import math

import pytest
import torch

import bufinspect
from bufinspect.model import ScanStats
from bufinspect.scan import checkscan as checking
from conftest import SAMPLES
from helpers import DTYPES, planted  # noqa: F401


def _same(a: ScanStats, b: ScanStats) -> bool:
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
