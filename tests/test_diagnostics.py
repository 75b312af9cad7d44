"""Buffer diagnostics (issue #17): each finding on its planted case, with its severity and exit
code, and never on a healthy checkpoint.

Every checkpoint here is made by real torch modules trained a few steps (eval mode, train mode,
frozen norms, EMA copies), and `--model` findings are compared with what
`load_state_dict(strict=False)` itself reports.
"""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from diag_models import INNet, ScaledCNN, wider_head
from sample_modules import SmallCNN

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"
DIAGNOSTICS = {"stats-at-init", "stats-never-tracked", "ema-buffers-stale", "missing-key",
               "unexpected-key", "shape-mismatch", "key-prefix"}
NORMS = (nn.modules.batchnorm._NormBase,)


# ---- making checkpoints ------------------------------------------------------------------


def train(model: nn.Module, steps: int, seed: int, *, norms: str = "train",
          size: tuple[int, ...] = (4, 3, 8, 8), lr: float = 0.05) -> nn.Module:
    """SGD steps. norms: `train` (the usual), `eval` (the whole model in eval mode, the bug),
    `frozen` (normalization layers in eval mode, the rest training)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train(norms != "eval")
    if norms == "frozen":
        for m in model.modules():
            if isinstance(m, NORMS):
                m.eval()
    for _ in range(steps):
        out = model(torch.randn(*size, generator=g))
        loss = out.float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def fresh(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN()


def save(obj, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def ema_update(ema: nn.Module, model: nn.Module, decay: float = 0.9) -> None:
    """The classic hand-written EMA: parameters only, buffers forgotten."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(decay).add_(pm, alpha=1 - decay)


# ---- running check and diff --------------------------------------------------------------


def check(*args, code: int | None = None) -> tuple[int, dict]:
    from bufinspect.cli import app

    result = CliRunner().invoke(app, ["check", *map(str, args), "--no-config", "--device", "cpu",
                                      "--format", "json"])
    assert result.exit_code in (0, 1), result.stderr + result.stdout
    if code is not None:
        assert result.exit_code == code, result.stdout
    doc = json.loads(result.stdout)
    assert (result.exit_code == 0) == doc["ok"]
    return result.exit_code, doc


def found(doc: dict, ids=DIAGNOSTICS) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in doc["findings"]:
        if f["id"] in ids:
            out.setdefault(f["id"], []).append(f)
    return out


def diff_doc(*args) -> dict:
    from bufinspect.cli import app

    result = CliRunner().invoke(app, ["diff", *map(str, args), "--format", "json",
                                      "--device", "cpu"])
    assert result.exit_code in (0, 1), result.stderr + result.stdout
    return json.loads(result.stdout)


def validate(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "bufinspect" / "schema" / "bufinspect-1.json").read_text())
    jsonschema.validate(doc, schema)


# ---- stats-at-init / stats-never-tracked -------------------------------------------------


def test_eval_mode_training_leaves_statistics_at_init(tmp_path):
    m = train(fresh(), 3, seed=1, norms="eval")
    assert torch.equal(m.bn1.running_mean, torch.zeros(8))  # what the finding claims
    path = save(m.state_dict(), tmp_path / "eval_trained.pt")
    code, doc = check(path, code=0)  # warnings and infos do not fail a check
    hits = found(doc)
    assert set(hits) == {"stats-at-init", "stats-never-tracked"}
    (at_init,) = hits["stats-at-init"]
    assert at_init["severity"] == "warning"
    assert at_init["keys"] == ["bn1.running_mean", "bn1.running_var", "norm2.running_mean",
                               "norm2.running_var"]
    assert "eval mode" in at_init["message"] and "bn1" in at_init["message"]
    (never,) = hits["stats-never-tracked"]
    assert never["severity"] == "info"
    assert never["keys"] == ["bn1.num_batches_tracked", "norm2.num_batches_tracked"]
    validate(doc)


def test_strict_ignore_and_pyproject_apply(tmp_path, monkeypatch):
    from bufinspect.cli import app

    path = save(train(fresh(), 3, seed=1, norms="eval").state_dict(), tmp_path / "e.pt")
    runner = CliRunner()
    base = ["check", path, "--device", "cpu", "--format", "json"]
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, base + ["--no-config"]).exit_code == 0
    assert runner.invoke(app, base + ["--no-config", "--strict"]).exit_code == 1
    r = runner.invoke(app, base + ["--no-config", "--strict", "--ignore", "stats-at-init"])
    assert r.exit_code == 0  # only the info is left
    assert {f["id"] for f in json.loads(r.stdout)["findings"]} == {"stats-never-tracked"}
    (tmp_path / "pyproject.toml").write_text(
        '[tool.bufinspect.check]\nstrict = true\nignore = ["stats-never-tracked"]\n')
    r = runner.invoke(app, base)
    assert r.exit_code == 1
    assert {f["id"] for f in json.loads(r.stdout)["findings"]} == {"stats-at-init"}
    (tmp_path / "pyproject.toml").write_text(
        '[tool.bufinspect.check]\nstrict = true\nignore = ["stats-at-init", "stats-never-tracked"]\n')
    assert runner.invoke(app, base).exit_code == 0


