"""The CLI habits users bring from diff, git, h5diff and pytest (issue #14), through the runner."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from bufinspect.cli import app
from test_diff import validate

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"


def invoke(*args, env: dict | None = None, width: int = 100):
    environ = {"COLUMNS": str(width), "NO_COLOR": None}
    environ.update(env or {})
    return CliRunner().invoke(app, [str(a) for a in args], env=environ)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))

    def forward(self, x):
        x = self.bn(self.conv(x)).mean((2, 3))
        return self.head(x)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A before/after pair of a real model: a few training steps move weights and statistics."""
    d = tmp_path_factory.mktemp("pair")
    torch.manual_seed(0)
    m = Net()
    torch.save(m.state_dict(), d / "a.pt")
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(8, 3, 6, 6)).sum().backward()
        opt.step()
    torch.save(m.state_dict(), d / "b.pt")
    return d, m, opt


# ---- diff ---------------------------------------------------------------------------------


def test_diff_filter_and_role_restrict_keys(pair):
    d, _, _ = pair
    doc = json.loads(invoke("diff", d / "a.pt", d / "b.pt", "--all", "--filter", "head.*",
                            "--format", "json").stdout)
    assert doc["entries"] and all(e["key"].startswith("head.") for e in doc["entries"])
    doc = json.loads(invoke("diff", d / "a.pt", d / "b.pt", "--role", "parameter",
                            "--format", "json").stdout)
    keys = {e["key"] for e in doc["entries"]}
    want = {k for k, _ in Net().named_parameters()}
    assert keys == want  # --role widens the scope to every role, then keeps parameters only
    r = invoke("diff", d / "a.pt", d / "b.pt", "--filter", "nothing.*")
    assert r.exit_code == 0 and "no key matches --filter" in r.stderr


def test_alignment_is_stated_once(tmp_path, pair):
    d, _, _ = pair
    sd = torch.load(d / "b.pt")
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "ddp.pt")
    r = invoke("diff", d / "a.pt", tmp_path / "ddp.pt", "--all", width=200)
    header = r.stdout.splitlines()[1]
    assert "strip module. (automatic); B: module.<key>" in header
    assert r.stdout.count("module.") == header.count("module.")  # not in any row
    doc = json.loads(invoke("diff", d / "a.pt", tmp_path / "ddp.pt", "--format", "json").stdout)
    assert all(e["key_b"] == "module." + e["key"] for e in doc["entries"])  # JSON keeps B's key


def test_diff_filter_reads_only_the_selected_tensors(pair, monkeypatch):
    """--filter narrows the comparison itself: the other tensors are never read."""
    from bufinspect.analysis import diff as diffing

    compared = []
    real = diffing.compare_pairs

    def spy(pairs, *args, **kwargs):
        compared.extend(a.key for a, _ in pairs)
        return real(pairs, *args, **kwargs)

    monkeypatch.setattr(diffing, "compare_pairs", spy)
    d, _, _ = pair
    r = invoke("diff", d / "a.pt", d / "b.pt", "--all", "--filter", "head.2.*", "-q")
    assert r.exit_code == 1
    assert sorted(compared) == ["head.2.bias", "head.2.weight"]


def test_diff_quiet_is_exit_code_only(pair):
    d, _, _ = pair
    r = invoke("diff", d / "a.pt", d / "b.pt", "-q")
    assert r.exit_code == 1 and r.stdout == ""
    r = invoke("diff", d / "a.pt", d / "a.pt", "--quiet")
    assert r.exit_code == 0 and r.stdout == ""


