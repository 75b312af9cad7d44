"""Human tables hold at any width: every command at 60, 80, 120 and 200 columns.

At each width no line is wider than the terminal, every key shows whole (or shortened in the
middle of its module path with the leaf whole) and every number shows whole. Golden files pin
the exact text at 80 and 120 columns (`BUFINSPECT_REGEN_GOLDEN=1` rewrites them), and one run
goes through a real terminal (tmux) when tmux is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from bufinspect.cli import app
from bufinspect.render.layout import ELLIPSIS, cell_len, fmt_num

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
WIDTHS = (60, 80, 120, 200)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_projection = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))


class DeepNet(nn.Module):
    """Long dotted keys (60+ characters) that a narrow terminal must shorten."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleDict({"transformer_blocks": nn.Sequential(Block(), Block())})
        self.head_norm = nn.BatchNorm1d(4)

    def forward(self, x):
        for b in self.encoder["transformer_blocks"]:
            x = b.attention_projection(x)
        return self.head_norm(x)


@pytest.fixture(scope="module")
def deep(tmp_path_factory) -> Path:
    """before.pt, after.pt (trained, saved as a DDP `module.` state dict, one buffer in fp16)."""
    d = tmp_path_factory.mktemp("deep")
    torch.manual_seed(0)
    m = DeepNet()
    torch.save(m.state_dict(), d / "before.pt")
    m.train()
    for _ in range(2):
        m(torch.randn(8, 4))
    sd = m.state_dict()
    sd["head_norm.running_var"] = sd["head_norm.running_var"].half()
    torch.save({f"module.{k}": v for k, v in sd.items()}, d / "after.pt")
    torch.save(m.state_dict(), d / "mid.pt")
    # more rows than render.PLAIN_ROWS: the plain (unstyled, linear-time) table path
    many = nn.ModuleDict({"stage_one": nn.Sequential(*[nn.BatchNorm1d(2) for _ in range(60)])})
    torch.save(many.state_dict(), d / "many.pt")
    return d


def run(args: list[str], width: int, cwd: Path):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, args, env={"COLUMNS": str(width), "NO_COLOR": "1"})
    finally:
        os.chdir(old)
    return result


def json_doc(args: list[str], cwd: Path) -> dict:
    r = run(args + ["--format", "json"], 200, cwd)
    return json.loads(r.stdout)


# command id -> (arguments, folder to run in: "samples" or "deep")
CASES = {
    "show": (["show", "train_adam.pt"], "samples"),
    "show_stats": (["show", "train_adam.pt", "--stats"], "samples"),
    "show_deep_stats": (["show", "before.pt", "--stats", "--explain"], "deep"),
    "show_many": (["show", "many.pt"], "deep"),
    "diff": (["diff", "bn_before.pt", "bn_after_train.pt"], "samples"),
    "diff_deep": (["diff", "before.pt", "after.pt", "--all"], "deep"),
    "check": (["check", "bn_after_train.pt", "buffer_zoo_module.pt", "cnn_cuda1.pt",
               "--device", "cpu"], "samples"),
    "trend": (["trend", "bn_before.pt", "bn_after_train.pt", "bn_after_eval.pt"], "samples"),
    "trend_deep": (["trend", "before.pt", "mid.pt", "after.pt", "--all"], "deep"),
}
GOLDEN_CASES = ("show", "show_stats", "diff", "diff_deep", "check", "trend")


def _where(kind: str, deep: Path) -> Path:
    return ROOT / "sample_checkpoints" if kind == "samples" else deep


def _keys_and_numbers(case: str, cwd: Path) -> tuple[set[str], dict[str, set[str]]]:
    """Keys the table must show and numbers by column, from the same run's JSON document."""
    args, _ = CASES[case]
    doc = json_doc(args, cwd)
    numbers: dict[str, set[str]] = {}
    if args[0] == "show":
        keys = {e["key"] for e in doc["entries"]
                if e["role"] in ("buffer", "unknown") or "--stats" in args or "--explain" in args}
        for e in doc["entries"]:
            for name in ("min", "max", "mean", "std"):
                v = (e.get("stats") or {}).get(name)
                if isinstance(v, (int, float)):
                    numbers.setdefault(name, set()).add(fmt_num(float(v)))
    elif args[0] == "diff":
        keys = {e["key"] for e in doc["entries"] if e["status"] != "equal"}
        for e in doc["entries"]:
            for name in ("max_abs", "max_rel", "mean_abs", "rel_l2", "cosine"):
                v = e.get(name)
                if isinstance(v, (int, float)) and e["status"] != "equal":
                    numbers.setdefault(name, set()).add(fmt_num(float(v)))
    elif args[0] == "trend":
        keys = {r["key"] for r in doc["rows"]}
        for r in doc["rows"]:
            v = r["values"][-1]
            if isinstance(v, (int, float)):
                numbers.setdefault("last", set()).add(fmt_num(float(v)))
    else:
        keys = set()
    return keys, numbers


def _abbreviates(token: str, key: str) -> bool:
    """`e.t.0.attention.1.running_mean` for `encoder.transformer.0.attention.1.running_mean`."""
    tp, kp = token.split("."), key.split(".")
    return (len(tp) == len(kp) and tp[-1] == kp[-1]
            and all(t and k.startswith(t) for t, k in zip(tp[:-1], kp[:-1])))


