"""Files made by torch's own utilities (prune, old and new spectral / weight norm, keep_vars,
torch.distributed.checkpoint's get_state_dict, fused QAT and converted quantized models, training
dicts with MultiStepLR), compared with the live modules: no wrong definite role, and every tensor
that the file's evidence can decide decided by the rule named in `show --explain`."""

from __future__ import annotations

import pytest

import realworld_helpers as rw

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("realworld-torch")
    torch.manual_seed(0)
    with rw.quiet():
        built = rw.torch_utility_cases(folder)
    return {name: (path, model, kw) for name, path, model, kw in built}


# what no evidence in the file decides: a module's own extra tensors that could be a frozen
# parameter or a buffer (a root buffer beside parameters, a scalar after a layer's parameters)
UNDECIDABLE = {
    "dcp_get_state_dict": {"ema", "2.temperature"},
    "dcp_folder": {"ema", "2.temperature"},
    "alignment_train": {"1.running_gain"},
}


@pytest.mark.parametrize("name", [
    "prune", "prune_module", "spectral_norm_old_nobias", "weight_norm_old_nobias",
    "parametrizations", "parametrizations_train", "keep_vars", "dcp_get_state_dict",
    "dcp_folder", "alignment_train", "qat_fused", "quantized_converted",
    "detection_training_dict"])
def test_roles_match_the_live_module(cases, name):
    path, model, kw = cases[name]
    s = rw.score(name, path, model, **kw)
    assert s.readable, s.error
    assert s.tensors > 0
    assert s.wrong == []
    assert s.persistence == []
    assert {u.split(" ")[0] for u in s.unknown} == UNDECIDABLE.get(name, set())


def _explain(cli_json, path):
    doc = cli_json("show", path)
    return {(e["container"], e["key"]): (e["role"], e["evidence"]) for e in doc["entries"]}


def test_evidence_names_each_rule(cases, cli_json, cli):
    got = _explain(cli_json, cases["prune"][0])
    assert got[("", "0.weight_orig")] == ("parameter", "layer:prune:Conv")
    assert got[("", "0.weight_mask")] == ("buffer", "layer:prune:Conv")
    assert got[("", "3.weight_mask")][1].startswith("layer:prune:")

    got = _explain(cli_json, cases["spectral_norm_old_nobias"][0])
    assert got[("", "0.weight_orig")] == ("parameter", "layer:spectral_norm:Conv")
    assert got[("", "0.weight_u")] == ("buffer", "layer:spectral_norm:Conv")
    got = _explain(cli_json, cases["weight_norm_old_nobias"][0])
    assert got[("", "0.weight_g")] == ("parameter", "layer:weight_norm:Conv")

    got = _explain(cli_json, cases["parametrizations"][0])  # Conv1d over dim 2, Conv3d
    assert got[("", "0.parametrizations.weight.original0")] == (
        "parameter", "layer:ParametrizationList")
    assert got[("", "3.parametrizations.weight.original1")][0] == "parameter"

    got = _explain(cli_json, cases["keep_vars"][0])
    assert got[("", "scale")] == ("buffer", "pickle:keep_vars")
    assert got[("", "0.weight")] == ("parameter", "pickle:Parameter")

    got = _explain(cli_json, cases["dcp_get_state_dict"][0])
    assert got[("model", "2.weight")] == ("parameter", "optimizer:param_names")
    got = _explain(cli_json, cases["dcp_folder"][0])  # DCP keeps param_groups as bytes
    assert got[("model", "2.weight")] == ("parameter", "optimizer:state-names")

    got = _explain(cli_json, cases["alignment_train"][0])
    assert got[("model", "1.gain")] == ("parameter", "optimizer:state-shapes")
    assert got[("model", "1.running_gain")] == ("unknown", "none")

    got = _explain(cli_json, cases["qat_fused"][0])
    assert got[("", "features.0.0.weight")] == ("parameter", "layer:ConvBn|ConvBnReLU")
    assert got[("", "features.0.0.bias")] == ("parameter", "layer:ConvBn|ConvBnReLU")

    doc = cli_json("show", cases["quantized_converted"][0])
    assert [c["kind"] for c in doc["containers"]] == ["state_dict"]  # not loose tensors
    got = {e["key"]: (e["role"], e["evidence"]) for e in doc["entries"]}
    assert got["quant.scale"][0] == "buffer" and got["quant.zero_point"][0] == "buffer"
    assert got["classifier.1.scale"] == ("buffer", "layer:quantized.Linear")
    assert got["features.1.0.scale"][0] == "buffer"
    # the packed bias is pickled as an nn.Parameter object; the qint8 weight precedes it
    assert got["features.1.0.bias"] == ("parameter", "pickle:Parameter")

    r = cli("show", cases["prune"][0], "--explain")
    assert r.exit_code == 0 and "layer:prune:Conv" in r.stdout


def test_training_dict_with_multisteplr_reads_and_reports_counter(cases, cli_json):
    path = cases["detection_training_dict"][0]
    doc = cli_json("show", path)
    assert doc["calls"] == [{"name": "collections.Counter", "count": 1}]
    assert {c["path"] for c in doc["containers"]} >= {"model", "optimizer"}
    torch_keys = set(torch.load(path, weights_only=True)["model"])  # torch opens it too
    assert {e["key"] for e in doc["entries"] if e["container"] == "model"} == torch_keys
