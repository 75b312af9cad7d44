"""`check`: each finding planted in a real checkpoint, policies from flags and pyproject."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources

import jsonschema
import pytest
import torch
from torch import nn

import bufinspect
from bufinspect.analysis import findings
from bufinspect.analysis.policy import make_policy
from bufinspect.model import Severity
from bufinspect.render import OutputFormat
from make_samples import save_tagged
from conftest import ROOT, SAMPLES, torch_listing
from sample_modules import BufferZoo, SmallCNN

NO_GPU = not torch.cuda.is_available()


def schema():
    return json.loads(resources.files("bufinspect").joinpath("schema/bufinspect-1.json")
                      .read_text())


@pytest.fixture(autouse=True)
def _no_project_config(tmp_path, monkeypatch):
    """Run from an empty folder so the repository's own pyproject.toml plays no part."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def run_check(cli):
    """Run `check ... --format json`, assert the exit code and the schema, return the document."""
    def run(*args, code: int | None = None):
        r = cli("check", *args, "--format", "json")
        if code is not None:
            assert r.exit_code == code, r.stderr + r.stdout
        doc = json.loads(r.stdout)
        jsonschema.validate(doc, schema())
        return doc
    return run


def ids(doc) -> dict[str, dict]:
    out = {}
    for f in doc["findings"]:
        assert f["id"] not in out or f["id"] == "missing-num-batches-tracked"
        out[f["id"]] = f
    return out




def cnn_sd(seed=0):
    torch.manual_seed(seed)
    return SmallCNN().state_dict()


# ---- clean input and the SPEC findings ------------------------------------------------------

@pytest.mark.parametrize("name", ["cnn_state_dict.pt", "cnn_state_dict_legacy.pt",
                                  "cnn.safetensors", "bn_after_train.pt", "train_adam.pt"])
def test_clean_checkpoint_passes(run_check, name):
    doc = run_check(SAMPLES / name, code=0)
    assert doc["ok"] is True and doc["device"] == "cpu"
    assert not [f for f in doc["findings"] if f["severity"] != "info"]


def test_clean_table_verdict(cli):
    r = cli("check", SAMPLES / "cnn_state_dict.pt")
    assert r.exit_code == 0
    assert "OK: no findings in 1 file (numeric checks on cpu)" in r.stdout


def test_cuda1_sample_mixed_devices_and_gpu_saved(run_check):
    path = SAMPLES / "cnn_cuda1.pt"
    doc = run_check(path, code=1)
    found = ids(doc)
    tagged = sorted(k for k, (_, _, dev) in torch_listing(path).items() if dev == "cuda:1")
    assert found["mixed-devices"]["severity"] == "error"
    assert sorted(found["mixed-devices"]["keys"]) == tagged
    assert found["gpu-saved"]["severity"] == "warning"
    assert sorted(found["gpu-saved"]["keys"]) == tagged
    assert "map_location='cpu'" in found["gpu-saved"]["message"]
    assert doc["ok"] is False


def test_all_on_one_gpu_is_only_a_warning(run_check, cli, tmp_path):
    path = tmp_path / "gpu0.pt"
    save_tagged(cnn_sd(), path, "cuda:0")
    assert set(torch_listing(path)[k][2] for k in torch_listing(path)) == {"cuda:0"}
    doc = run_check(path, code=0)
    assert set(ids(doc)) == {"gpu-saved"}
    assert ids(doc)["gpu-saved"]["message"].startswith("15 tensors saved from cuda:0")
    run_check(path, "--strict", code=1)
    run_check(path, "--strict", "--ignore", "gpu-saved", code=0)


def test_mixed_param_dtypes(run_check, tmp_path):
    torch.manual_seed(0)
    m = SmallCNN()
    m.head.half()
    path = tmp_path / "mixed.pt"
    torch.save(m.state_dict(), path)
    f = ids(run_check(path, code=0))["mixed-param-dtypes"]
    assert f["severity"] == "warning"
    assert sorted(f["keys"]) == ["head.bias", "head.weight"]
    assert "float16" in f["message"] and "float32" in f["message"]