def test_train_mode_training_is_healthy(tmp_path):
    path = save(train(fresh(), 3, seed=1).state_dict(), tmp_path / "t.pt")
    _, doc = check(path, code=0)
    assert found(doc) == {}


def test_fresh_models_are_healthy(tmp_path):
    """Parameters at init too: nothing trained, nothing to say (zero-initialized gammas, as
    `zero_init_residual` sets them, count as init)."""
    m = fresh()
    nn.init.zeros_(m.bn1.weight)  # the last norm of a residual block starts at 0
    _, doc = check(save(m.state_dict(), tmp_path / "init.pt"), code=0)
    assert found(doc) == {}


def test_frozen_norm_finetune(tmp_path):
    """Pretrained (train mode), then fine-tuned with the norm layers frozen: healthy for
    check; diff says the statistics did not move while the parameters trained."""
    m = train(fresh(), 3, seed=1)
    pre = save(m.state_dict(), tmp_path / "pre.pt")
    for mod in m.modules():
        if isinstance(mod, NORMS):
            mod.requires_grad_(False)
    post = save(train(m, 3, seed=2, norms="frozen").state_dict(), tmp_path / "post.pt")
    _, doc = check(pre, post, code=0)
    assert found(doc) == {}
    for scope in ((), ("--all",)):
        doc = diff_doc(pre, post, *scope)
        notes = {n["id"]: n for n in doc.get("notes", [])}
        assert set(notes) == {"stats-frozen"}
        assert "buffers did not move while parameters trained" in notes["stats-frozen"]["message"]
        assert "bn1.running_mean" in notes["stats-frozen"]["keys"]
        validate(doc)
    assert "notes" not in diff_doc(pre, post, "--params")  # statistics out of scope
    # the same frozen fine-tune from scratch: the statistics never left their init
    scratch = fresh(3)
    for mod in scratch.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.requires_grad_(False)  # frozen gamma; beta still trains
    path = save(train(scratch, 3, seed=4, norms="frozen").state_dict(), tmp_path / "s.pt")
    _, doc = check(path, code=0)
    assert [f["keys"] for f in found(doc)["stats-at-init"]] == [
        ["bn1.running_mean", "bn1.running_var", "norm2.running_mean", "norm2.running_var"]]


def test_half_precision_statistics(tmp_path):
    for dtype in (torch.float16, torch.bfloat16):
        bad = train(fresh(), 3, seed=1, norms="eval").to(dtype)
        good = train(fresh(), 3, seed=1).to(dtype)
        _, doc = check(save(bad.state_dict(), tmp_path / "bad.pt"))
        assert "stats-at-init" in found(doc), dtype
        _, doc = check(save(good.state_dict(), tmp_path / "good.pt"))
        assert found(doc) == {}, dtype
        # safetensors: the same reading of the same bytes
        from safetensors.torch import save_file

        save_file(bad.state_dict(), str(tmp_path / "bad.safetensors"))
        _, doc = check(tmp_path / "bad.safetensors")
        assert "stats-at-init" in found(doc), dtype


def test_instance_norm_and_sync_batchnorm(tmp_path):
    torch.manual_seed(0)
    good = train(INNet(), 3, seed=1)
    assert int(good.norm.num_batches_tracked) == 0  # InstanceNorm never counts
    bad = train(INNet(), 3, seed=1, norms="eval")
    _, doc = check(save(bad.state_dict(), tmp_path / "in_bad.pt"))
    assert [f["keys"] for f in found(doc)["stats-at-init"]] == [
        ["norm.running_mean", "norm.running_var"]]
    # a pickled module names its classes: an InstanceNorm counter of 0 is no news
    _, doc = check(save(good, tmp_path / "in_good_module.pt"), code=0)
    assert found(doc) == {}
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(fresh())
    sync.load_state_dict(train(fresh(), 3, seed=1).state_dict())  # trained on one process
    _, doc = check(save(sync.state_dict(), tmp_path / "sync.pt"), code=0)
    assert found(doc) == {}
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(fresh())
    sync.load_state_dict(train(fresh(), 3, seed=1, norms="eval").state_dict())
    _, doc = check(save(sync.state_dict(), tmp_path / "sync_bad.pt"))
    assert "stats-at-init" in found(doc)


