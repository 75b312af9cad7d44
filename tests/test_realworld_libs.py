"""Real models from torchvision, timm, transformers, peft, accelerate and Lightning, saved the
ways their users save them (state dict, `torch.save(model)`, a training dict with an optimizer
and a MultiStepLR schedule, `save_pretrained`, `Accelerator.save_state`, a Lightning `.ckpt`),
compared with the live modules.

Each library is optional: its tests skip when it is not installed. Building the models takes a
few seconds per library on two cores, so the module is marked slow. Install them (without letting
pip replace torch) as the lead's report describes; realworld_helpers stubs torchvision's fake-kernel
registrations so that a CUDA torchvision wheel imports beside a CPU torch.
"""

from __future__ import annotations

import pytest

import realworld_helpers as rw

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

GROUPS = {
    "torchvision": rw.torchvision_models,
    "timm": rw.timm_models,
    "transformers": rw.hf_models,
}


def _build(folder, group):
    torch.manual_seed(0)
    if group == "peft":
        return rw.peft_cases(folder)
    if group == "lightning":
        return rw.lightning_cases(folder)
    if group == "accelerate":
        return rw.accelerate_cases(folder)
    return list(rw._library_cases(folder, GROUPS[group](), []))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(group):
        if group not in cache:
            with rw.quiet():
                cache[group] = {name: (path, model, kw) for name, path, model, kw in
                                _build(tmp_path_factory.mktemp(group), group)}
        return cache[group]

    return get


def _owner_class(model, key, rename):
    """The class of the live module that owns `key` (after HF renaming when needed)."""
    truth = rw.truth(model)
    if key not in truth and rename is not None:
        key = rename(key)
    module = key.rpartition(".")[0]
    return type(model.get_submodule(module)) if module else type(model), key


def _undecidable(model, unknown_keys):
    """Unknown keys that a known layer owns (those must be decided), FrozenBatchNorm's affine
    tensors excepted (buffers there, parameters in an old BatchNorm with the same layout)."""
    rename = None
    if hasattr(model, "base_model_prefix") and hasattr(model, "config"):
        from bufinspect.annotate import hf_key_renamer as key_renamer

        rename = key_renamer(model)
    bad = []
    for key in unknown_keys:
        cls, bare = _owner_class(model, key, rename)
        known = cls.__module__.startswith(("torch.nn.", "torch.ao.", "torchvision.ops"))
        frozen = "FrozenBatchNorm" in cls.__name__ and bare.rpartition(".")[2] in ("weight", "bias")
        if known and not frozen:
            bad.append(f"{key} ({cls.__module__}.{cls.__name__})")
    return bad


@pytest.mark.parametrize("group", ["torchvision", "timm", "transformers", "peft", "accelerate",
                                   "lightning"])
def test_no_wrong_role_and_known_layers_decided(built, group):
    cases = built(group)
    assert cases
    for name, (path, model, kw) in cases.items():
        kw = dict(kw)
        extra = kw.pop("extra", ())
        s = rw.score(name, path, model, extra=extra, **kw)
        assert s.readable, (name, s.error)
        if kw.get("module_state") is False:
            continue  # an optimizer / scheduler / RNG file: read, nothing to compare
        assert s.tensors > 0, name
        assert s.wrong == [], name
        assert s.persistence == [], name
        assert s.foreign == [], (name, s.foreign[:5])
        unknown = [u.split(" ")[0] for u in s.unknown]
        if name.endswith(".module") or name.endswith("+hf-config"):
            assert unknown == [], name  # the module itself, or the config-built model
        assert _undecidable(model, unknown) == [], name


def test_whole_module_pickles_read_with_their_calls(built, cli_json):
    tv = built("torchvision")
    doc = cli_json("show", tv["tv_vit_tiny.module"][0])
    calls = {c["name"]: c["count"] for c in doc["calls"]}
    assert calls["functools.partial"] >= 1  # norm_layer=partial(nn.LayerNorm, eps=1e-6)
    assert all(e["evidence"] == "module:pickled" for e in doc["entries"])

    timm_cases = built("timm")
    doc = cli_json("show", timm_cases["timm_eva02_tiny.module"][0])
    assert "timm.layers.format.Format" in {c["name"] for c in doc["calls"]}

    hf = built("transformers")
    doc = cli_json("show", hf["hf_bert.module"][0])
    assert "torch._C._nn.gelu" in doc["foreign_globals"]  # an activation kept as an attribute
    assert "calls" not in doc  # named, never called: nothing to report
    report = cli_json("check", hf["hf_bert.module"][0])
    assert report["ok"] is True and "pickle-calls" not in {f["id"] for f in report["findings"]}
    report = cli_json("check", tv["tv_vit_tiny.module"][0])
    assert "pickle-calls" in {f["id"] for f in report["findings"]}

    doc = cli_json("show", tv["tv_resnet18.training"][0])  # MultiStepLR keeps a Counter
    assert {"name": "collections.Counter", "count": 1} in doc["calls"]


def test_hf_config_lines_up_renamed_keys(built, cli_json):
    hf = built("transformers")
    path = hf["hf_detr.save_pretrained"][0]
    plain = cli_json("show", path)
    doc = cli_json("show", path, "--hf-config")
    match = doc["model"]["containers"][0]
    assert match["file_only"] == [] and match["missing"] == []
    assert match["matched"] == len(plain["entries"])
    assert all(e["evidence"] == "model:hf-config" for e in doc["entries"])
    # the file holds hub names the model does not use (transformers renames them on load)
    model_keys = set(rw.truth(hf["hf_detr.save_pretrained"][1]))
    assert sum(e["key"] not in model_keys for e in plain["entries"]) > 10
