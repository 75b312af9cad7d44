"""Readers that carry the module: pickled module, TorchScript and torch.export roles are exact."""

from __future__ import annotations

import warnings

import pytest

import torch
from torch import nn

import bufinspect
from bufinspect.model import Role
from helpers import Zoo, matrix_model, truth


def exact(path, model, persistence=True):
    want = truth(model)
    got = {e.key: e for e in bufinspect.load(path).entries}
    assert set(got) == set(want), set(got) ^ set(want)
    for k, e in got.items():
        assert e.role is want[k][0], (k, e.evidence)
        if persistence and e.role is Role.BUFFER:
            assert e.persistent is want[k][1], k
    return got


def test_pickled_module_matrix(tmp_path):
    m = matrix_model()
    del m.snp  # torch refuses to pickle parametrized modules
    torch.save(m, tmp_path / "m.pt")
    got = exact(tmp_path / "m.pt", m)
    assert got["zoo.cache"].persistent is False


def test_torchscript_matrix(tmp_path):
    m = matrix_model()
    for n in ("sync", "sn", "snp"):  # not scriptable (distributed checks, Python hooks)
        delattr(m, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(m), tmp_path / "m.ts")
    got = exact(tmp_path / "m.ts", m, persistence=False)  # TorchScript does not record it
    assert bufinspect.load(tmp_path / "m.ts").format.value == "torchscript"
    assert got["zoo.child.weight"].role is Role.BUFFER
    assert got["lstm.weight_ih_l1_reverse"].evidence == "module:torchscript"


class ExportNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.ln = nn.LayerNorm(3)
        self.emb = nn.Embedding(5, 3)
        self.zoo = Zoo()

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        y = self.ln(self.bn(x).mean(dim=(2, 3))) + self.emb(idx).sum(0)
        z = self.zoo
        y = y.sum() + (z.scale * z.frozen + z.ema + z.cache).sum() + z.steps
        return y + (z.mask.float() * (z.child.gain_Δ.sum() + z.child.weight.sum())).sum()


def test_export_exact_with_persistence(tmp_path):
    m = ExportNet().eval()
    ep = torch.export.export(m, (torch.randn(2, 3, 4, 4), torch.tensor([1, 2])))
    torch.export.save(ep, tmp_path / "m.pt2")
    ck = bufinspect.load(tmp_path / "m.pt2")
    assert ck.format.value == "torch-export"
    got = exact(tmp_path / "m.pt2", m)
    assert got["zoo.cache"].persistent is False and got["zoo.ema"].persistent is True
    assert got["zoo.frozen"].role is Role.PARAMETER


def test_export_stats_read_raw_bytes(tmp_path, cli_json):
    m = ExportNet().eval()
    ep = torch.export.export(m, (torch.randn(2, 3, 4, 4), torch.tensor([1, 2])))
    torch.export.save(ep, tmp_path / "m.pt2")
    doc = cli_json("show", tmp_path / "m.pt2", "--stats")
    stats = {e["key"]: e["stats"] for e in doc["entries"]}
    w = m.emb.weight.detach()
    assert abs(stats["emb.weight"]["max"] - w.max().item()) < 1e-6
    assert abs(stats["emb.weight"]["mean"] - w.mean().item()) < 1e-6
    assert stats["zoo.cache"]["max"] == 3.0


def test_torchscript_stats(tmp_path, cli_json):
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    m[1].running_var.fill_(2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(m), tmp_path / "s.pt")
    doc = cli_json("show", tmp_path / "s.pt", "--stats")
    stats = {e["key"]: e["stats"] for e in doc["entries"]}
    assert stats["1.running_var"]["min"] == 2.5
    assert abs(stats["0.weight"]["max"] - m[0].weight.max().item()) < 1e-6


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _replace_member(src, dst, suffix, data):
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, data if info.filename.endswith(suffix) else zin.read(info))


def test_torchscript_pickle_that_calls_code_is_refused(tmp_path, cli):
    import pickle

    m = nn.Linear(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(m), tmp_path / "ok.pt")
    marker = tmp_path / "ran"
    _replace_member(tmp_path / "ok.pt", tmp_path / "bad.pt", "/data.pkl",
                    pickle.dumps({"x": _Boom(marker)}, protocol=2))
    r = cli("show", tmp_path / "bad.pt")
    assert r.exit_code == 2 and "refusing" in r.stderr
    assert not marker.exists()


def test_export_never_unpickles_sample_inputs(tmp_path):
    import pickle

    m = ExportNet().eval()
    ep = torch.export.export(m, (torch.randn(2, 3, 4, 4), torch.tensor([1, 2])))
    torch.export.save(ep, tmp_path / "ok.pt2")
    marker = tmp_path / "ran"
    _replace_member(tmp_path / "ok.pt2", tmp_path / "bad.pt2", "sample_inputs/model.pt",
                    pickle.dumps(_Boom(marker)))
    exact(tmp_path / "ok.pt2", m)  # real sample inputs are scanned and pass
    with pytest.raises(bufinspect.UnsafeInputError, match="sample_inputs"):
        bufinspect.load(tmp_path / "bad.pt2")  # scanned by the restricted unpickler, refused
    assert not marker.exists()