def test_only_per_channel_affine_tensors_count(tmp_path):
    """A module with running statistics beside a kernel named `weight` (random at init, not an
    affine parameter): a fresh one is not "trained"."""
    class StandardizedConv(nn.Conv2d):
        def __init__(self):
            super().__init__(3, 4, 3)
            self.register_buffer("running_mean", torch.zeros(4))
            self.register_buffer("running_var", torch.ones(4))

    torch.manual_seed(0)
    _, doc = check(save(StandardizedConv().state_dict(), tmp_path / "ws.pt"), code=0)
    assert found(doc) == {}


def test_bundled_samples_are_healthy(samples):
    paths = sorted(str(p) for p in samples.iterdir()
                   if p.suffix in (".pt", ".safetensors"))
    _, doc = check(*paths)
    assert found(doc) == {}
    for a, b in (("bn_before.pt", "bn_after_train.pt"), ("bn_before.pt", "bn_after_eval.pt"),
                 ("cnn_state_dict.pt", "cnn.safetensors")):
        assert "notes" not in diff_doc(samples / a, samples / b), (a, b)
    # bn_after_train -> bn_after_eval: an eval forward pass moved nothing, and nothing trained
    assert "notes" not in diff_doc(samples / "bn_after_train.pt", samples / "bn_after_eval.pt")


# ---- ema-buffers-stale -------------------------------------------------------------------


def test_ema_of_parameters_only(tmp_path):
    m = fresh()
    ema = {n: p.detach().clone() for n, p in m.named_parameters()}
    train(m, 3, seed=1)
    path = save({"model": m.state_dict(), "ema": ema, "epoch": 3}, tmp_path / "ema.pt")
    _, doc = check(path, code=0)
    hits = found(doc)
    assert set(hits) == {"ema-buffers-stale"}
    (f,) = hits["ema-buffers-stale"]
    assert f["severity"] == "warning"
    assert f["keys"] == [f"model/{m_}.{b}" for m_ in ("bn1", "norm2")
                         for b in ("running_mean", "running_var", "num_batches_tracked")]
    assert "'ema' (averaged copy of 'model')" in f["message"]
    assert "named_parameters() only" in f["message"]
    from bufinspect.cli import app

    r = CliRunner().invoke(app, ["check", path, "--no-config", "--strict"])
    assert r.exit_code == 1
    r = CliRunner().invoke(app, ["check", path, "--no-config", "--strict", "--ignore",
                                 "ema-buffers-stale"])
    assert r.exit_code == 0


@pytest.mark.parametrize("layout", ["containers", "timm_prefix", "lightning_submodule",
                                    "ema_pytorch", "mmengine"])
def test_ema_whose_buffers_never_moved(tmp_path, layout):
    m = fresh()
    e = copy.deepcopy(m)
    for step in range(3):
        train(m, 1, seed=10 + step)
        ema_update(e, m)
    if layout == "containers":
        obj = {"state_dict": m.state_dict(), "state_dict_ema": e.state_dict()}
        where = "state_dict_ema/"
    elif layout == "timm_prefix":  # ModelEma-style wrapper: keys under module.
        obj = {"model": m.state_dict(),
               "model_ema": {"module." + k: v for k, v in e.state_dict().items()}}
        where = "model_ema/module."
    elif layout == "mmengine":  # EMAHook: ema_state_dict of an ExponentialMovingAverage
        ema_sd = {"module." + k: v for k, v in e.state_dict().items()}
        ema_sd["steps"] = torch.tensor(3)
        obj = {"meta": {"epoch": 1}, "state_dict": m.state_dict(), "ema_state_dict": ema_sd}
        where = "ema_state_dict/module."
    elif layout == "ema_pytorch":  # ema_pytorch.EMA: the copy under ema_model., two scalars
        ema_sd = {"ema_model." + k: v for k, v in e.state_dict().items()}
        ema_sd.update(initted=torch.tensor(True), step=torch.tensor(3))
        obj = {"model": m.state_dict(), "ema": ema_sd}
        where = "ema/ema_model."
    else:  # a LightningModule holding the model and its EMA wrapper
        sd = {"model." + k: v for k, v in m.state_dict().items()}
        sd.update({"model_ema.module." + k: v for k, v in e.state_dict().items()})
        sd["model_ema.num_updates"] = torch.tensor(3)
        obj = {"state_dict": sd, "epoch": 0, "global_step": 3}
        where = "state_dict/model_ema.module."
    _, doc = check(save(obj, tmp_path / "ema.pt"), code=0)
    hits = found(doc)
    assert set(hits) == {"ema-buffers-stale"}  # not stats-at-init for the copy as well
    (f,) = hits["ema-buffers-stale"]
    assert f["keys"] == [f"{where}{l}.{b}" for l in ("bn1", "norm2")
                         for b in ("running_mean", "running_var")]
    assert "still at init while the model's moved" in f["message"]


