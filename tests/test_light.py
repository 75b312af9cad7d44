"""Without torch (the light core, `pip install bufinspect`): what needs torch says so in one line
naming the extra and exits 2, having run and written nothing; a GPU that goes unused for want of
torch is noted once on stderr; everything else gives the same output as with torch.

torch is hidden from this process by `sys.modules["torch"] = None` (every `import torch` then
raises ImportError, as on a machine without it); tests/test_install.py runs the same commands in
a real venv without torch.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from bufinspect import _torch

EXTRA = "pip install 'bufinspect[torch]'"


@pytest.fixture
def no_torch(monkeypatch):
    """Hide torch and its submodules, as if it were not installed (restored afterwards)."""
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(_torch, "_noted", False)
    assert not _torch.installed()


def one_line_naming_the_extra(result, feature: str) -> None:
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bufinspect: error: ") and feature in lines[0], lines[0]
    assert lines[0].endswith(EXTRA), lines[0]
    assert "Traceback" not in result.stderr


def test_installed_finds_torch_without_importing_it():
    assert _torch.installed()
    assert _torch.require("x") is torch


def test_model_options_need_torch(cli, no_torch, samples, tmp_path):
    sd = samples / "cnn_state_dict.pt"
    one_line_naming_the_extra(cli("show", sd, "--model", "sample_modules:SmallCNN"), "--model")
    one_line_naming_the_extra(cli("check", sd, "--model", "sample_modules:SmallCNN"), "--model")
    copy = tmp_path / "cnn.pt"
    shutil.copy(sd, copy)
    one_line_naming_the_extra(cli("annotate", copy, "--model", "sample_modules:SmallCNN"),
                              "--model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.pt"]  # no sidecar written
    hf = tmp_path / "hf"
    hf.mkdir()
    shutil.copy(samples / "cnn.safetensors", hf / "model.safetensors")
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    one_line_naming_the_extra(cli("show", hf / "model.safetensors", "--hf-config"), "--hf-config")


def test_device_cuda_needs_torch(cli, no_torch, samples):
    a, b = samples / "bn_before.pt", samples / "bn_after_train.pt"
    one_line_naming_the_extra(cli("check", a, "--device", "cuda"), "--device cuda")
    one_line_naming_the_extra(cli("diff", a, b, "--device", "cuda"), "--device cuda")
    one_line_naming_the_extra(cli("trend", a, b, "--device", "cuda"), "--device cuda")


def test_distributed_needs_torch(cli, no_torch, samples, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    a, b = samples / "bn_before.pt", samples / "bn_after_train.pt"
    for args in (("show", a, "--stats"), ("check", a), ("diff", a, b)):
        one_line_naming_the_extra(cli(*args, "--distributed"), "torch.distributed")


def test_save_needs_torch(tmp_path, monkeypatch):
    import bufinspect

    model = torch.nn.BatchNorm1d(3)
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(bufinspect.UsageError, match=r"bufinspect\.save needs torch.*"
                       r"pip install 'bufinspect\[torch\]'"):
        bufinspect.save(model, tmp_path / "bn.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["check", "diff", "trend"])
def test_gpu_without_torch_is_noted_once(cli, no_torch, samples, monkeypatch, command):
    """A GPU is present, torch is not: the pass runs on the CPU, one note says why, and the
    report is the one the CPU gives with torch installed."""
    paths = {"diff": [samples / "bn_before.pt", samples / "bn_after_train.pt"],
             "check": [samples / "cnn_cuda1.pt", samples / "bn_before.pt"],
             "trend": [samples / "bn_before.pt", samples / "bn_after_train.pt",
                       samples / "bn_after_eval.pt"]}[command]
    monkeypatch.setattr(_torch, "gpu_present", lambda: False)
    quiet = cli(command, *paths, "--format", "json")
    assert quiet.stderr == ""
    monkeypatch.setattr(_torch, "gpu_present", lambda: True)
    noted = cli(command, *paths, "--format", "json")
    assert noted.exit_code == quiet.exit_code == (0 if command == "trend" else 1)
    assert noted.stdout == quiet.stdout
    assert json.loads(noted.stdout).get("device", "cpu") == "cpu"
    lines = noted.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bufinspect: note: {command} ran on the CPU: "
                                                   "a GPU is present but torch is not installed")
    assert lines[0].endswith(f"{EXTRA} to use the GPU")
    again = cli(command, *paths, "--format", "json")  # once per process
    assert again.stderr == "" and again.stdout == quiet.stdout
    monkeypatch.setattr(_torch, "_noted", False)
    assert cli(command, *paths, "--device", "cpu", "--format", "json").stderr == ""  # asked


def test_no_note_when_torch_is_there(monkeypatch):
    monkeypatch.setattr(_torch, "gpu_present", lambda: True)
    monkeypatch.setattr(_torch, "_noted", False)
    assert _torch.cpu_note("auto", "check") is None


def test_gpu_present_reads_no_torch(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert _torch.gpu_present() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _torch.gpu_present() is False
