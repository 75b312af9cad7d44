"""Roles against live torch modules: a matrix of real layers saved as plain state dicts, training
and Lightning-style checkpoints; the shipped layer table against a fresh introspection."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import bufinspect
from bufinspect.model import Role
from helpers import WeightBuffer, Zoo, matrix_model, truth  # noqa: F401


# keys a plain state dict cannot decide, with the reason (FORMATS.md: identical files exist for
# models where these are buffers and models where they are parameters)
UNDECIDABLE = {
    "zoo.scale": "custom float tensor before the first known buffer; nothing marks it",
    "zoo.frozen": "custom float tensor before the first known buffer; nothing marks it",
    "zoo.ema": "custom float tensor before the first known buffer; nothing marks it",
    "zoo.child.gain_Δ": "custom module, float tensors only, no known layer",
    "zoo.child.weight": "custom module, float tensors only, no known layer",
}


def check_plain(path, model, undecidable=UNDECIDABLE, container=None):
    want = truth(model)
    ck = bufinspect.load(path)
    got = {e.key: e for e in ck.entries if container is None or e.container == container}
    assert set(got) == set(model.state_dict()), path
    for key, e in got.items():
        if e.role is Role.UNKNOWN:
            assert key in undecidable, (path, key, e.evidence)
        else:
            assert e.role is want[key][0], (path, key, e.evidence)  # never a wrong definite role
            assert key not in undecidable or e.evidence.startswith(("optimizer", "order")), key
    return got


@pytest.fixture(scope="module")
def model():
    return matrix_model()


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_plain_state_dict_matrix(tmp_path, model, kind):
    sd = model.state_dict()
    path = tmp_path / f"m.{kind}"
    if kind == "zip":
        torch.save(sd, path)
    elif kind == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    got = check_plain(path, model)
    # every torch.nn / torch.ao layer decided, by its layer signature or dtype
    layer_keys = [k for k in got if not k.startswith("zoo.")]
    assert all(got[k].role is not Role.UNKNOWN for k in layer_keys)
    assert got["bn1.running_var"].evidence.startswith("layer:")
    assert got["zoo.steps"].evidence == "dtype:int64"
    assert all(e.persistent for e in got.values() if e.role is Role.BUFFER)


def test_state_dict_without_metadata_still_sound(tmp_path, model):
    """`dict(sd)` drops `_metadata`; sorted keys break the order: still no wrong role."""
    sd = model.state_dict()
    torch.save(dict(sd), tmp_path / "copy.pt")
    check_plain(tmp_path / "copy.pt", model)
    torch.save(dict(sorted(sd.items())), tmp_path / "sorted.pt")
    got = check_plain(tmp_path / "sorted.pt", model)
    assert not any(e.evidence.startswith("order") for e in got.values())


def test_order_rule(tmp_path):
    """Keys after a module's first known buffer are buffers; before a known parameter, params."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.ones(2))
            self.register_buffer("count", torch.zeros((), dtype=torch.int32))
            self.register_buffer("avg", torch.zeros(2))

    m = M()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    got = {e.key: e for e in bufinspect.load(tmp_path / "m.pt").entries}
    assert got["avg"].role is Role.BUFFER and got["avg"].evidence == "order:after-buffer"
    assert got["a"].role is Role.UNKNOWN  # nothing says it is not a buffer too
    # safetensors loses the order: the rule must not fire
    save_file(dict(m.state_dict()), str(tmp_path / "m.safetensors"))
    got = {e.key: e for e in bufinspect.load(tmp_path / "m.safetensors").entries}
    assert got["avg"].role is Role.UNKNOWN


def test_lookalike_layer_is_not_forced(tmp_path):
    """A BatchNorm-named module whose shapes do not fit the signature stays undecided."""
    m = nn.Module()
    m.bn = nn.Module()
    m.bn.register_buffer("weight", torch.ones(3))
    m.bn.bias = nn.Parameter(torch.ones(3))
    m.bn.running_mean = nn.Parameter(torch.ones(2, 2))
    m.bn.running_var = nn.Parameter(torch.ones(3))
    torch.save(m.state_dict(), tmp_path / "m.pt")
    got = bufinspect.load(tmp_path / "m.pt").entries
    assert {e.key: e.role for e in got} == {k: Role.UNKNOWN for k in
                                              ("bn.bias", "bn.running_mean", "bn.running_var",
                                               "bn.weight")}


def _trained(model):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # frozen ones too: they get no state
    loss = sum((p.float() ** 2).sum() for p in params)
    loss.backward()
    opt.step()
    return opt