def test_diff_stat_per_module(pair):
    d, m, _ = pair
    r = invoke("diff", d / "a.pt", d / "b.pt", "--all", "--stat")
    assert r.exit_code == 1
    doc = json.loads(invoke("diff", d / "a.pt", d / "b.pt", "--all", "--stat",
                            "--format", "json").stdout)
    validate(doc)
    moved = [e for e in doc["entries"] if e["key"].startswith("bn.") and e["status"] == "changed"]
    lines = r.stdout.splitlines()
    row = next(ln for ln in lines if ln.startswith("bn "))
    assert re.search(rf"\b{len(moved)}/5\b", row), row
    assert "modules changed" in r.stdout and "max_abs" not in r.stdout.split("\n")[1]
    mods = {x["module"]: x for x in doc["modules"]}
    assert mods["bn"]["changed"] == len(moved) > 0 and mods["bn"]["total"] == 5
    top = max(moved, key=lambda e: e["rel_l2"])
    assert top["key"] == mods["bn"]["largest"]["key"]
    assert mods["bn"]["largest"]["value"] == top["rel_l2"]
    assert mods["head.1"]["total"] == 5 and len(doc["entries"]) == len(m.state_dict())


def test_diff_limit_cuts_the_table_not_the_json(pair):
    d, _, _ = pair
    r = invoke("diff", d / "a.pt", d / "b.pt", "--all", "--limit", "2", width=200)
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith(("changed", "close"))]
    assert len(rows) == 2 and "more entries (--limit 2" in r.stdout
    doc = json.loads(invoke("diff", d / "a.pt", d / "b.pt", "--all", "--limit", "2",
                            "--format", "json").stdout)
    assert len(doc["entries"]) == len(Net().state_dict()) == 16


def test_dtype_change_reports_what_the_cast_lost(tmp_path):
    torch.manual_seed(1)
    big = torch.rand(64) * 1e5  # some values beyond float16's 65504
    tiny = torch.randn(64) * 1e-9
    w = torch.randn(32)
    torch.save({"bn.running_var": big, "bn.running_mean": tiny, "w": w}, tmp_path / "a.pt")
    torch.save({"bn.running_var": big.half(), "bn.running_mean": tiny.bfloat16(),
                "w": w.half() + 1}, tmp_path / "b.pt")
    r = invoke("diff", tmp_path / "a.pt", tmp_path / "b.pt", "--all", "--format", "json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    validate(doc)
    e = {x["key"]: x for x in doc["entries"]}
    var = e["bn.running_var"]
    assert var["status"] == "dtype" and var["cast"]["exact"] is True
    ref = big.double()
    back = big.half().double()
    finite = torch.isfinite(back)
    assert var["cast"]["overflow"] == int((~finite).sum()) > 0
    assert var["cast"]["max_abs"] == pytest.approx(float((ref - back)[finite].abs().max()))
    mean = e["bn.running_mean"]
    bf = tiny.bfloat16().double()
    assert mean["cast"]["exact"] is True
    assert mean["cast"]["max_rel"] == pytest.approx(
        float(((tiny.double() - bf).abs() / tiny.double().abs()).max()))
    assert mean["max_abs"] == pytest.approx(float((tiny.double() - bf).abs().max()))
    # B moved beyond the cast: not exact, A against B is the +1
    assert e["w"]["cast"]["exact"] is False and e["w"]["max_abs"] == pytest.approx(1, rel=1e-2)
    table = invoke("diff", tmp_path / "a.pt", tmp_path / "b.pt", "--all", width=200).stdout
    assert "B is exactly A cast" in table and "overflow to inf" in table
    assert "the values also moved" in table


# ---- check --------------------------------------------------------------------------------


@pytest.fixture
def nan_file(tmp_path):
    sd = {f"layer{i}.running_var": torch.ones(4) for i in range(6)}
    for k in sd:
        sd[k][0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    return tmp_path / "nan.pt"


def test_check_one_result_line_per_file(nan_file):
    r = invoke("check", SAMPLES / "bn_before.pt", nan_file, "--device", "cpu", width=120)
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert any(ln.startswith("PASS") and "bn_before.pt" in ln for ln in lines)
    fail = next(ln for ln in lines if ln.startswith("FAIL"))
    assert "nan.pt" in fail and "1 error" in fail


def test_check_verbose_lists_every_key(nan_file):
    keys = [f"layer{i}.running_var" for i in range(6)]
    short = invoke("check", nan_file, "--device", "cpu", width=200).stdout
    assert "more" in short and not all(k in short for k in keys)
    for fmt in ("table", "markdown", "github"):
        r = invoke("check", nan_file, "--device", "cpu", "-v", "--format", fmt, width=200)
        out = r.stdout.replace("\\_", "_")  # markdown escapes underscores in table cells
        assert all(k in out for k in keys), (fmt, r.stdout)


def test_unreadable_file_among_several(tmp_path, nan_file):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = invoke("check", SAMPLES / "bn_before.pt", bad, nan_file, "--device", "cpu", width=120)
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [f"bufinspect: error: {bad}: not a checkpoint "
                                             "(unrecognized format)"]
    assert "ERROR" in r.stdout and "nan.pt" in r.stdout and "FAIL" in r.stdout  # others checked
    doc = json.loads(invoke("check", SAMPLES / "bn_before.pt", bad, nan_file, "--device", "cpu",
                            "--format", "json").stdout)
    validate(doc)
    assert doc["errors"] == [{"path": str(bad), "message": "not a checkpoint (unrecognized "
                                                            "format)"}]
    assert doc["ok"] is False and any(f["id"] == "nan" for f in doc["findings"])
    gh = invoke("check", bad, nan_file, "--device", "cpu", "--format", "github").stdout
    assert gh.startswith(f"::error file={bad},title=unreadable::")


def test_check_folder(tmp_path, nan_file):
    from safetensors.torch import save_file

    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(SAMPLES / "bn_before.pt", folder / "one.pt")
    shutil.copy(nan_file, folder / "two.pt")
    (folder / "notes.txt").write_text("not a checkpoint")
    sharded = folder / "llm"
    sharded.mkdir()
    save_file({"a": torch.zeros(2)}, str(sharded / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(2)}, str(sharded / "model-00002-of-00002.safetensors"))
    dist = folder / "dcp"
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(3)}, checkpoint_id=str(dist))
    doc = json.loads(invoke("check", folder, "--device", "cpu", "--format", "json").stdout)
    assert doc["paths"] == [str(dist), str(sharded), str(folder / "one.pt"),
                            str(folder / "two.pt")]
    assert {f["path"] for f in doc["findings"] if f["id"] == "nan"} == {str(folder / "two.pt")}
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("check", empty)
    assert r.exit_code == 2 and "no checkpoint in it" in r.stderr


