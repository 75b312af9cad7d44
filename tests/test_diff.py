"""diff: statuses, metrics against torch, alignment, formats, exit codes, saved metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bufinspect
from bufinspect.model import Status
from bufinspect.formats import stream

SCHEMA = Path(__file__).resolve().parent.parent / "bufinspect" / "schema" / "bufinspect-1.json"


def validate(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))


def torch_metrics(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-8):
    """What the metrics should be, computed whole-tensor with torch in float64."""
    a, b = a.double().flatten(), b.double().flatten()
    d = (a - b).abs()
    rel = torch.where(d == 0, torch.zeros_like(d), d / b.abs())
    mismatched = int((~torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)).sum())
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0, eps=0).item() \
        if a.norm() > 0 and b.norm() > 0 else None
    return {"max_abs": d.max().item(), "max_rel": rel.max().item(), "mean_abs": d.mean().item(),
            "mismatched": mismatched, "rel_l2": (d.norm() / b.norm()).item(), "cosine": cos}


def check_metrics(entry: dict, a: torch.Tensor, b: torch.Tensor, **tol) -> None:
    want = torch_metrics(a, b, **tol)
    assert entry["mismatched"] == want["mismatched"]
    assert entry["numel"] == a.numel()
    for k in ("max_abs", "max_rel", "mean_abs", "rel_l2", "cosine"):
        if want[k] is None:
            assert entry[k] is None, k
        else:
            got = float(entry[k]) if isinstance(entry[k], str) else entry[k]  # "inf" in JSON
            assert got == pytest.approx(want[k], rel=1e-9, abs=1e-12), k


def by_key(doc: dict) -> dict[str, dict]:
    return {e["key"]: e for e in doc["entries"]}


# ---- real training steps -------------------------------------------------------------------


def test_train_step_moves_running_stats(samples, cli_json):
    a_path, b_path = samples / "bn_before.pt", samples / "bn_after_train.pt"
    doc = cli_json("diff", a_path, b_path, code=1)
    validate(doc)
    assert doc["scope"] == "buffers" and doc["identical"] is False
    sa = torch.load(a_path, weights_only=True)
    sb = torch.load(b_path, weights_only=True)
    got = by_key(doc)
    # every buffer or unknown entry is listed, in the file's order; parameters are not
    roles = {k: got[k]["role"] for k in got}
    assert list(got) == [k for k in sa if roles.get(k)]
    # the role engine decides conv/linear weights from their layer signature: out of scope
    assert "bn1.weight" not in got and "conv1.weight" not in got
    for k in ("bn1.running_mean", "bn1.running_var", "norm2.running_var"):
        assert got[k]["status"] == "changed"
        check_metrics(got[k], sa[k], sb[k])
    nbt = got["bn1.num_batches_tracked"]
    assert nbt["status"] == "changed"
    assert (nbt["old"], nbt["new"]) == (sa["bn1.num_batches_tracked"].item(),
                                       sb["bn1.num_batches_tracked"].item())
    assert doc["summary"]["changed"] == sum(e["status"] == "changed" for e in doc["entries"])


def test_eval_forward_moves_nothing(samples, cli, cli_json):
    doc = cli_json("diff", samples / "bn_after_train.pt", samples / "bn_after_eval.pt", "--all")
    validate(doc)
    assert doc["identical"] is True
    assert {e["status"] for e in doc["entries"]} == {"equal"}
    assert len(doc["entries"]) == len(torch.load(samples / "bn_after_eval.pt", weights_only=True))
    r = cli("diff", samples / "bn_after_train.pt", samples / "bn_after_eval.pt")
    assert r.exit_code == 0
    assert "SAME within tolerance" in r.stdout and "equal entries not listed" in r.stdout


def test_scopes(samples, cli_json):
    a, b = samples / "bn_before.pt", samples / "bn_after_train.pt"
    params = by_key(cli_json("diff", a, b, "--params", code=1))
    every = by_key(cli_json("diff", a, b, "--all", code=1))
    assert "bn1.weight" in params and "bn1.running_mean" not in params
    assert set(every) == set(torch.load(a, weights_only=True))


# ---- files made here -----------------------------------------------------------------------


class BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)


@pytest.fixture
def base_sd():
    torch.manual_seed(0)
    net = BNNet()
    net.train()
    net.bn(torch.randn(2, 4, 5, 5) * 3 + 1)
    return {k: v.clone() for k, v in net.state_dict().items()}


def save(sd, path: Path) -> Path:
    torch.save(sd, path)
    return path


def test_prefix_wrapped_copies_are_equal(tmp_path, base_sd, cli, cli_json):
    a = save(base_sd, tmp_path / "a.pt")
    ddp = save({"module." + k: v for k, v in base_sd.items()}, tmp_path / "ddp.pt")
    compiled = save({"_orig_mod." + k: v for k, v in base_sd.items()}, tmp_path / "c.pt")
    both = save({"_orig_mod.module." + k: v for k, v in base_sd.items()}, tmp_path / "cd.pt")
    doc = cli_json("diff", a, ddp, "--all")
    validate(doc)
    assert doc["identical"] and doc["alignment"] == {"b": ["strip module."], "auto": True}
    assert all(e["key_b"] == "module." + e["key"] for e in doc["entries"])
    doc = cli_json("diff", compiled, a)
    assert doc["identical"] and doc["alignment"]["a"] == ["strip _orig_mod."]
    assert doc["entries"][0]["key"].startswith("_orig_mod.")  # entries keep A's key
    doc = cli_json("diff", both, ddp, "--all")
    assert doc["identical"] and doc["alignment"]["a"] == ["strip _orig_mod."]
    r = cli("diff", a, ddp)
    assert "strip module. (automatic)" in r.stdout
    # without auto alignment every key is removed on one side and added on the other
    doc = cli_json("diff", a, ddp, "--no-auto-align", code=1)
    assert {e["status"] for e in doc["entries"]} == {"removed", "added"}


def test_user_alignment_rules(tmp_path, base_sd, cli_json):
    a = save(base_sd, tmp_path / "a.pt")
    enc = save({"encoder." + k: v for k, v in base_sd.items()}, tmp_path / "enc.pt")
    assert cli_json("diff", a, enc, "--add-prefix", "encoder.")["identical"]
    assert cli_json("diff", enc, a, "--strip-prefix", "encoder.")["identical"]
    renamed = dict(base_sd)
    renamed["norm.running_mean"] = renamed.pop("bn.running_mean")
    r = save(renamed, tmp_path / "r.pt")
    doc = cli_json("diff", a, r, "--all", "--rename", "bn.running_mean=norm.running_mean")
    assert doc["identical"]
    assert by_key(doc)["bn.running_mean"]["key_b"] == "norm.running_mean"


def test_metadata_changes(tmp_path, base_sd, cli_json, monkeypatch):
    a = save(base_sd, tmp_path / "a.pt")
    b_sd = dict(base_sd)
    b_sd["bn.running_var"] = b_sd["bn.running_var"].half()
    b_sd["bn.running_mean"] = torch.zeros(5)
    del b_sd["bn.num_batches_tracked"]
    b_sd["extra.running_mean"] = torch.zeros(3)
    b = save(b_sd, tmp_path / "b.pt")

    read = []
    real = stream.pair_batches

    def spy(pairs, *args, **kwargs):
        read.extend(a.key for a, _ in pairs)
        return real(pairs, *args, **kwargs)
    monkeypatch.setattr(stream, "pair_batches", spy)
    report = bufinspect.diff(str(a), str(b), scope="all")
    got = {e.key: e for e in report.entries}
    assert got["bn.running_var"].status is Status.DTYPE
    assert got["bn.running_var"].dtype_b == "float16"
    assert got["bn.running_mean"].status is Status.SHAPE
    assert got["bn.running_mean"].shape_b == (5,)
    assert got["bn.num_batches_tracked"].status is Status.REMOVED
    assert got["extra.running_mean"].status is Status.ADDED
    assert report.has_differences
    # metadata-only differences never read data: only the matching pairs were streamed
    assert sorted(read) == ["bn.bias", "bn.weight", "conv.bias", "conv.weight"]
    doc = report.to_dict()
    validate(doc)
    assert doc["summary"] == {"equal": 4, "close": 0, "changed": 0, "added": 1, "removed": 1,
                              "shape": 1, "dtype": 1}


def test_metadata_only_pairs_skip_reading(tmp_path, base_sd, monkeypatch):
    a = save({"x.running_mean": torch.zeros(4)}, tmp_path / "a.pt")
    b = save({"x.running_mean": torch.zeros(4, dtype=torch.float64)}, tmp_path / "b.pt")
    monkeypatch.setattr(stream, "paired_chunks", lambda pairs, *a, **k: iter(()) if not pairs
                        else (_ for _ in ()).throw(AssertionError("read data")))
    assert bufinspect.diff(str(a), str(b)).entries[0].status is Status.DTYPE


def test_close_and_tolerance_overrides(tmp_path, base_sd, cli_json):
    a = save(base_sd, tmp_path / "a.pt")
    b_sd = dict(base_sd)
    rv = base_sd["bn.running_var"]
    b_sd["bn.running_var"] = rv * (1 + 2e-6)  # within rtol 1e-5
    b_sd["bn.running_mean"] = base_sd["bn.running_mean"] + 1e-3
    b = save(b_sd, tmp_path / "b.pt")
    doc = cli_json("diff", a, b, code=1)
    validate(doc)
    got = by_key(doc)
    assert got["bn.running_var"]["status"] == "close"
    check_metrics(got["bn.running_var"], rv, b_sd["bn.running_var"])
    assert got["bn.running_mean"]["status"] == "changed"
    doc = cli_json("diff", a, b, "--tol", "running_mean=0,2e-3")
    assert by_key(doc)["bn.running_mean"]["status"] == "close"
    assert by_key(doc)["bn.running_mean"]["atol"] == 2e-3
    assert doc["tolerances"] == ["running_mean=0,0.002"]
    # the last matching override wins; a glob on the whole key works too
    doc = cli_json("diff", a, b, "--tol", "bn.*=0,2e-3", "--tol", "*mean=0", code=1)
    assert by_key(doc)["bn.running_mean"]["status"] == "changed"
    assert cli_json("diff", a, b, "--atol", "0.01")["summary"]["changed"] == 0


def test_bad_tolerance_is_usage_error(tmp_path, base_sd, cli):
    a = save(base_sd, tmp_path / "a.pt")
    for bad in ("running_var", "x=abc", "x=1,2,3", "=1e-3"):
        r = cli("diff", a, a, "--tol", bad)
        assert r.exit_code == 2 and "--tol" in r.stderr
    assert cli("diff", a, a, "--all", "--params").exit_code == 2
    assert cli("diff", a, a, "--format", "xml").exit_code == 2


def test_nan_cases(tmp_path, cli_json):
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 4.0])
    a = save({"m.same": x, "m.new_nan": x, "m.gone_nan": x, "m.inf": x, "m.zero": torch.zeros(3)},
             tmp_path / "a.pt")
    new_nan = x.clone()
    new_nan[0] = float("nan")
    gone = x.clone()
    gone[1] = 2.0
    flip = x.clone()
    flip[2] = -float("inf")
    b = save({"m.same": x.clone(), "m.new_nan": new_nan, "m.gone_nan": gone, "m.inf": flip,
              "m.zero": -torch.zeros(3)}, tmp_path / "b.pt")
    doc = cli_json("diff", a, b, "--rtol", "1", "--atol", "100", code=1)
    validate(doc)
    got = by_key(doc)
    assert got["m.same"]["status"] == "equal"
    assert got["m.zero"]["status"] == "equal"  # -0.0 == 0.0 although the bytes differ
    for k in ("m.new_nan", "m.gone_nan", "m.inf"):
        assert got[k]["status"] == "changed", k
        assert got[k]["nonfinite"] == 1 and got[k]["mismatched"] == 1
    assert json.dumps(doc)  # strict JSON


def test_cross_format_equal(tmp_path, base_sd, cli_json):
    from safetensors.torch import save_file

    a = save(base_sd, tmp_path / "a.pt")
    st = tmp_path / "a.safetensors"
    save_file({k: v.contiguous() for k, v in base_sd.items()}, str(st))
    doc = cli_json("diff", a, st, "--all")
    validate(doc)
    assert doc["identical"] and len(doc["entries"]) == len(base_sd)
    b_sd = dict(base_sd)
    b_sd["bn.running_var"] = b_sd["bn.running_var"] * 2
    st2 = tmp_path / "b.safetensors"
    save_file(b_sd, str(st2))
    doc = cli_json("diff", a, st2, code=1)
    check_metrics(by_key(doc)["bn.running_var"], base_sd["bn.running_var"],
                  b_sd["bn.running_var"])


def test_large_tensors_partly_changed_and_strided(tmp_path, cli_json):
    torch.manual_seed(1)
    big = torch.randn(3_000_000)  # 12 MB: three 4 MiB chunks
    small = {f"s{i}.running_mean": torch.randn(7 + i) for i in range(40)}
    mat = torch.randn(300, 200)
    sa = {"big.weight": big, **small, "t.weight": mat.t(), "h.half": big[:1000].half(),
          "h.bf16": big[:1000].bfloat16()}
    a = save(sa, tmp_path / "a.pt")
    big_b = big.clone()
    big_b[2_500_000] += 1.0  # only the last chunk differs
    small_b = {k: v.clone() for k, v in small.items()}
    small_b["s17.running_mean"][3] = 5.0
    mat_b = mat.clone()
    mat_b[5, 7] = 0.0
    hb = big[:1000].half().clone()
    hb[10] = 3.0
    sb = {"big.weight": big_b, **small_b, "t.weight": mat_b.t(), "h.half": hb,
          "h.bf16": big[:1000].bfloat16()}
    b = save(sb, tmp_path / "b.pt")
    doc = cli_json("diff", a, b, "--all", code=1)
    validate(doc)
    got = by_key(doc)
    for k in ("big.weight", "s17.running_mean", "t.weight", "h.half"):
        assert got[k]["status"] == "changed", k
        check_metrics(got[k], sa[k], sb[k])
    assert got["h.bf16"]["status"] == "equal"
    assert sum(e["status"] == "equal" for e in doc["entries"]) == len(sa) - 4


def test_training_checkpoint_picks_model_state(samples, tmp_path, cli, cli_json):
    doc = cli_json("diff", samples / "train_adam.pt", samples / "train_adam.pt", "--all")
    assert doc["containers"] == ["model", "model"] and doc["identical"]
    both = tmp_path / "two.pt"
    sd = torch.load(samples / "bn_before.pt", weights_only=True)
    torch.save({"model": sd, "ema": sd}, both)
    r = cli("diff", both, both)
    assert r.exit_code == 2 and "--container" in r.stderr
    doc = cli_json("diff", both, samples / "bn_after_train.pt", "--container", "ema",
                   "--container", "", code=1)
    assert doc["containers"] == ["ema", ""]
    assert cli("diff", both, both, "--container", "nope").exit_code == 2


def test_pickled_module_counts_as_module_state(samples, cli_json):
    doc = cli_json("diff", samples / "buffer_zoo_module.pt",
                   samples / "buffer_zoo_state_dict.pt", "--all", code=1)
    validate(doc)
    assert doc["containers"][0] == ""
    # the non-persistent buffer lives in the module but never reaches a state dict
    assert [e["key"] for e in doc["entries"] if e["status"] != "equal"] == ["cache"]
    assert by_key(doc)["cache"]["status"] == "removed"


def test_bad_input_exit_2(tmp_path, samples, cli):
    r = cli("diff", tmp_path / "missing.pt", samples / "bn_before.pt")
    assert r.exit_code == 2 and "missing.pt" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = cli("diff", samples / "bn_before.pt", junk)
    assert r.exit_code == 2 and "junk.pt" in r.stderr
    assert cli("diff", samples / "bn_before.pt").exit_code == 2


def test_device_cuda_without_gpu_is_usage_error(samples, cli):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = cli("diff", samples / "bn_before.pt", samples / "bn_after_train.pt", "--device", "cuda")
    assert r.exit_code == 2 and "cuda" in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu(tmp_path, samples):
    torch.manual_seed(2)
    sa = {"w.weight": torch.randn(2_000_000), "m.running_var": torch.rand(64),
          "m.num_batches_tracked": torch.tensor(3), "h.half": torch.randn(5000).half()}
    sb = {k: v.clone() for k, v in sa.items()}
    sb["w.weight"][::7] += 1e-3
    sb["m.running_var"][1] = float("nan")
    sb["m.num_batches_tracked"] += 4
    sb["h.half"][::3] *= 1.5
    a, b = save(sa, tmp_path / "a.pt"), save(sb, tmp_path / "b.pt")
    cpu = bufinspect.diff(str(a), str(b), scope="all", device="cpu").to_dict()
    gpu = bufinspect.diff(str(a), str(b), scope="all", device="cuda").to_dict()
    assert gpu["device"].startswith("cuda")
    for ec, eg in zip(cpu["entries"], gpu["entries"]):
        for k, v in ec.items():
            if isinstance(v, float):
                assert eg[k] == pytest.approx(v, rel=1e-9, abs=1e-15), k  # summation order
            else:
                assert eg[k] == v, k


# ---- output formats ------------------------------------------------------------------------


def test_formats(samples, cli):
    a, b = samples / "bn_before.pt", samples / "bn_after_train.pt"
    gh = cli("diff", a, b, "--format", "github")
    assert gh.exit_code == 1
    errors = [l for l in gh.stdout.splitlines() if l.startswith("::error file=")]
    doc = json.loads(cli("diff", a, b, "--format", "json").stdout)
    assert len(errors) == sum(e["status"] == "changed" for e in doc["entries"]) > 0
    assert any("bn1.num_batches_tracked changed" in l and "0 -> 3" in l for l in errors)
    md = cli("diff", a, b, "--format", "markdown", "--show-equal")
    assert md.exit_code == 1 and "| status | key |" in md.stdout
    assert "norm2.num\\_batches\\_tracked" in md.stdout
    table = cli("diff", a, b, "--all")
    lines = table.stdout.splitlines()
    # sorted by how much each entry moved: the running means (rel_l2 = 1) before conv1.bias
    assert next(i for i, l in enumerate(lines) if "bn1.running_mean" in l) < \
        next(i for i, l in enumerate(lines) if "conv1.bias" in l)
    assert "rtol=1e-05, atol=1e-08" in lines[-1]


def test_hostile_names_are_escaped(tmp_path, cli):
    evil = "m.\x1b[31mred[bold]x"
    a = save({evil: torch.zeros(2)}, tmp_path / "a.pt")
    b = save({evil: torch.ones(2)}, tmp_path / "b.pt")
    for fmt in ("table", "github", "markdown"):
        r = cli("diff", a, b, "--format", fmt, "--all")
        assert r.exit_code == 1
        assert "\x1b" not in r.stdout and "\\x1b" in r.stdout


# ---- saved metrics -------------------------------------------------------------------------


def test_save_and_rejudge_metrics(tmp_path, cli, cli_json):
    torch.manual_seed(3)
    sa = {f"l{i}.running_var": torch.rand(5000) * 10 ** (i - 2) for i in range(5)}
    sa["n.num_batches_tracked"] = torch.tensor(10)
    sb = {k: v * (1 + torch.randn_like(v) * 10 ** -(3 + i)) + 10 ** -(5 + i) * torch.randn_like(v)
          for i, (k, v) in enumerate(list(sa.items())[:5])}
    sb["n.num_batches_tracked"] = torch.tensor(10)
    a, b = save(sa, tmp_path / "a.pt"), save(sb, tmp_path / "b.pt")
    saved = tmp_path / "m.json"
    first = cli_json("diff", a, b, "--save-metrics", saved, code=1)
    stored = json.loads(saved.read_text())
    validate(stored)
    assert all("envelope" in e for e in stored["entries"] if e["status"] != "equal")
    same = cli_json("diff", "--from-metrics", saved, code=1)
    assert [e["status"] for e in same["entries"]] == [e["status"] for e in first["entries"]]
    assert [e["mismatched"] for e in same["entries"]] == [e["mismatched"] for e in first["entries"]]
    approx = 0
    for rtol in (0, 1e-6, 1e-4, 1e-3, 1e-2, 0.1):
        for atol in (0, 1e-8, 1e-6, 1e-4, 1e-2):
            args = ("--rtol", str(rtol), "--atol", str(atol))
            real = cli("diff", a, b, *args, "--format", "json")
            judged = cli("diff", "--from-metrics", saved, *args, "--format", "json")
            rj = by_key(json.loads(real.stdout))
            jj = by_key(json.loads(judged.stdout))
            for k in rj:
                if jj[k].get("approximate"):
                    approx += 1
                    assert jj[k]["status"] == "changed"
                else:
                    assert jj[k]["status"] == rj[k]["status"], (k, rtol, atol)
            if not any(e.get("approximate") for e in jj.values()):
                assert judged.exit_code == real.exit_code
    assert approx < 10
    r = cli("diff", "--from-metrics", saved, "--tol", "l4.*=0.5")
    assert r.exit_code == 1 and "re-judged from saved metrics" in r.stdout


def test_from_metrics_bad_file(tmp_path, cli, samples):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = cli("diff", "--from-metrics", bad)
    assert r.exit_code == 2 and "bad.json" in r.stderr
    bad.write_text(json.dumps({"schema": "bufinspect/1", "command": "show"}))
    assert cli("diff", "--from-metrics", bad).exit_code == 2
    r = cli("diff", samples / "bn_before.pt", samples / "bn_before.pt", "--from-metrics", bad)
    assert r.exit_code == 2


def test_rejudge_envelope_bounds():
    from bufinspect.numeric import DiffAccumulator, rejudge

    import numpy as np
    rng = np.random.default_rng(0)
    b = rng.random(10000).astype(np.float64) * 100
    a = b + rng.normal(size=b.size) * 1e-3
    acc = DiffAccumulator(0, 0, envelope=True)
    acc.add(a, b, "float64")
    pts = acc.envelope_points()
    assert 0 < len(pts) < 200
    d, ab = np.abs(a - b), np.abs(b)
    for rtol in (0, 1e-6, 1e-5, 3e-5, 1e-4):
        for atol in (0, 1e-4, 1e-3, 3e-3, 1e-2):
            truth = bool(np.all(d <= atol + rtol * ab))
            verdict = rejudge(pts, rtol, atol)
            assert verdict is None or verdict == truth, (rtol, atol)


def test_paired_chunks_unaligned_offsets(tmp_path):
    """safetensors data is often only 4-byte aligned, and A and B differ in header length:
    reads start at aligned offsets, views must still hold exactly the tensor's elements."""
    from safetensors.torch import save_file

    import bufinspect

    torch.manual_seed(4)
    big = torch.randn(700_000)  # 2.8 MB: one piece of its own
    save_file({"a.weight": big, "x": torch.zeros(3)}, str(tmp_path / "a.safetensors"))
    changed = big.clone()
    changed[123_456] = 7.0
    save_file({"a.weight": changed, "longer_name_shifts_the_header": torch.zeros(5)},
              str(tmp_path / "b.safetensors"))
    ea = next(e for e in bufinspect.load(str(tmp_path / "a.safetensors")).entries
              if e.key == "a.weight")
    eb = next(e for e in bufinspect.load(str(tmp_path / "b.safetensors")).entries
              if e.key == "a.weight")
    for skip in (False, True):
        (chunk,) = list(stream.paired_chunks([(ea, eb)], skip_equal=skip))
        assert not chunk.equal
        (_, first, count, a, b), = chunk.items
        assert (first, count) == (0, big.numel())
        assert torch.equal(torch.from_numpy(a.copy()), big)
        assert torch.equal(torch.from_numpy(b.copy()), changed)
    same = list(stream.paired_chunks([(ea, ea)], skip_equal=True))
    assert [c.equal for c in same] == [True] and same[0].items[0][3] is None