def test_training_checkpoint_adam_places_every_trainable_parameter(tmp_path, model):
    m = matrix_model()
    opt = _trained(m)
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 1},
               tmp_path / "train.pt")
    got = check_plain(tmp_path / "train.pt", m, container="model")
    trainable = [k for k, p in m.named_parameters() if p.requires_grad]
    # zoo.scale [4] and zoo.child.gain_Δ [3] each have a same-shaped float buffer right after
    # them (zoo.ema, zoo.child.weight): a model where those are the trainable ones writes the
    # same file, so the alignment honestly leaves them undecided
    ambiguous = {"zoo.scale", "zoo.child.gain_Δ"}
    for k in trainable:
        if k not in ambiguous:
            assert got[k].role is Role.PARAMETER and got[k].evidence.startswith("optimizer:"), k


def test_training_checkpoint_custom_names(tmp_path):
    """Custom parameters with unusual names, placed by Adam's state shapes alone."""
    m = nn.Module()
    m.bn = nn.BatchNorm1d(3)
    m.custom = nn.Module()
    m.custom.α_gain = nn.Parameter(torch.ones(5))
    m.custom.register_buffer("stat", torch.zeros(2))
    m.custom.register_buffer("n", torch.zeros((), dtype=torch.int64))
    m.custom.sub = nn.Module()
    m.custom.sub.register_parameter("w_0", nn.Parameter(torch.ones(2, 2)))
    opt = _trained(m)
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "t.pt")
    got = check_plain(tmp_path / "t.pt", m, undecidable={"custom.stat": "float buffer, unmarked"},
                      container="model")
    for k, _ in m.named_parameters():
        assert got[k].evidence.startswith("optimizer:"), k


def test_optimizer_param_names(tmp_path):
    m = nn.Module()
    m.odd = nn.Parameter(torch.ones(3))
    m.register_buffer("also", torch.ones(3))
    opt = torch.optim.SGD(m.named_parameters(), lr=0.1)
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, tmp_path / "t.pt")
    got = {e.key: e for e in bufinspect.load(tmp_path / "t.pt").entries if e.container == "model"}
    assert got["odd"].role is Role.PARAMETER and got["odd"].evidence == "optimizer:param_names"
    assert got["also"].role is Role.UNKNOWN