# ---- show ---------------------------------------------------------------------------------


def test_show_header_counts_elements(pair):
    d, m, _ = pair
    r = invoke("show", d / "b.pt", width=120)
    params = sum(p.numel() for p in m.parameters())
    buffers = sum(b.numel() for b in m.buffers())
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("elements"))
    assert f"parameter {params:,}" in line and f"buffer {buffers:,}" in line


def test_show_training_values(tmp_path, pair):
    _, m, opt = pair
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # step order: irrelevant to what is saved
        sched.step()
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": 7, "global_step": 1234,
                "loss": 0.125, "name": "run-1"}, tmp_path / "train.pt")
    doc = json.loads(invoke("show", tmp_path / "train.pt", "--format", "json").stdout)
    validate(doc)
    v = doc["values"]
    assert v["epoch"] == 7 and v["global_step"] == 1234 and v["loss"] == 0.125
    assert v["name"] == "run-1"
    group = opt.state_dict()["param_groups"][0]
    assert v["optimizer/param_groups/0/lr"] == group["lr"] == 0.05
    assert v["optimizer/param_groups/0/momentum"] == 0.9
    assert v["scheduler/last_epoch"] == sched.last_epoch == 1
    assert v["scheduler/_last_lr"] == sched.get_last_lr()
    assert not any(k.startswith("optimizer/state") for k in v)  # tensors stay entries
    table = invoke("show", tmp_path / "train.pt", width=100).stdout
    assert "Values (" in table and "global_step" in table and "1234" in table


def test_lightning_values_skip_loop_bookkeeping(tmp_path, pair):
    _, m, opt = pair
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    ckpt = {"epoch": 4, "global_step": 400, "pytorch-lightning_version": "2.5.0",
            "state_dict": m.state_dict(), "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [sched.state_dict()],
            "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4, "completed": 4}}}},
            "callbacks": {"ModelCheckpoint": {"best_model_score": 0.5}}}
    torch.save(ckpt, tmp_path / "l.ckpt")
    v = json.loads(invoke("show", tmp_path / "l.ckpt", "--format", "json").stdout)["values"]
    assert v["epoch"] == 4 and v["global_step"] == 400
    assert v["optimizer_states/0/param_groups/0/lr"] == opt.param_groups[0]["lr"]
    assert v["lr_schedulers/0/step_size"] == 1
    assert not any(k.startswith(("loops", "callbacks")) for k in v)