def test_healthy_averaged_models(tmp_path):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    for use_buffers in (False, True):
        m = fresh()
        av = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=use_buffers)
        for step in range(3):
            train(m, 1, seed=20 + step)
            av.update_parameters(m)
        assert "n_averaged" in av.state_dict()
        path = save({"model": m.state_dict(), "swa_model": av.state_dict()}, tmp_path / "av.pt")
        _, doc = check(path, code=0)
        assert found(doc) == {}, use_buffers
        # Lightning's WeightAveraging: the average in state_dict, the model beside it
        avg = av.state_dict()
        obj = {"state_dict": {k[7:]: v for k, v in avg.items() if k.startswith("module.")},
               "current_model_state": m.state_dict(),
               "averaging_state": {"n_averaged": avg["n_averaged"]}}
        _, doc = check(save(obj, tmp_path / "lightning.pt"), code=0)
        assert found(doc) == {}, use_buffers


def test_lightning_weight_averaging_with_stale_buffers(tmp_path):
    m = fresh()
    e = copy.deepcopy(m)
    for step in range(3):
        train(m, 1, seed=30 + step)
        ema_update(e, m)
    obj = {"state_dict": e.state_dict(), "current_model_state": m.state_dict(),
           "averaging_state": {"n_averaged": torch.tensor(3)}}
    _, doc = check(save(obj, tmp_path / "l.pt"), code=0)
    assert set(found(doc)) == {"ema-buffers-stale"}


def test_ema_not_started_is_not_stale(tmp_path):
    """An EMA that has not begun (update_after_step): parameters and buffers both at init."""
    m = fresh()
    e = copy.deepcopy(m)
    train(m, 3, seed=1)
    _, doc = check(save({"model": m.state_dict(), "ema": e.state_dict()}, tmp_path / "n.pt"),
                   code=0)
    assert found(doc) == {}


def test_ema_frozen_at_an_earlier_state_across_files(tmp_path):
    """Fine-tuning from pretrained weights: the copy's buffers stay the pretrained ones. One
    file cannot show it; two checkpoints of the run in one check do."""
    m = train(fresh(), 3, seed=1)  # "pretrained"
    e = copy.deepcopy(m)
    paths = []
    for epoch in range(2):
        for step in range(2):
            train(m, 1, seed=40 + 10 * epoch + step)
            ema_update(e, m)
        paths.append(save({"model": m.state_dict(), "model_ema": e.state_dict()},
                          tmp_path / f"epoch{epoch}.pt"))
    _, doc = check(paths[0], code=0)
    assert found(doc) == {}
    _, doc = check(*paths, code=0)
    (f,) = found(doc)["ema-buffers-stale"]
    assert f["path"] == paths[1] and paths[0] in f["message"]
    assert f["keys"] == [f"model_ema/{l}.{b}" for l in ("bn1", "norm2")
                         for b in ("running_mean", "running_var")]
    # a copy that does follow the buffers (state_dict-wide EMA) is not stale
    m = train(fresh(), 3, seed=1)
    e = copy.deepcopy(m)
    good = []
    for epoch in range(2):
        for step in range(2):
            train(m, 1, seed=40 + 10 * epoch + step)
            with torch.no_grad():
                for ve, vm in zip(e.state_dict().values(), m.state_dict().values()):
                    ve.copy_(ve * 0.9 + vm * 0.1 if ve.is_floating_point() else vm)
        good.append(save({"model": m.state_dict(), "model_ema": e.state_dict()},
                         tmp_path / f"good{epoch}.pt"))
    _, doc = check(*good, code=0)
    assert found(doc) == {}