class EmaNet(nn.Module):
    """A Linear with a float64 running average buffer: buffers and parameters differ in dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))
        self.register_buffer("ema", torch.zeros(4, dtype=torch.float64))


def test_buffer_dtype_mismatch_from_pickled_module(run_check, tmp_path):
    path = tmp_path / "ema_module.pt"
    torch.save(EmaNet(), path)
    f = ids(run_check(path, code=0))["buffer-dtype-mismatch"]
    assert f["severity"] == "warning" and f["keys"] == ["ema"]
    # in a plain state dict the roles of `weight`/`ema` are undecided: no definite claim
    sd_path = tmp_path / "ema_sd.pt"
    torch.save(EmaNet().state_dict(), sd_path)
    assert "buffer-dtype-mismatch" not in ids(run_check(sd_path))


def test_nan_and_inf_counted_like_torch(run_check, tmp_path):
    sd = cnn_sd()
    sd["conv1.weight"].view(-1)[[0, 5, 7]] = float("nan")
    sd["head.weight"][0, 0] = float("inf")
    sd["head.bias"][1] = float("-inf")
    sd["bn1.running_mean"][2] = float("nan")
    path = tmp_path / "nonfinite.pt"
    torch.save(sd, path)
    doc = run_check(path, code=1)
    found = ids(doc)
    want_nan = {k: int(t.isnan().sum()) for k, t in sd.items() if t.is_floating_point()
                and t.isnan().any()}
    want_inf = {k: int(t.isinf().sum()) for k, t in sd.items() if t.is_floating_point()
                and t.isinf().any()}
    assert found["nan"]["severity"] == found["inf"]["severity"] == "error"
    assert sorted(found["nan"]["keys"]) == sorted(want_nan)
    assert sorted(found["inf"]["keys"]) == sorted(want_inf)
    assert found["nan"]["message"] == \
        "4 NaNs in 2 tensors: conv1.weight (3) and bn1.running_mean (1)"
    report = bufinspect.check([str(path)], device="cpu")
    for k, n in want_nan.items():
        assert report.stats[(str(path), "", k)].nan == n


def test_nan_in_bfloat16_and_single_message(run_check, tmp_path):
    sd = {k: v.bfloat16() if v.is_floating_point() else v for k, v in cnn_sd().items()}
    sd["bn1.running_var"] = sd["bn1.running_var"].float()
    sd["bn1.running_var"][0] = float("nan")
    path = tmp_path / "bf16.pt"
    torch.save(sd, path)
    f = ids(run_check(path, code=1))["nan"]
    assert f["message"] == "bn1.running_var holds 1 NaN"


def test_negative_variance(run_check, tmp_path):
    sd = cnn_sd()
    sd["bn1.running_var"][[1, 3]] = -0.5
    path = tmp_path / "negvar.pt"
    torch.save(sd, path)
    f = ids(run_check(path, code=1))["negative-variance"]
    assert f["severity"] == "error" and f["keys"] == ["bn1.running_var"]
    assert "2 of 8" in f["message"] and "-0.5" in f["message"]


def test_negative_values_elsewhere_are_fine(run_check, tmp_path):
    sd = cnn_sd()
    sd["bn1.running_mean"][:] = -1.0
    path = tmp_path / "negmean.pt"
    torch.save(sd, path)
    assert "negative-variance" not in ids(run_check(path, code=0))


def test_expected_dtype_single_and_per_role(run_check, tmp_path):
    path = SAMPLES / "cnn_state_dict.pt"
    f = ids(run_check(path, "--expect-dtype", "bfloat16", code=1))["expected-dtype"]
    floating = [k for k, (_, dt, _) in torch_listing(path).items() if dt == "float32"]
    assert sorted(f["keys"]) == sorted(floating)  # num_batches_tracked (int64) is exempt
    run_check(path, "--expect-dtype", "float32", code=0)
    run_check(path, "--expect-dtype", "torch.float", code=0)

    m = SmallCNN().bfloat16()
    sd = m.state_dict()
    for k in sd:
        if "running" in k:
            sd[k] = sd[k].float()
    mixed = tmp_path / "bf16_fp32_stats.pt"
    torch.save(sd, mixed)
    run_check(mixed, "--expect-dtype", "parameter=bfloat16,buffer=float32", code=0)
    f = ids(run_check(mixed, "--expect-dtype", "parameter=bfloat16,buffer=bfloat16",
                      code=1))["expected-dtype"]
    assert sorted(f["keys"]) == sorted(k for k in sd if "running_" in k)


def test_expected_device(run_check):
    path = SAMPLES / "cnn_cuda1.pt"
    f = ids(run_check(path, "--expect-device", "cpu", code=1))["expected-device"]
    assert sorted(f["keys"]) == sorted(k for k in torch_listing(path) if k.startswith("bn1."))
    f = ids(run_check(path, "--expect-device", "cuda", code=1))["expected-device"]
    assert not any(k.startswith("bn1.") for k in f["keys"]) and len(f["keys"]) == 10
    run_check(SAMPLES / "cnn_state_dict.pt", "--expect-device", "cpu", code=0)


# ---- extra findings -------------------------------------------------------------------------

def test_low_precision_running_stats(run_check, tmp_path):
    sd = cnn_sd()
    sd["bn1.running_var"] = sd["bn1.running_var"].half()
    sd["norm2.running_mean"] = sd["norm2.running_mean"].bfloat16()
    path = tmp_path / "lowprec.pt"
    torch.save(sd, path)
    found = ids(run_check(path, code=0))
    assert found["low-precision-stats"]["severity"] == "warning"
    assert sorted(found["low-precision-stats"]["keys"]) == ["bn1.running_var",
                                                            "norm2.running_mean"]
    assert "bn1.running_var" in found["buffer-dtype-mismatch"]["keys"]


def test_num_batches_tracked_dtype(run_check, tmp_path):
    sd = cnn_sd()
    sd["bn1.num_batches_tracked"] = sd["bn1.num_batches_tracked"].int()
    path = tmp_path / "nbt32.pt"
    torch.save(sd, path)
    f = ids(run_check(path, code=0))["num-batches-tracked-dtype"]
    assert f["keys"] == ["bn1.num_batches_tracked"] and "int32" in f["message"]


def test_meta_tensors(run_check, tmp_path):
    path = tmp_path / "meta.pt"
    torch.save(nn.Linear(2, 2, device="meta").state_dict(), path)
    f = ids(run_check(path, code=1))["meta-tensor"]
    assert f["severity"] == "error" and sorted(f["keys"]) == ["bias", "weight"]


def _strict_load_missing(sd) -> list[str]:
    m = SmallCNN()
    return m.load_state_dict(sd, strict=False).missing_keys


def test_missing_num_batches_tracked_new_and_old_format(run_check, tmp_path):
    sd = cnn_sd()
    meta = sd._metadata
    del sd["bn1.num_batches_tracked"]
    sd._metadata = meta  # version 2 kept: torch will report the key missing
    assert _strict_load_missing(sd) == ["bn1.num_batches_tracked"]
    path = tmp_path / "v2_no_nbt.pt"
    torch.save(sd, path)
    f = ids(run_check(path, code=0))["missing-num-batches-tracked"]
    assert f["severity"] == "warning" and f["keys"] == ["bn1.num_batches_tracked"]

    sd._metadata["bn1"]["version"] = 1  # the old format: torch fills in 0
    assert _strict_load_missing(sd) == []
    old = tmp_path / "v1_no_nbt.pt"
    torch.save(sd, old)
    doc = run_check(old, "--strict", code=0)
    f = ids(doc)["missing-num-batches-tracked"]
    assert f["severity"] == "info" and f["keys"] == ["bn1.num_batches_tracked"]


class TiedNet(nn.Module):
    """An embedding and an output projection that share one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight


