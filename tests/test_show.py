"""`show` on the bundled samples, compared with what torch itself reports."""

from __future__ import annotations

import dataclasses
import io
import os
import json
import math
import subprocess
import sys

import jsonschema
import pytest
import torch
from safetensors.torch import save_file

import bufinspect
from bufinspect import Role
from conftest import ROOT, SAMPLES, torch_listing
from helpers import schema  # noqa: F401

TORCH_SAMPLES = ["cnn_state_dict.pt", "cnn_state_dict_legacy.pt", "buffer_zoo_state_dict.pt",
                 "train_adam.pt", "cnn_cuda1.pt", "bn_before.pt", "bn_after_train.pt"]


def flat(doc) -> dict[str, tuple[tuple[int, ...], str, str | None]]:
    out = {}
    for e in doc["entries"]:
        key = e["key"]
        if e["container"]:
            # optimizer entries are "state.<id>.<name>" under the container path
            parts = key.split(".", 2) if key.startswith("state.") else [key]
            key = "/".join([e["container"], *parts])
        out[key] = (tuple(e["shape"]), e["dtype"], e["device"])
    return out


@pytest.mark.parametrize("name", TORCH_SAMPLES)
def test_listing_matches_torch(cli_json, name):
    doc = cli_json("show", SAMPLES / name)
    jsonschema.validate(doc, schema())
    assert flat(doc) == torch_listing(SAMPLES / name)


def test_cuda_tags_read_on_cpu(cli_json):
    doc = cli_json("show", SAMPLES / "cnn_cuda1.pt")
    devices = {e["key"]: e["device"] for e in doc["entries"]}
    assert devices["bn1.running_var"] == "cuda:1"
    assert devices["conv1.weight"] == "cpu"
    assert doc["summary"]["devices"] == {"cpu": 10, "cuda:1": 5}


def test_safetensors_matches_torch(cli_json):
    from safetensors import safe_open

    doc = cli_json("show", SAMPLES / "cnn.safetensors")
    jsonschema.validate(doc, schema())
    assert doc["format"] == "safetensors"
    assert doc["metadata"]["source"] == "bufinspect samples"
    with safe_open(str(SAMPLES / "cnn.safetensors"), "pt") as f:
        want = {k: (tuple(f.get_tensor(k).shape), str(f.get_tensor(k).dtype)[6:], None)
                for k in f.keys()}
    assert flat(doc) == want


def test_pickled_module_roles_equal_live_module(cli_json):
    from sample_modules import BufferZoo

    live = BufferZoo()
    doc = cli_json("show", SAMPLES / "buffer_zoo_module.pt")
    assert doc["containers"] == [{"path": "", "kind": "module"}]
    got = {e["key"]: (e["role"], e["persistent"]) for e in doc["entries"]}
    nonpersistent = {"cache"}
    want = {k: ("parameter", None) for k, _ in live.named_parameters()}
    want.update({k: ("buffer", k not in nonpersistent) for k, _ in live.named_buffers()})
    assert got == want
    shapes = {e["key"]: tuple(e["shape"]) for e in doc["entries"]}
    live_shapes = {k: tuple(v.shape) for k, v in [*live.named_parameters(), *live.named_buffers()]}
    assert shapes == live_shapes


def test_state_dict_roles_never_wrong(samples):
    """Plain state dicts: every definite role agrees with the live module; the rest is unknown."""
    from sample_modules import BufferZoo, SmallCNN

    for name, model in [("cnn_state_dict.pt", SmallCNN()), ("cnn_state_dict_legacy.pt", SmallCNN()),
                        ("cnn.safetensors", SmallCNN()),
                        ("buffer_zoo_state_dict.pt", BufferZoo())]:
        truth = {k: Role.PARAMETER for k, _ in model.named_parameters()}
        truth.update({k: Role.BUFFER for k, _ in model.named_buffers()})
        ck = bufinspect.load(samples / name)
        for e in ck.entries:
            if e.role is not Role.UNKNOWN:
                assert e.role is truth[e.key], (name, e.key, e.evidence)
        roles = {e.key: e.role for e in ck.entries}
        # what the foundation rules must decide
        assert roles["bn1.running_var"] is Role.BUFFER if "bn1.running_var" in roles else True
    zoo = {e.key: e for e in bufinspect.load(samples / "buffer_zoo_state_dict.pt").entries}
    assert zoo["steps"].role is Role.BUFFER and zoo["steps"].evidence == "dtype:int64"
    assert zoo["mask"].role is Role.BUFFER
    assert "cache" not in zoo  # non-persistent: absent from a state dict