def test_many_ema_named_containers_stay_bounded(tmp_path):
    """A crafted file with hundreds of EMA-named state dicts: pairing is bounded (each copy is
    aligned against a bounded number of candidates), and every layer is still judged."""
    from bufinspect import load
    from bufinspect.analysis import diagnostics
    from bufinspect.analysis.show import select

    obj = {}
    for i in range(300):
        obj[f"ema_{i}"] = {"bn.running_mean": torch.zeros(2), "bn.running_var": torch.ones(2),
                           "bn.weight": torch.tensor([0.5, 2.0])}
        obj[f"model_{i}"] = {"bn.running_mean": torch.full((2,), 0.1),
                             "bn.running_var": torch.full((2,), 2.0),
                             "bn.weight": torch.tensor([0.5, 2.0])}
    ck = load(save(obj, tmp_path / "many.pt"))
    entries = select(ck)
    assert len(diagnostics.ema_pairs(ck, entries)) == diagnostics._MAX_COPIES
    found_, _ = diagnostics.analyze(ck, entries)
    ids = [d.id for d in found_]
    assert ids.count("ema-buffers-stale") == diagnostics._MAX_COPIES
    assert ids.count("stats-at-init") == 300 - diagnostics._MAX_COPIES


# ---- --model: would the file load? -------------------------------------------------------


def torch_load_report(model: nn.Module, sd: dict) -> tuple[set[str], set[str]]:
    """What torch itself says: (missing, unexpected) keys of a non-strict load."""
    result = model.load_state_dict(sd, strict=False)
    return set(result.missing_keys), set(result.unexpected_keys)


def test_model_gained_a_persistent_buffer(tmp_path):
    sd = train(fresh(), 2, seed=1).state_dict()
    path = save(sd, tmp_path / "old.pt")
    code, doc = check(path, "--model", "diag_models:gained_buffer", code=1)
    hits = found(doc)
    assert set(hits) == {"missing-key"}
    (f,) = hits["missing-key"]
    assert f["severity"] == "error"
    missing, unexpected = torch_load_report(ScaledCNN(), sd)
    assert set(f["keys"]) == missing == {"label_scale"} and not unexpected
    assert "persistent buffer" in f["message"] and "strict=True" in f["message"]
    validate(doc)
    # the same model against its own file: nothing (the non-persistent buffer is not expected)
    path = save(ScaledCNN().state_dict(), tmp_path / "new.pt")
    _, doc = check(path, "--model", "diag_models:gained_buffer", code=0)
    assert found(doc) == {}
    # --ignore applies as for every finding
    from bufinspect.cli import app

    r = CliRunner().invoke(app, ["check", str(tmp_path / "old.pt"), "--no-config", "--model",
                                 "diag_models:gained_buffer", "--ignore", "missing-key"])
    assert r.exit_code == 0, r.stdout