def test_show_filter_matching_nothing_says_so(pair):
    d, _, _ = pair
    r = invoke("show", d / "a.pt", "--filter", "decoder.*")
    assert r.exit_code == 0 and "no key matches --filter 'decoder.*'" in r.stderr


def test_role_metadata_is_summarised(tmp_path):
    import bufinspect

    m = Net()
    bufinspect.save(m, str(tmp_path / "m.safetensors"))
    r = invoke("show", tmp_path / "m.safetensors", width=120)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("metadata"))
    n = len(m.state_dict())
    assert f"roles of {n} tensors written by bufinspect annotate" in line
    assert "{" not in line and "schema" not in line


# ---- trend --------------------------------------------------------------------------------


def test_trend_markdown_and_status_column(tmp_path, pair):
    d, _, _ = pair
    r = invoke("trend", d / "a.pt", d / "b.pt", d / "b.pt", "--format", "markdown")
    assert r.exit_code == 0 and r.stdout.startswith("## bufinspect trend of 3 checkpoints")
    assert "| key | trend | last | max |" in r.stdout  # no empty status column
    sd = torch.load(d / "b.pt")
    sd.pop("bn.running_var")
    torch.save(sd, tmp_path / "c.pt")
    r = invoke("trend", d / "a.pt", tmp_path / "c.pt", width=120)
    assert "status" in r.stdout.splitlines()[1] and "removed at step 1" in r.stdout


def test_trend_plot(tmp_path, pair):
    pytest.importorskip("matplotlib")
    import bufinspect
    from bufinspect.render import trend

    d, _, _ = pair
    out = tmp_path / "drift.png"
    r = invoke("trend", d / "a.pt", d / "b.pt", d / "b.pt", "--all", "--plot", out, "--top", "3")
    assert r.exit_code == 0 and out.stat().st_size > 1000
    assert "3 of 16 keys; --top 3" in r.stderr
    report = bufinspect.trend([str(d / "a.pt"), str(d / "b.pt")], scope="all")
    series = trend.plot_series(report, top=None, scale="normalized")
    assert all(max(ys) == pytest.approx(1.0) for _, ys in series if max(ys) > 0)
    raw = dict(trend.plot_series(report, top=None, scale="linear"))
    assert raw["bn.num_batches_tracked"][-1] == 3.0
    styles = {tuple(sorted(trend.line_style(i).items())) for i in range(40)}
    assert len(styles) == 40


# ---- help, colour, markdown, annotate -------------------------------------------------------


def test_help_as_users_write_it():
    top = invoke("-h", width=80)
    assert top.exit_code == 0 and "--install-completion" in top.stdout
    commands = top.stdout.split("Commands:")[1]
    assert "..." not in commands  # summaries not cut
    assert "Usage: bufinspect diff [OPTIONS] A B" in invoke("diff", "-h").stdout
    assert "Usage: bufinspect check [OPTIONS] PATH..." in invoke("check", "-h").stdout
    assert "Usage: bufinspect trend [OPTIONS] PATH..." in invoke("trend", "-h").stdout
    diff_help = invoke("diff", "--help", width=120).stdout
    assert "table|json|markdown|github" in diff_help and "auto|cpu|cuda" in diff_help
    assert "auto|always|never" in diff_help
    trend_help = invoke("trend", "--help", width=120).stdout
    assert "max_abs|rel_l2|mean_abs|max_rel" in trend_help
    assert "table|json|markdown" in trend_help
    check_help = invoke("check", "--help", width=80).stdout
    ids = check_help.split("Finding ids:")[1]
    assert "negative-variance" in ids
    assert all(len(line) <= 80 for line in check_help.splitlines())