def test_shared_storage_is_info(run_check, tmp_path):
    path = tmp_path / "tied.pt"
    torch.save(TiedNet().state_dict(), path)
    doc = run_check(path, "--strict", code=0)
    f = ids(doc)["shared-storage"]
    assert f["severity"] == "info" and sorted(f["keys"]) == ["embed.weight", "out.weight"]


def test_non_persistent_buffer_from_pickled_module(run_check):
    f = ids(run_check(SAMPLES / "buffer_zoo_module.pt", code=0))["non-persistent-buffer"]
    zoo = BufferZoo()
    want = [n for n, _ in zoo.named_buffers() if n not in zoo.state_dict()]
    assert f["severity"] == "info" and f["keys"] == want == ["cache"]


# ---- several paths, policy from pyproject, usage errors -------------------------------------

def test_several_paths_one_report(run_check):
    a, b = SAMPLES / "cnn_state_dict.pt", SAMPLES / "cnn_cuda1.pt"
    doc = run_check(a, b, code=1)
    assert doc["paths"] == [str(a), str(b)]
    assert {f["path"] for f in doc["findings"]} == {str(b)}
    assert [f["severity"] for f in doc["findings"]] == ["error", "warning"]


def test_policy_from_pyproject(run_check, tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.bufinspect.check]\nexpect-dtype = "bfloat16"\n'
        'ignore = ["gpu-saved"]\nstrict = true\n')
    sub = tmp_path / "deep" / "er"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # the nearest pyproject.toml is two levels up
    path = SAMPLES / "cnn_state_dict.pt"
    assert "expected-dtype" in ids(run_check(path, code=1))
    run_check(path, "--expect-dtype", "float32", code=0)  # a flag overrides the file
    run_check(path, "--no-config", code=0)
    cuda0 = tmp_path / "gpu0.pt"
    save_tagged(cnn_sd(), cuda0, "cuda:0")
    doc = run_check(cuda0, "--expect-dtype", "float32", code=0)  # gpu-saved ignored by config
    assert doc["findings"] == []
    doc = run_check(cuda0, "--expect-dtype", "float32", "--ignore", "shared-storage", code=1)
    assert [f["id"] for f in doc["findings"]] == ["gpu-saved"]  # strict from the file