def test_model_unexpected_and_shape(tmp_path):
    sd = train(fresh(), 2, seed=1).state_dict()
    path = save({"model": sd, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "c.pt")
    _, doc = check(path, "--model", "diag_models:lost_norm", code=0)  # a warning only
    (f,) = found(doc)["unexpected-key"]
    from diag_models import lost_norm

    missing, unexpected = torch_load_report(lost_norm(), sd)
    assert f["severity"] == "warning" and not missing
    assert {k.removeprefix("model/") for k in f["keys"]} == unexpected == {
        "norm2.running_mean", "norm2.running_var", "norm2.num_batches_tracked"}
    _, doc = check(path, "--model", "diag_models:lost_norm", "--strict", code=1)
    _, doc = check(path, "--model", "diag_models:wider_head", code=1)
    (f,) = found(doc)["shape-mismatch"]
    assert f["severity"] == "error"
    assert f["keys"] == ["model/head.weight", "model/head.bias"]
    assert "(4, 8) vs (10, 8)" in f["message"]
    with pytest.raises(RuntimeError, match="size mismatch"):
        wider_head().load_state_dict(sd)


def test_model_alignment_is_applied_and_reported(tmp_path):
    sd = train(fresh(), 2, seed=1).state_dict()
    ddp = {"module." + k: v for k, v in sd.items()}
    path = save(ddp, tmp_path / "ddp.pt")
    _, doc = check(path, "--model", "diag_models:gained_buffer", code=1)
    hits = found(doc)
    assert set(hits) == {"missing-key", "key-prefix"}
    assert hits["missing-key"][0]["keys"] == ["label_scale"]
    assert "'module.' removed from the file's keys" in hits["missing-key"][0]["message"]
    assert hits["key-prefix"][0]["severity"] == "warning"
    assert "consume_prefix_in_state_dict_if_present" in hits["key-prefix"][0]["message"]
    # torch.compile's prefix too, and a model that is itself wrapped
    compiled = {"_orig_mod." + k: v for k, v in sd.items()}
    _, doc = check(save(compiled, tmp_path / "c.pt"), "--model", "diag_models:small_cnn", code=0)
    assert set(found(doc)) == {"key-prefix"}


def test_model_is_judged_by_its_own_load_code(tmp_path):
    """Old BatchNorm state without num_batches_tracked loads (torch fills it in) unless
    `_metadata` says version 2: the finding follows torch, not a key comparison."""
    sd = train(fresh(), 2, seed=1).state_dict()
    del sd["bn1.num_batches_tracked"]  # _metadata kept: version 2
    with pytest.raises(RuntimeError, match="Missing key"):
        SmallCNN().load_state_dict(sd)
    _, doc = check(save(sd, tmp_path / "v2.pt"), "--model", "diag_models:small_cnn", code=1)
    assert found(doc, {"missing-key"})["missing-key"][0]["keys"] == ["bn1.num_batches_tracked"]
    old = dict(sd)  # no _metadata: an old-format state dict
    SmallCNN().load_state_dict(old)  # loads
    _, doc = check(save(old, tmp_path / "old.pt"), "--model", "diag_models:small_cnn", code=0)
    assert "missing-key" not in found(doc)


def test_model_errors_are_usage_errors(tmp_path):
    from bufinspect.cli import app

    path = save(fresh().state_dict(), tmp_path / "m.pt")
    for spec in ("diag_models:broken", "diag_models:nope", "no_such_module:x", "nocolon"):
        r = CliRunner().invoke(app, ["check", path, "--no-config", "--model", spec])
        assert r.exit_code == 2, spec
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_model_through_the_python_api(tmp_path):
    """`bufinspect.check(..., model=)` takes MODULE:FACTORY or an nn.Module, like --model."""
    import bufinspect

    path = save(train(fresh(), 2, seed=1).state_dict(), tmp_path / "old.pt")
    by_spec = bufinspect.check(path, device="cpu", model="diag_models:gained_buffer")
    by_module = bufinspect.check(path, device="cpu", model=ScaledCNN().to("meta"))
    for report in (by_spec, by_module):
        assert not report.ok
        assert [(f.id, f.keys) for f in report.findings if f.id in DIAGNOSTICS] == [
            ("missing-key", ("label_scale",))]
    assert "diag_models:gained_buffer expects" in by_spec.findings[0].message
    assert bufinspect.check(path, device="cpu", model="diag_models:small_cnn").ok


# ---- diff notes --------------------------------------------------------------------------


def test_diff_notes_on_counters(tmp_path):
    m = train(fresh(), 3, seed=1)
    sd = m.state_dict()
    a = save(sd, tmp_path / "a.pt")
    copied = dict(sd)
    copied["bn1.running_mean"] = sd["bn1.running_mean"] + 0.5  # e.g. stats copied from an EMA
    b = save(copied, tmp_path / "b.pt")
    doc = diff_doc(a, b)
    assert [(n["id"], n["keys"]) for n in doc["notes"]] == [
        ("stats-moved-counter-still", ["bn1.num_batches_tracked"])]
    validate(doc)
    ticked = dict(sd)
    ticked["bn1.num_batches_tracked"] = sd["bn1.num_batches_tracked"] + 3
    doc = diff_doc(a, save(ticked, tmp_path / "c.pt"))
    assert [(n["id"], n["keys"]) for n in doc["notes"]] == [
        ("counter-moved-stats-still", ["bn1.num_batches_tracked"])]
    # InstanceNorm moves its statistics without counting (norm2 in the samples): no note
    train(m, 2, seed=5)
    doc = diff_doc(a, save(m.state_dict(), tmp_path / "d.pt"))
    assert "notes" not in doc


def test_diff_notes_in_every_format(tmp_path):
    from bufinspect.cli import app

    m = train(fresh(), 3, seed=1)
    a = save(m.state_dict(), tmp_path / "a.pt")
    b = save(train(m, 2, seed=2, norms="eval").state_dict(), tmp_path / "b.pt")
    runner = CliRunner()
    text = {fmt: runner.invoke(app, ["diff", a, b, "--format", fmt]) for fmt in
            ("table", "markdown", "github", "json")}
    for fmt, r in text.items():
        assert r.exit_code == 0, fmt  # a note does not change the verdict
        assert "stats-frozen" in r.stdout, fmt
    assert "::notice title=bufinspect diff stats-frozen::" in text["github"].stdout
    assert "- note (stats-frozen): buffers did not move" in text["markdown"].stdout
    assert "BatchNorm in eval mode or frozen?" in " ".join(text["table"].stdout.split())
    # saved metrics keep the notes when re-judged
    saved = tmp_path / "metrics.json"
    runner.invoke(app, ["diff", a, b, "--save-metrics", str(saved)])
    r = runner.invoke(app, ["diff", "--from-metrics", str(saved), "--format", "json"])
    assert [n["id"] for n in json.loads(r.stdout)["notes"]] == ["stats-frozen"]


def test_unchanged_parameters_give_no_note(tmp_path):
    """Identical files (or only buffers differ): parameters did not train, nothing to say."""
    sd = train(fresh(), 2, seed=1).state_dict()
    a, b = save(sd, tmp_path / "a.pt"), save(dict(sd), tmp_path / "b.pt")
    assert "notes" not in diff_doc(a, b)


# ---- real torchvision / timm models -------------------------------------------------------


def _import_vision(name: str):
    """torchvision (or timm, which imports it) with the CPU torch here: torchvision's compiled
    ops may not load against this torch build; its meta registrations are the only import that
    needs them, and the models need none."""
    try:
        return pytest.importorskip(name)
    except (RuntimeError, OSError):
        for mod in [k for k in sys.modules if k.startswith(("torchvision", "timm"))]:
            del sys.modules[mod]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations")
        return pytest.importorskip(name)


def _healthy(model: nn.Module, tmp_path: Path, name: str, size=(2, 3, 32, 32)) -> None:
    path = save(model.state_dict(), tmp_path / f"{name}_init.pt")
    _, doc = check(path, code=0)
    assert found(doc) == {}, (name, "init", found(doc))
    train(model, 2, seed=1, size=size, lr=0.01)
    path = save(model.state_dict(), tmp_path / f"{name}.pt")
    _, doc = check(path, code=0)
    assert found(doc) == {}, (name, found(doc))
    return path


@pytest.mark.slow
def test_torchvision_models_are_healthy(tmp_path):
    tv = _import_vision("torchvision")
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    for name, model in (("resnet18", tv.models.resnet18(num_classes=10, zero_init_residual=True)),
                        ("mobilenet_v3_small", tv.models.mobilenet_v3_small(num_classes=10))):
        _healthy(model, tmp_path, name)
        # and the same, eval-mode trained, is caught
        bad = copy.deepcopy(model)
        for mod in bad.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
        train(bad, 1, seed=2, size=(2, 3, 32, 32), norms="eval", lr=0.01)
        _, doc = check(save(bad.state_dict(), tmp_path / f"{name}_bad.pt"))
        assert "stats-at-init" in found(doc), name
    # FrozenBatchNorm2d (detection backbones): no counter, weight/bias are buffers
    trained = tv.models.resnet18(num_classes=10)
    train(trained, 2, seed=3, size=(2, 3, 32, 32), lr=0.01)
    frozen = tv.models.resnet18(num_classes=10, norm_layer=FrozenBatchNorm2d)
    _, doc = check(save(frozen.state_dict(), tmp_path / "frozen_init.pt"), code=0)
    assert found(doc) == {}
    frozen.load_state_dict(trained.state_dict())
    _, doc = check(save(frozen.state_dict(), tmp_path / "frozen.pt"), code=0)
    assert found(doc) == {}
    # a BatchNorm checkpoint loads into the FrozenBatchNorm2d model (it drops the counters):
    # torch's own load code decides, so no unexpected-key
    import bufinspect

    path = save(trained.state_dict(), tmp_path / "bn.pt")
    report = bufinspect.check(path, device="cpu", model=tv.models.resnet18(
        num_classes=10, norm_layer=FrozenBatchNorm2d).to("meta"))
    assert not [f for f in report.findings if f.id in DIAGNOSTICS], report.findings
    report = bufinspect.check(path, device="cpu", model=tv.models.resnet18(
        num_classes=100).to("meta"))
    assert [f.id for f in report.findings if f.id in DIAGNOSTICS] == ["shape-mismatch"]


@pytest.mark.slow
def test_timm_models_and_emas_are_healthy(tmp_path):
    _import_vision("torchvision")
    timm = _import_vision("timm")
    from timm.utils import ModelEmaV2, ModelEmaV3

    torch.manual_seed(0)
    for name in ("resnet18", "efficientnet_b0"):
        model = timm.create_model(name, num_classes=10)
        _healthy(model, tmp_path, name)
    model = timm.create_model("resnet18", num_classes=10)
    emas = {"v2": ModelEmaV2(model, decay=0.99), "v3": ModelEmaV3(model, decay=0.99),
            "v3_params": ModelEmaV3(model, decay=0.99, exclude_buffers=True)}
    for step in range(3):
        train(model, 1, seed=50 + step, size=(2, 3, 32, 32), lr=0.01)
        for ema in emas.values():
            ema.update(model)
    for kind, ema in emas.items():
        # timm's train.py saves the unwrapped copy; torch.save(ema.state_dict()) keeps module.
        for name, sd in (("unwrapped", ema.module.state_dict()), ("wrapped", ema.state_dict())):
            obj = {"epoch": 1, "arch": "resnet18", "state_dict": model.state_dict(),
                   "state_dict_ema": sd}
            _, doc = check(save(obj, tmp_path / f"timm_{kind}_{name}.pt"), code=0)
            assert found(doc) == {}, (kind, name, found(doc))


@pytest.mark.slow
def test_realworld_matrix_is_healthy(tmp_path):
    """Every file of the real-model matrix (tests/realworld_helpers.py: torch utilities always,
    torchvision/timm/transformers/peft/Lightning/accelerate where installed; all trained in
    train mode or saved at init) is free of buffer diagnostics."""
    import warnings

    import realworld_helpers as rw

    import bufinspect
    from bufinspect.analysis.diagnostics import diagnose
    from bufinspect.analysis.show import select

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = [c.case for c in rw.all_cases(tmp_path)]
    assert cases
    checked = 0
    for p in sorted(tmp_path.rglob("*")):
        if p.is_dir() or (p.parent / ".metadata").exists() and p.parent != tmp_path:
            if not (p.is_dir() and (p / ".metadata").exists()):
                continue
        try:
            ck = bufinspect.load(str(p))
        except bufinspect.BufinspectError:
            continue  # side files the matrix only reads (RNG state, a refused pickle)
        checked += 1
        assert diagnose([ck], [select(ck)]) == [], p.name
    assert checked >= len(cases) // 2


def test_ema_saved_in_a_file_of_its_own(tmp_path):
    """`model_ema.pt` beside `model.pt`, both given to one check: paired by file name."""
    m = fresh()
    e = copy.deepcopy(m)
    for step in range(3):
        train(m, 1, seed=60 + step)
        ema_update(e, m)
    model = save(m.state_dict(), tmp_path / "model.pt")
    ema = save(e.state_dict(), tmp_path / "model_ema.pt")
    _, doc = check(model, ema, code=0)
    hits = found(doc)
    assert set(hits) == {"ema-buffers-stale"}  # and not stats-at-init for the copy as well
    (f,) = hits["ema-buffers-stale"]
    assert f["path"] == ema
    assert f["keys"] == [f"{l}.{b}" for l in ("bn1", "norm2") for b in ("running_mean",
                                                                         "running_var")]
    assert f"'{ema}' (averaged copy of '{model}')" in f["message"]
    # alone, the copy still shows statistics at init under trained parameters
    _, doc = check(ema, code=0)
    assert set(found(doc)) == {"stats-at-init"}
    # a copy of parameters only, in its own file
    params = save({n: p.detach() for n, p in e.named_parameters()}, tmp_path / "ema.pt")
    _, doc = check(model, params, code=0)
    (f,) = found(doc)["ema-buffers-stale"]
    assert f["path"] == params and f["keys"][0] == f"{model}:bn1.running_mean"
    # a healthy copy (a state_dict-wide EMA, counters averaged to 0 as timm's ModelEmaV2 does)
    good = copy.deepcopy(m)
    with torch.no_grad():
        for k, v in good.state_dict().items():
            if not v.is_floating_point():
                v.zero_()
    healthy = save(good.state_dict(), tmp_path / "last_ema.pt")
    _, doc = check(model, healthy, code=0)
    assert found(doc) == {}
    _, doc = check(healthy, code=0)
    assert found(doc) == {}


def test_model_that_is_itself_wrapped(tmp_path):
    """A DDP-wrapped model factory against a plain state dict: the prefix is on the model's
    side, reported as such; the version-2 counter check still follows the file's _metadata."""
    sd = train(fresh(), 2, seed=1).state_dict()
    _, doc = check(save(sd, tmp_path / "plain.pt"), "--model", "diag_models:wrapped", code=0)
    (f,) = found(doc)["key-prefix"]
    assert "load into the unwrapped module" in f["message"]
    del sd["bn1.num_batches_tracked"]  # _metadata says version 2: strict loading fails
    _, doc = check(save(sd, tmp_path / "v2.pt"), "--model", "diag_models:wrapped", code=1)
    assert found(doc)["missing-key"][0]["keys"] == ["module.bn1.num_batches_tracked"]