def test_shell_completion():
    r = invoke("--show-completion", "bash")
    assert r.exit_code == 0 and "_bufinspect_completion" in r.stdout and "complete" in r.stdout
    # completion proposes the commands
    env = {"_BUFINSPECT_COMPLETE": "complete_bash", "COMP_WORDS": "bufinspect di",
           "COMP_CWORD": "1"}
    r = CliRunner().invoke(app, [], env=env, prog_name="bufinspect")
    assert "diff" in r.stdout


def test_color_flag_and_no_color():
    args = ("diff", SAMPLES / "bn_before.pt", SAMPLES / "bn_after_train.pt")
    assert "\x1b[" in invoke(*args, "--color", "always").stdout
    assert "\x1b[" not in invoke(*args, "--color", "never").stdout
    assert "\x1b[" not in invoke(*args, "--color", "auto").stdout  # not a terminal
    from bufinspect.cli.runtime import stdout_console

    os.environ["NO_COLOR"] = "1"
    try:
        assert stdout_console().color_system is None  # bold and dim go too
        assert stdout_console(color="always").color_system is not None  # the flag wins
    finally:
        del os.environ["NO_COLOR"]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_no_color_in_a_real_terminal():
    """On a real terminal rich styles by default; NO_COLOR removes bold and dim as well."""
    def capture(env_prefix: str) -> str:
        sock = f"bufinspect-color-{os.getpid()}-{len(env_prefix)}"
        tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
        cmd = (f"{env_prefix} {sys.executable} -m bufinspect diff {SAMPLES}/bn_before.pt "
               f"{SAMPLES}/bn_after_train.pt; echo __done__; sleep 30")
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TMUX", "COLUMNS")}
        subprocess.run(tmux + ["new-session", "-d", "-x", "100", "-y", "40", cmd], check=True,
                       env=env | {"TERM": "xterm-256color"})
        try:
            for _ in range(300):
                text = subprocess.run(tmux + ["capture-pane", "-e", "-p", "-t", "0"],
                                      capture_output=True, text=True).stdout
                if "__done__" in text:
                    return text
                time.sleep(0.1)
            raise AssertionError(text)
        finally:
            subprocess.run(tmux + ["kill-server"], capture_output=True)

    assert "\x1b[" in capture("")
    assert "\x1b[" not in capture("NO_COLOR=1")


def test_markdown_code_spans_are_not_escaped(tmp_path):
    a = tmp_path / "cnn_after.pt"
    b = tmp_path / "odd`name.pt"
    shutil.copy(SAMPLES / "bn_before.pt", a)
    shutil.copy(SAMPLES / "bn_after_train.pt", b)
    md = invoke("show", a, "--format", "markdown").stdout
    assert f"## bufinspect show `{a}`" in md and "cnn\\_after" not in md.splitlines()[0]
    md = invoke("diff", a, b, "--format", "markdown").stdout
    assert f"``{b}``" in md.splitlines()[0]
    md = invoke("check", a, b, "--format", "markdown", "--device", "cpu").stdout
    assert f"`{a}`" in md and "cnn\\_after" not in md.split("Files:")[1].splitlines()[0]


def test_annotate_with_a_model_that_does_not_fit(tmp_path):
    model_py = tmp_path / "mymodels.py"
    model_py.write_text("import torch.nn as nn\n"
                        "def wider():\n"
                        "    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))\n"
                        "    m.add_module('extra', nn.BatchNorm1d(4))\n    return m\n")
    torch.save(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).state_dict(), tmp_path / "m.pt")
    sys.path.insert(0, str(tmp_path))
    try:
        r = invoke("annotate", tmp_path / "m.pt", "--model", "mymodels:wider")
        assert r.exit_code == 2 and "does not fit the file" in r.stderr
        assert not (tmp_path / "m.pt.bufinspect.json").exists()
        r = invoke("annotate", tmp_path / "m.pt", "--model", "mymodels:wider", "--partial")
        assert r.exit_code == 0 and (tmp_path / "m.pt.bufinspect.json").exists()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mymodels", None)
    assert "Exit 2, writing nothing, when the model does not fit" in " ".join(
        invoke("annotate", "--help", width=200).stdout.split())