def test_identical_data_needs_no_numpy(tmp_path, base_sd):
    """A diff of identical checkpoints (the usual CI case) compares bytes with memcmp and reads
    integer scalars directly: numpy (~0.1 s to import) is loaded only when bytes differ."""
    import subprocess
    import sys

    a = save(base_sd, tmp_path / "a.pt")
    b = save({k: v.clone() for k, v in base_sd.items()}, tmp_path / "b.pt")
    changed = save({**base_sd, "bn.running_var": base_sd["bn.running_var"] + 1}, tmp_path / "c.pt")
    code = ("import sys, bufinspect; "
            "r = bufinspect.diff(sys.argv[1], sys.argv[2], scope='all', jobs=2); "
            "e = {x.key: x for x in r.entries}; "
            "print(r.has_differences, 'numpy' in sys.modules, "
            "e['bn.num_batches_tracked'].old, e['bn.num_batches_tracked'].new)")
    root = str(Path(bufinspect.__file__).parent.parent)
    run = [sys.executable, "-c", code]
    same = subprocess.run([*run, str(a), str(b)], check=True, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": root})
    n = base_sd["bn.num_batches_tracked"].item()
    assert same.stdout.split() == ["False", "False", str(n), str(n)]
    moved = subprocess.run([*run, str(a), str(changed)], check=True, capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": root})
    assert moved.stdout.split() == ["True", "True", str(n), str(n)]
