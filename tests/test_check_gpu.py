"""GPU path of `check` (marked `gpu`, skipped without CUDA): same findings and statistics as the
CPU path, and saved cuda indices this machine lacks are `missing-device`.

Run on a GPU machine with `scripts/gpu-check.sh` (or `python -m pytest -m gpu -q`).
"""

from __future__ import annotations

import json

import pytest
import torch

import bufinspect
from bufinspect.scan import checkscan
from make_samples import save_tagged
from conftest import SAMPLES
from helpers import planted

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SAMPLE_FILES = ["cnn_state_dict.pt", "cnn_state_dict_legacy.pt", "cnn.safetensors",
                "buffer_zoo_state_dict.pt", "buffer_zoo_module.pt", "train_adam.pt",
                "cnn_cuda1.pt", "bn_before.pt", "bn_after_train.pt", "bn_after_eval.pt"]




@pytest.fixture(params=["default", "all-on-gpu"])
def both(request, monkeypatch):
    """Check on the CPU and on the GPU (also with every piece, however small, sent to the GPU)."""
    if request.param == "all-on-gpu":
        monkeypatch.setattr(checkscan, "GPU_MIN_BYTES", 0)

    return run_both


def run_both(paths):
    paths = [str(p) for p in paths]
    return bufinspect.check(paths, device="cpu"), bufinspect.check(paths, device="auto")


def assert_identical(cpu, gpu):
    assert cpu.device == "cpu" and gpu.device == "cuda:0"
    assert cpu.findings == gpu.findings
    assert cpu.stats.keys() == gpu.stats.keys() and cpu.stats
    for k in cpu.stats:
        assert cpu.stats[k] == gpu.stats[k], k


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_samples_identical_on_cpu_and_gpu(both, name):
    assert_identical(*both([SAMPLES / name]))


def test_every_dtype_identical(both, tmp_path):
    planted(tmp_path / "planted.pt")
    cpu, gpu = both([tmp_path / "planted.pt"])
    assert_identical(cpu, gpu)
    assert {f.id for f in gpu.findings} >= {"nan", "inf", "negative-variance"}


def test_one_gigabyte_checkpoint_identical(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(3):  # 3 x 256 MiB float32
        t = torch.randn(64 << 20, generator=g)
        t[(i + 1) * 1_000_003] = float("nan")
        sd[f"block{i}.weight"] = t
    half = torch.randn(64 << 20, generator=g).bfloat16()  # 128 MiB bfloat16
    half[12345] = float("inf")
    sd["head.weight"] = half
    sd["bn.weight"] = torch.ones(256)
    sd["bn.bias"] = torch.zeros(256)
    sd["bn.running_mean"] = torch.zeros(256)
    sd["bn.running_var"] = torch.ones(256)
    sd["bn.running_var"][7] = -2.0
    sd["bn.num_batches_tracked"] = torch.tensor(5)
    path = tmp_path / "big.pt"
    torch.save(sd, path)
    del sd, half
    assert path.stat().st_size > 850 << 20  # 3 x 256 MiB float32 + 128 MiB bfloat16
    cpu, gpu = run_both([path])
    assert_identical(cpu, gpu)
    assert {f.id for f in gpu.findings} == {"nan", "inf", "negative-variance",
                                            "mixed-param-dtypes"}
    assert gpu.stats[(str(path), "", "block2.weight")].nan == 1


def test_missing_device_beyond_device_count(cli, tmp_path):
    n = torch.cuda.device_count()
    tag = f"cuda:{max(n, 3)}"  # cuda:3 on a 1-GPU machine
    sd = {"lin.weight": torch.randn(4, 4), "lin.bias": torch.randn(4)}
    path = tmp_path / "far_gpu.pt"
    save_tagged(sd, path, tag)
    r = cli("check", path, "--format", "json")
    assert r.exit_code == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["device"] == "cuda:0"
    found = {f["id"]: f for f in doc["findings"]}
    assert found["missing-device"]["severity"] == "error"
    assert sorted(found["missing-device"]["keys"]) == ["lin.bias", "lin.weight"]
    assert f"'{tag}': 'cuda:0'" in found["missing-device"]["message"]
    # torch agrees: loading onto the saved device fails here
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True)
    # the same verdict when the numeric scan is asked to run on the CPU
    r = cli("check", path, "--format", "json", "--device", "cpu")
    assert "missing-device" in {f["id"] for f in json.loads(r.stdout)["findings"]}


def test_existing_device_is_not_missing(cli, tmp_path):
    path = tmp_path / "gpu0.pt"
    save_tagged({"w": torch.randn(3)}, path, "cuda:0")
    r = cli("check", path, "--format", "json", "--device", "cuda")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["device"] == "cuda:0"
    assert [f["id"] for f in doc["findings"]] == ["gpu-saved"]