def test_policy_table_form_in_pyproject(run_check, tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.bufinspect]\ncheck = {expect-dtype = {parameter = "bfloat16", '
        'buffer = "float32"}, expect-device = "cpu"}\n')
    monkeypatch.chdir(tmp_path)
    f = ids(run_check(SAMPLES / "cnn_state_dict.pt", code=1))["expected-dtype"]
    # definite parameters must be bfloat16; undecided float32 tensors could be buffers, which
    # may be float32: no claim about them
    import bufinspect

    want = [e.key for e in bufinspect.load(SAMPLES / "cnn_state_dict.pt").entries
            if e.role is bufinspect.Role.PARAMETER]
    assert "bn1.weight" in want and f["keys"] == want


@pytest.mark.parametrize("text, what", [
    ("[tool.bufinspect.check]\nexpect_dtype = 'float32'\n", "unknown setting"),
    ("[tool.bufinspect.check]\nignore = 'nan'\n", "must be a list"),
    ("[tool.bufinspect.check]\nexpect-dtype = 'float33'\n", "unknown dtype"),
    ("[tool.bufinspect.check\n", "cannot read"),
])
def test_bad_pyproject_is_usage_error(cli, tmp_path, monkeypatch, text, what):
    (tmp_path / "pyproject.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    r = cli("check", SAMPLES / "cnn_state_dict.pt")
    assert r.exit_code == 2 and what in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, what", [
    (["--ignore", "nan,bogus"], "unknown finding id 'bogus'"),
    (["--expect-dtype", "float33"], "unknown dtype"),
    (["--expect-dtype", "weights=float32"], "unknown role"),
    (["--expect-device", "cuda 0"], "bad device"),
    (["--device", "tpu"], "'tpu' is not one of"),  # a choice: typer names the valid ones
])
def test_usage_errors(cli, args, what):
    r = cli("check", SAMPLES / "cnn_state_dict.pt", *args)
    assert r.exit_code == 2 and what in r.stderr, r.stderr


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without CUDA")
def test_device_cuda_without_gpu_is_usage_error(cli):
    r = cli("check", SAMPLES / "cnn_state_dict.pt", "--device", "cuda")
    assert r.exit_code == 2 and "no CUDA GPU" in r.stderr