def _shows_key(key: str, tokens: set[str]) -> bool:
    """The key whole, or shortened with its leaf whole: `…` in its module path or module names
    cut to their first letters."""
    if key in tokens:
        return True
    leaf = "." + key.rpartition(".")[2] if "." in key else ""
    for t in tokens:
        if _abbreviates(t, key):
            return True
        if ELLIPSIS in t:
            head, _, tail = t.partition(ELLIPSIS)
            if key.startswith(head) and key.endswith(tail) and (not leaf or tail.endswith(leaf)):
                return True
    return False


def assert_holds(text: str, width: int, keys: set[str], numbers: dict[str, set[str]]) -> None:
    lines = text.splitlines()
    for line in lines:
        assert cell_len(line) <= width, f"line wider than {width}: {line!r}"
    tokens = {t for line in lines for t in line.split()}
    for key in keys:
        assert _shows_key(key, tokens), f"key {key!r} split or hidden at {width}:\n{text}"
    flat = " ".join(lines)
    notes = [n.split(": not shown at")[0] for n in re.findall(r"[\w/, ]+: not shown at", flat)]
    dropped = {name.strip() for n in notes for name in n.split(",")}
    for column, values in numbers.items():
        if column not in tokens or column in dropped:  # dropped here (and the note says so)
            assert column not in tokens or "not shown at" in flat
            continue
        for v in values:
            assert v in tokens, f"number {v} ({column}) split at {width}:\n{text}"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_tables_hold(case, width, deep):
    args, kind = CASES[case]
    cwd = _where(kind, deep)
    r = run(args, width, cwd)
    assert r.exit_code in (0, 1), r.stderr + r.stdout
    keys, numbers = _keys_and_numbers(case, cwd)
    assert_holds(r.stdout, width, keys, numbers)
    assert "\x1b" not in r.stdout


@pytest.mark.parametrize("width", (80, 120))
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden(case, width, deep):
    if case == "check" and torch.cuda.is_available():
        pytest.skip("cnn_cuda1.pt adds a missing-device finding where a GPU is present")
    args, kind = CASES[case]
    r = run(args, width, _where(kind, deep))
    path = GOLDEN / f"{case}_{width}.txt"
    if os.environ.get("BUFINSPECT_REGEN_GOLDEN"):
        path.write_text(r.stdout)
    assert r.stdout == path.read_text()


def test_narrow_terminal_drops_columns_with_a_note(deep):
    r = run(["diff", "before.pt", "after.pt", "--all"], 60, deep)
    flat = " ".join(r.stdout.split())
    assert "not shown at 60 columns" in flat and "--format json" in flat
    wide = run(["diff", "before.pt", "after.pt", "--all"], 200, deep)
    assert "not shown" not in wide.stdout


def test_very_narrow_terminal_lists_entry_by_entry(deep):
    r = run(["diff", "before.pt", "after.pt", "--all"], 36, deep)
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert "─" not in r.stdout  # no table rule: the compact per-entry layout
    assert any(ln.startswith("  max_abs ") for ln in lines)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_real_terminal_at_80_columns(deep):
    """Through a real pseudo-terminal (tmux), styled output included: 80 columns hold."""
    sock = f"bufinspect-test-{os.getpid()}"
    cmd = (f"cd {deep} && COLUMNS= {sys.executable} -m bufinspect diff before.pt after.pt --all;"
           " echo __done__; sleep 30")
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    subprocess.run(tmux + ["new-session", "-d", "-x", "80", "-y", "60", cmd], check=True,
                   env={k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TMUX")})
    try:
        text = ""
        for _ in range(300):
            text = subprocess.run(tmux + ["capture-pane", "-p", "-t", "0"], capture_output=True,
                                  text=True).stdout
            if "__done__" in text:
                break
            time.sleep(0.1)
        assert "__done__" in text, text
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
    body = text.split("__done__")[0]
    keys, numbers = _keys_and_numbers("diff_deep", deep)
    assert_holds(body, 80, keys, numbers)
    assert "DIFFERENT" in body


def _readme_examples() -> list[tuple[int, list[str], str]]:
    """(width, argv, printed output) of every README block that runs `$ bufinspect` on the
    bundled samples (the diagnostics examples come from scripts/readme_diagnostics.py)."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```\n(\$ .*?)```", text, re.S):
        lines = block.split("\n")
        command, rest = lines[0], 1
        while command.endswith("\\"):  # a command continued on the next line
            command = command[:-1] + " " + lines[rest].strip()
            rest += 1
        printed = "\n".join(lines[rest:])
        m = re.match(r"\$ (?:COLUMNS=(\d+) )?bufinspect (.*)", command)
        if m and "sample_checkpoints/" in command:  # the runs on the bundled samples
            out.append((int(m.group(1) or 100), shlex.split(m.group(2)), printed))
    return out


@pytest.mark.parametrize("width, argv, printed", _readme_examples(),
                         ids=lambda v: "_".join(v[:2]) if isinstance(v, list) else None)
def test_readme_examples_are_real_runs(width, argv, printed):
    """README examples are what the command prints at 100 columns (or the COLUMNS they name)."""
    if torch.cuda.is_available() and argv[0] == "check":
        pytest.skip("a GPU adds findings and changes where the numeric checks ran")
    r = run(argv, width, ROOT)
    if os.environ.get("BUFINSPECT_REGEN_GOLDEN") and r.stdout != printed:  # rewrite README
        readme = ROOT / "README.md"
        text = readme.read_text()
        assert text.count(printed) == 1
        readme.write_text(text.replace(printed, r.stdout))
        printed = r.stdout
    assert r.stdout == printed