def test_training_checkpoint_containers(cli_json):
    doc = cli_json("show", SAMPLES / "train_adam.pt")
    assert doc["containers"] == [{"path": "model", "kind": "state_dict"},
                                 {"path": "optimizer", "kind": "optimizer"}]
    other = [e for e in doc["entries"] if e["container"] == "optimizer"]
    assert other and all(e["role"] == "other" for e in other)
    only_model = cli_json("show", SAMPLES / "train_adam.pt", "--container", "model")
    assert {e["container"] for e in only_model["entries"]} == {"model"}


def test_role_and_filter_selection(cli_json):
    doc = cli_json("show", SAMPLES / "cnn_state_dict.pt", "--role", "buffer")
    assert {e["role"] for e in doc["entries"]} == {"buffer"}
    assert len(doc["entries"]) == 6
    doc = cli_json("show", SAMPLES / "cnn_state_dict.pt", "--filter", "bn1.*")
    assert all(e["key"].startswith("bn1.") for e in doc["entries"]) and len(doc["entries"]) == 5


def test_unknown_container_is_usage_error(cli):
    r = cli("show", SAMPLES / "train_adam.pt", "--container", "ema")
    assert r.exit_code == 2
    assert "no container 'ema'" in r.stderr and r.stdout == ""


def _torch_stats(t: torch.Tensor):
    t = t.double().flatten()
    finite = t[torch.isfinite(t)]
    return {"min": finite.min().item(), "max": finite.max().item(), "mean": finite.mean().item(),
            "std": finite.std().item() if finite.numel() > 1 else 0.0,
            "nan": int(torch.isnan(t).sum()), "inf": int(torch.isinf(t).sum()),
            "zeros": int((t == 0).sum())}


def _check_stats(got, want):
    for k in ("nan", "inf", "zeros"):
        assert got[k] == want[k], k
    for k in ("min", "max", "mean", "std"):
        assert math.isclose(got[k], want[k], rel_tol=1e-5, abs_tol=1e-7), (k, got[k], want[k])


def test_stats_match_torch(cli_json):
    doc = cli_json("show", SAMPLES / "train_adam.pt", "--stats")
    jsonschema.validate(doc, schema())
    sd = torch.load(SAMPLES / "train_adam.pt", weights_only=True)["model"]
    for e in doc["entries"]:
        if e["container"] == "model":
            _check_stats(e["stats"], _torch_stats(sd[e["key"]]))


def test_stats_dtypes_nonfinite_and_views(tmp_path, cli_json):
    g = torch.Generator().manual_seed(0)
    big = torch.randn(700_000, generator=g) * 3 + 100  # several chunks, mean >> std
    t = torch.randn(64, 32, generator=g)
    sd = {
        "f32_big": big,
        "f16": torch.randn(1000, generator=g).half(),
        "bf16": torch.randn(1000, generator=g).bfloat16(),
        "f8": torch.randn(100, generator=g).to(torch.float8_e4m3fn),
        "f64": torch.randn(100, generator=g).double(),
        "i32": torch.randint(-5, 5, (100,), generator=g, dtype=torch.int32),
        "u8": torch.randint(0, 255, (100,), generator=g, dtype=torch.uint8),
        "bool": torch.rand(100, generator=g) > 0.5,
        "nonfinite": torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, 2.0]),
        "transposed": t.t(),
        "sliced": t[3:9, 4:20],
    }
    path = tmp_path / "mixed.pt"
    torch.save(sd, path)
    doc = cli_json("show", path, "--stats")
    jsonschema.validate(doc, schema())
    got = {e["key"]: e for e in doc["entries"]}
    for k, v in sd.items():
        assert tuple(got[k]["shape"]) == tuple(v.shape)
        _check_stats(got[k]["stats"], _torch_stats(v))
    assert got["nonfinite"]["stats"]["nan"] == 1 and got["nonfinite"]["stats"]["inf"] == 2
    assert got["f8"]["dtype"] == "float8_e4m3fn"