def test_ambiguous_alignment_decides_only_what_every_alignment_agrees_on(tmp_path):
    """Two same-shaped float tensors, one optimizer parameter: either could be it, but `p` is a
    parameter in both alignments (if the entry is `b`, `p` precedes a parameter of its module);
    `b` is a parameter in one alignment only and stays unknown."""
    m = nn.Module()
    m.p = nn.Parameter(torch.ones(3))
    m.register_buffer("b", torch.ones(3))
    opt = torch.optim.Adam([m.p])
    m.p.grad = torch.ones(3)
    opt.step()
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "t.pt")
    got = {e.key: e for e in bufinspect.load(tmp_path / "t.pt").entries if e.container == "model"}
    assert got["p"].role is Role.PARAMETER and got["p"].evidence == "optimizer:state-shapes"
    assert got["b"].role is Role.UNKNOWN
    # without the state dict's order (a copied dict loses `_metadata`) nothing is decided
    torch.save({"model": dict(m.state_dict()), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    got = {e.key: e for e in bufinspect.load(tmp_path / "c.pt").entries if e.container == "model"}
    assert got["p"].role is Role.UNKNOWN and got["b"].role is Role.UNKNOWN


def test_lightning_checkpoint(tmp_path):
    m = matrix_model()
    opt = _trained(m)
    ckpt = {"epoch": 1, "global_step": 3, "pytorch-lightning_version": "2.6.0",
            "state_dict": m.state_dict(), "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [], "hyper_parameters": {"lr": 1e-3}}
    torch.save(ckpt, tmp_path / "m.ckpt")
    got = check_plain(tmp_path / "m.ckpt", m, container="state_dict")
    assert got["mha.in_proj_weight"].evidence.startswith("optimizer:")


def test_tied_parameters(tmp_path):
    m = nn.Module()
    m.emb = nn.Embedding(5, 3)
    m.w = nn.Parameter(torch.ones(7))
    m.out = nn.Linear(3, 5, bias=False)
    m.out.weight = m.emb.weight
    opt = _trained(m)
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "t.pt")
    got = check_plain(tmp_path / "t.pt", m, undecidable={}, container="model")
    assert got["w"].evidence == "optimizer:state-shapes"


def _layers_by_class(table: dict) -> dict[str, list[str]]:
    """class -> its signatures (canonical JSON, sorted): what roles.py reads from the table."""
    out: dict[str, list[str]] = {}
    for sig in table["signatures"]:
        body = json.dumps({k: v for k, v in sig.items() if k != "classes"}, sort_keys=True)
        for cls in sig["classes"]:
            out.setdefault(cls, []).append(body)
    return {cls: sorted(sigs) for cls, sigs in out.items()}


def layer_table_changes(shipped: dict, fresh: dict) -> list[str]:
    """Which layers differ between two tables, by content; the torch version stamp is ignored."""
    old, new = _layers_by_class(shipped), _layers_by_class(fresh)
    out = [f"{cls}: new in torch {fresh.get('torch')}" for cls in sorted(new.keys() - old.keys())]
    out += [f"{cls}: gone in torch {fresh.get('torch')}" for cls in sorted(old.keys() - new.keys())]
    for cls in sorted(old.keys() & new.keys()):
        if old[cls] != new[cls]:
            gone = [json.loads(s) for s in old[cls] if s not in new[cls]]
            added = [json.loads(s) for s in new[cls] if s not in old[cls]]
            out.append(f"{cls}: shipped {gone} -> now {added}")
    return out


def test_layer_table_changes_name_the_layers():
    """The comparison ignores the version stamp and names the layers whose signatures moved."""
    from bufinspect.formats.package_data import LAYER_TABLE

    shipped = json.loads(LAYER_TABLE.read_text())
    restamped = {**shipped, "torch": "99.0.0"}
    assert layer_table_changes(shipped, restamped) == []
    sigs = json.loads(json.dumps(shipped["signatures"]))
    bn = next(s for s in sigs if "BatchNorm2d" in s["classes"])
    bn["tensors"]["running_mean"][0] = "parameter"
    sigs.append({"classes": ["Brand_New"], "version": 1, "same_shape": [],
                 "tensors": {"w": ["parameter", 2, "float"]}})
    changed = layer_table_changes(shipped, {"torch": "99.0.0", "signatures": sigs})
    assert changed[0] == "Brand_New: new in torch 99.0.0"
    named = {line.partition(":")[0] for line in changed}
    assert {"BatchNorm1d", "BatchNorm2d", "SyncBatchNorm", "InstanceNorm2d"} <= named
    assert "Linear" not in named


def test_shipped_layer_table_is_current():
    """bufinspect/data/layers.json holds what a fresh introspection of the installed torch finds,
    whatever torch version wrote it: a difference is a finding (the layers that changed), not a
    version mismatch."""
    from helpers import layer_table

    from bufinspect.formats.package_data import LAYER_TABLE

    shipped = json.loads(LAYER_TABLE.read_text())
    fresh = json.loads(json.dumps(layer_table().introspect()))
    changes = layer_table_changes(shipped, fresh)
    assert not changes, (f"layer signatures differ from torch {fresh['torch']} (table written "
                         f"from torch {shipped.get('torch')}); review them, then run "
                         f"scripts/make_layer_table.py:\n" + "\n".join(changes))


def test_listing_does_not_import_torch(tmp_path, samples):
    import subprocess
    import sys

    code = ("import sys, bufinspect; ck = bufinspect.load(sys.argv[1]); "
            "assert 'torch' not in sys.modules; print(len(ck.entries))")
    out = subprocess.run([sys.executable, "-c", code, str(samples / "train_adam.pt")],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) == 42


def test_extra_state_tensor_gets_no_role(tmp_path):
    """`get_extra_state()` returning a tensor: after the buffers, yet not a buffer."""
    class Extra(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("n", torch.zeros((), dtype=torch.int64))

        def get_extra_state(self):
            return torch.ones(2)

        def set_extra_state(self, state):
            pass

    m = nn.Module()
    m.e = Extra()
    torch.save(m.state_dict(), tmp_path / "x.pt")
    got = {e.key: e for e in bufinspect.load(tmp_path / "x.pt").entries}
    assert got["e._extra_state"].role is Role.UNKNOWN
    assert got["e._extra_state"].evidence == "extra-state"
    assert got["e.n"].role is Role.BUFFER


def test_summary_counts_evidence_kinds(cli, cli_json, samples):
    doc = cli_json("show", samples / "train_adam.pt")
    assert doc["summary"]["evidence"] == {"container": 27, "layer": 6, "optimizer": 9}
    out = cli("show", samples / "train_adam.pt", "--explain").stdout
    assert "container 27, layer 6, optimizer 9" in out
    assert "optimizer:state-shapes" in out and "layer:BatchNorm" in out
