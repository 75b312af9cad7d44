"""`--model MODULE:FACTORY`, `bufinspect annotate`, `bufinspect.save`: exact roles from the
user's model, written once and read back as `metadata:bufinspect`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import bufinspect
from bufinspect.model import Role
from helpers import Zoo, matrix_model, truth

FACTORIES = '''
import sys
sys.path.insert(0, {tests!r})
from helpers import Zoo, matrix_model
from torch import nn

def make():
    return matrix_model()

class WithExtra(nn.Module):
    def __init__(self):
        super().__init__()
        self.zoo = Zoo()
        self.register_buffer("needed", __import__("torch").zeros(2))
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "bi_factories.py").write_text(
        FACTORIES.format(tests=str(Path(__file__).parent)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("bi_factories", None)


def check_exact(doc_or_entries, model, persistence=True):
    want = truth(model)
    got = {e["key"]: e for e in doc_or_entries}
    for k, e in got.items():
        assert e["role"] == want[k][0].value, (k, e["evidence"])
        if persistence and e["role"] == "buffer":
            assert e["persistent"] is want[k][1]


def test_model_option_exact(factories, cli, cli_json):
    m = matrix_model()
    torch.save(m.state_dict(), factories / "m.pt")
    doc = cli_json("show", factories / "m.pt", "--model", "bi_factories:make")
    check_exact(doc["entries"], m)
    assert {e["evidence"] for e in doc["entries"]} == {"model:factory"}
    (match,) = doc["model"]["containers"]
    assert match["missing"] == [] and match["file_only"] == []
    assert match["nonpersistent_absent"] == ["zoo.cache"]
    import jsonschema
    from importlib import resources

    schema = json.loads(resources.files("bufinspect").joinpath("schema/bufinspect-1.json")
                        .read_text())
    jsonschema.validate(doc, schema)


def test_model_option_strips_wrapper_prefix(factories, cli_json):
    m = matrix_model()
    torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, factories / "ddp.pt")
    doc = cli_json("show", factories / "ddp.pt", "--model", "bi_factories:make")
    assert doc["model"]["containers"][0]["prefix"] == "module."
    assert all(e["evidence"] == "model:factory" for e in doc["entries"])


def test_model_option_missing_persistent_buffer(factories, cli):
    torch.save(Zoo().state_dict(), factories / "z.pt")
    r = cli("show", factories / "z.pt", "--model", "bi_factories:WithExtra", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert "warning" in r.stderr and "needed" in r.stderr
    doc = json.loads(r.stdout)
    match = doc["model"]["containers"][0]
    assert "needed" in match["missing"] and "zoo.cache" in match["nonpersistent_absent"]
    # the file's keys are `scale`, ...; the model's are `zoo.scale`: nothing matches at root
    assert match["file_only"]


def test_model_option_bad_spec(factories, cli):
    r = cli("show", factories / "x.pt", "--model", "nope")
    assert r.exit_code == 2
    torch.save(Zoo().state_dict(), factories / "z.pt")
    r = cli("show", factories / "z.pt", "--model", "no_such_module_xyz:make")
    assert r.exit_code == 2 and "cannot import" in r.stderr


def test_help_says_model_runs_code(cli):
    assert "RUNS YOUR CODE" in cli("show", "--help").stdout


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_annotate_then_read_without_model(factories, cli, cli_json, suffix):
    m = matrix_model()
    path = factories / f"m{suffix}"
    if suffix == ".pt":
        torch.save(m.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    before = bufinspect.load(path)
    r = cli("annotate", path, "--model", "bi_factories:make")
    assert r.exit_code == 0, r.stderr
    doc = cli_json("show", path)
    check_exact(doc["entries"], m)
    assert {e["evidence"] for e in doc["entries"]} == {"metadata:bufinspect"}
    if suffix == ".safetensors":  # the data is unchanged, byte for byte
        from safetensors.torch import load_file

        back = load_file(str(path))
        assert all(torch.equal(back[k], v) for k, v in m.state_dict().items())
        assert len(bufinspect.load(path).entries) == len(before.entries)


def test_stale_sidecar_is_ignored(factories, cli):
    z = Zoo()
    path = factories / "z.pt"
    bufinspect.save(z, path)
    assert {e.evidence for e in bufinspect.load(path).entries} == {"metadata:bufinspect"}
    z.ema.fill_(3.0)
    torch.save(z.state_dict(), path)  # the file changed; the sidecar is now stale
    assert "metadata:bufinspect" not in {e.evidence for e in bufinspect.load(path).entries}


def test_sidecar_that_does_not_fit_the_keys_is_ignored(factories):
    z = Zoo()
    path = factories / "z.pt"
    side = bufinspect.save(z, path)
    doc = json.loads(Path(side).read_text())
    doc["containers"][""]["roles"]["not_a_key"] = "parameter"
    Path(side).write_text(json.dumps(doc))
    assert "metadata:bufinspect" not in {e.evidence for e in bufinspect.load(path).entries}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_roundtrip_exact(tmp_path, suffix):
    m = matrix_model()
    m.tied = nn.Linear(6, 10, bias=False)
    m.tied.weight = m.emb.weight
    bufinspect.save(m, tmp_path / f"s{suffix}")
    got = bufinspect.load(tmp_path / f"s{suffix}").entries
    want = truth(m)
    assert {e.key for e in got} == set(m.state_dict())
    for e in got:
        assert e.role is want[e.key][0] and e.evidence == "metadata:bufinspect", e.key
    assert all(e.role is not Role.UNKNOWN for e in got)


def test_annotation_overrules_a_lookalike_layer(tmp_path):
    """A custom module whose keys look like Linear's, with `bias` a buffer: the saved roles win."""
    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2, 3))
            self.register_buffer("bias", torch.zeros(2))

    m = nn.Module()
    m.fake = Fake()
    # a plain state dict of this module is indistinguishable from a Linear's (see the report)
    bufinspect.save(m, tmp_path / "saved.pt")
    got = {e.key: e for e in bufinspect.load(tmp_path / "saved.pt").entries}
    assert got["fake.bias"].role is Role.BUFFER and got["fake.bias"].evidence == "metadata:bufinspect"
    assert got["fake.weight"].role is Role.PARAMETER