def test_nan_only_tensor_is_strict_json(tmp_path, cli):
    torch.save({"x": torch.full((3,), float("nan"))}, tmp_path / "nan.pt")
    r = cli("show", tmp_path / "nan.pt", "--stats", "--format", "json")
    assert r.exit_code == 0
    assert "NaN" not in r.stdout
    st = json.loads(r.stdout)["entries"][0]["stats"]
    assert st["nan"] == 3 and st["min"] is None


def test_human_output_exact(samples):
    """The table view at a fixed width, exactly."""
    from rich.console import Console

    from bufinspect import render

    report = bufinspect.show(samples / "buffer_zoo_state_dict.pt")
    ck = dataclasses.replace(report.checkpoint, path="buffer_zoo_state_dict.pt")
    report = dataclasses.replace(report, checkpoint=ck)
    out = io.StringIO()
    render.render_show_table(report, Console(width=100, file=out, color_system=None))
    golden = ROOT / "tests" / "golden" / "show_buffer_zoo.txt"
    if os.environ.get("BUFINSPECT_REGEN_GOLDEN"):
        golden.write_text(out.getvalue())
    assert out.getvalue() == golden.read_text()


def test_markdown_output(cli):
    r = cli("show", SAMPLES / "cnn_state_dict.pt", "--format", "markdown")
    assert r.exit_code == 0
    assert "### Buffers (6)" in r.stdout and "| bn1.running\\_var |" in r.stdout


def test_names_from_files_are_inert(tmp_path, cli):
    keys = ["x[bold]red[/bold]", "esc\x1b[31mred", "bidi\u202egnp.exe", "tab\there"]
    save_file({k: torch.zeros(1) for k in keys}, str(tmp_path / "evil.safetensors"))
    r = cli("show", tmp_path / "evil.safetensors")
    assert r.exit_code == 0
    assert "x[bold]red[/bold]" in r.stdout
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout
    assert "esc\\x1b[31mred" in r.stdout and "bidi\\u202egnp.exe" in r.stdout
    doc = json.loads(cli("show", tmp_path / "evil.safetensors", "--format", "json").stdout)
    assert sorted(e["key"] for e in doc["entries"]) == sorted(keys)  # JSON stays exact


def test_show_without_stats_never_imports_torch(samples):
    code = ("import sys; from bufinspect.cli import app\n"
            "try:\n    app(['show', sys.argv[1], '--format', 'json'])\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print('ok', file=sys.stderr)")
    for name in ["train_adam.pt", "cnn_state_dict_legacy.pt", "cnn.safetensors",
                 "buffer_zoo_module.pt"]:
        r = subprocess.run([sys.executable, "-c", code, str(samples / name)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "ok" in r.stderr, r.stderr


def test_version_and_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "bufinspect", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"bufinspect {bufinspect.__version__}"


def test_keep_vars_state_dict_marks_parameters(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    torch.save(model.state_dict(keep_vars=True), tmp_path / "kv.pt")
    roles = {e.key: (e.role, e.evidence) for e in bufinspect.load(tmp_path / "kv.pt").entries}
    assert roles["0.weight"] == (Role.PARAMETER, "pickle:Parameter")
    assert roles["1.running_var"][0] is Role.BUFFER


def test_long_sections_render_as_plain_columns(samples, monkeypatch):
    """Past PLAIN_ROWS rows a section is written as plain lines, unstyled even on a colour
    terminal (linear time), laid out like any other table."""
    from rich.console import Console

    from bufinspect import render
    from bufinspect.render import tables

    monkeypatch.setattr(tables, "PLAIN_ROWS", 2)
    out = io.StringIO()
    render.render_show_table(bufinspect.show(samples / "cnn_state_dict.pt"),
                             Console(width=100, file=out, color_system="standard",
                                     force_terminal=True))
    text = out.getvalue()
    section = text.split("Buffers (6)")[1].split("\n\n")[0]
    assert "\x1b" not in section.split("\n", 1)[1]  # the rows are plain
    lines = [ln for ln in text.splitlines() if ln.startswith(("bn1.running_var", "norm2.running_var"))]
    assert len(lines) == 2 and lines[0].index("[8]") == lines[1].index("[8]")