def test_bad_input_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = cli("check", SAMPLES / "cnn_state_dict.pt", bad)
    assert r.exit_code == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr


# ---- output formats -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_every_format_is_handled(cli, fmt):
    r = cli("check", SAMPLES / "cnn_cuda1.pt", "--format", fmt.value)
    assert r.exit_code == 1 and r.stdout.strip()


def test_github_annotations(cli):
    r = cli("check", SAMPLES / "cnn_cuda1.pt", "--format", "github")
    lines = r.stdout.splitlines()
    path = str(SAMPLES / "cnn_cuda1.pt").replace(":", "%3A").replace(",", "%2C")
    assert lines[0].startswith(f"::error file={path},title=mixed-devices::module tensors")
    assert lines[1].startswith(f"::warning file={path},title=gpu-saved::5 tensors")
    assert "FAIL: 1 error, 1 warning" in r.stderr


def test_markdown_summary(cli):
    r = cli("check", SAMPLES / "cnn_cuda1.pt", "--format", "markdown")
    assert r.stdout.startswith("## bufinspect check\n")
    assert "| severity | id | message |" in r.stdout
    assert "| error | mixed-devices |" in r.stdout


def test_names_from_files_are_escaped(cli, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"a\x1b[31m.running_var": -torch.ones(2), "a\x1b[31m.running_mean": torch.ones(2)},
               path)
    for fmt in ("table", "markdown", "github"):
        r = cli("check", path, "--format", fmt)
        assert r.exit_code == 1 and "\x1b[31m" not in r.stdout and "\\x1b" in r.stdout


def test_help_lists_every_id(cli):
    r = cli("check", "--help")
    for fid, (severity, _) in findings.FINDINGS.items():
        assert re.search(rf"^\s+{fid}\s+{severity.value}\s", r.stdout, re.M), fid


def test_cpu_path_does_not_import_torch():
    code = ("import sys, bufinspect; "
            "r = bufinspect.check(['%s'], device='cpu'); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(r.ok)"
            % (SAMPLES / "cnn_state_dict.pt"))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_name_keys_groups():
    assert findings.name_keys(["a"]) == "a"
    assert findings.name_keys(["a", "b"]) == "a and b"
    assert findings.name_keys([f"k{i}" for i in range(45)]) == "k0, k1, k2 and 42 more"


def test_container_selection(run_check, cli, tmp_path):
    sd = cnn_sd()
    sd["bn1.running_var"][0] = -1.0
    opt = {"state": {0: {"exp_avg": torch.full((2,), float("nan"))}}, "param_groups": []}
    path = tmp_path / "train.pt"
    torch.save({"model": sd, "optimizer": opt}, path)
    found = ids(run_check(path, code=1))
    assert set(found) == {"nan", "negative-variance"}
    assert found["negative-variance"]["keys"] == ["model/bn1.running_var"]
    found = ids(run_check(path, "--container", "model", code=1))
    assert set(found) == {"negative-variance"}
    r = cli("check", path, "--container", "nope")
    assert r.exit_code == 2 and "no container 'nope'" in r.stderr


def test_python_api_matches_cli(run_check):
    path = str(SAMPLES / "cnn_cuda1.pt")
    report = bufinspect.check([path], expect_device="cpu", ignore=["gpu-saved"], device="cpu")
    policy = make_policy(expect_device="cpu", ignore=["gpu-saved"])
    from bufinspect.analysis.check import check
    assert check([bufinspect.load(path)], policy, device="cpu") == report
    assert report.to_dict() == run_check(path, "--expect-device", "cpu", "--ignore", "gpu-saved")
    assert not report.ok and report.count(Severity.ERROR) == 2


def test_pre_commit_hook_definition():
    yaml = pytest.importorskip("yaml")
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "bufinspect-check" and hook["entry"] == "bufinspect check"
    pattern = re.compile(hook["files"])
    for name in ("a.pt", "dir/b.pth", "c.bin", "d.ckpt", "e.safetensors"):
        assert pattern.search(name), name
    assert not pattern.search("model.py")
