"""The hostile corpus (tests/hostile/make_corpus.py) under every command: exit 2, one line naming
the file, nothing run (the sentinel folder stays empty), bounded time and memory for the bombs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostile import make_corpus

# every command that takes a checkpoint; "{}" is the case's path. Commands the CLI does not have
# yet are skipped (they run once the lead merges them).
COMMANDS = [["show", "{}"], ["show", "{}", "--stats"], ["diff", "{}", "{}"], ["check", "{}"],
            ["trend", "{}", "{}"], ["annotate", "{}", "--model", "sample_modules:SmallCNN"]]

MEMORY_LIMIT = 2 << 30  # RLIMIT_AS for the bombs
TIME_LIMIT = 20  # seconds of wall clock per bomb run

# collected from the manifest (cheap); the `corpus` fixture (conftest.py) builds the files once,
# on first use, and checks that they match it
MANIFEST = make_corpus.read_manifest()
# the cases every command must refuse; "readable" ones (round 2: planted links, surrogate keys,
# a 10 MB key, many DCP items) must be read and printed safely: tests/test_hostile_round2.py
CASES = [name for name, _, flags in MANIFEST if "readable" not in flags]
BOMBS = {name for name, _, flags in MANIFEST if "bomb" in flags}


def _case_params(names):
    """Bombs run in limited subprocesses (seconds each): marked slow, out of the fast subset."""
    return [pytest.param(n, marks=[pytest.mark.slow] if n in BOMBS else []) for n in names]


def _available_commands() -> set[str]:
    import typer

    from bufinspect.cli import app

    return set(typer.main.get_command(app).commands)


def _command_params():
    have = _available_commands()
    for cmd in COMMANDS:
        marks = [] if cmd[0] in have else [pytest.mark.skip(reason=f"no `{cmd[0]}` command yet")]
        yield pytest.param(cmd, id="-".join(c for c in cmd if c != "{}"), marks=marks)


def _sentinels(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "sentinels").iterdir())


def _check_refusal(case, code: int, stdout: str, stderr: str) -> None:
    from bufinspect.escape import path_excerpt, unsafe

    assert code == 2, (case.name, code, stdout[-500:], stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, (case.name, stderr[-2000:])
    # the file is named, escaped: no control character, bidi override or surrogate from a
    # file or a path reaches the terminal raw, and the line stays short
    assert lines[0].startswith("bufinspect: error: ") \
        and path_excerpt(str(case.path)) in lines[0], ascii(lines[0])
    assert not unsafe().search(stderr.rstrip("\n")), ascii(stderr)
    assert len(lines[0]) < 1500, (case.name, len(lines[0]))
    # a non-bufinspect exception reached the CLI's last-resort handler: a reader bug
    assert "unreadable (" not in lines[0], lines[0]
    assert "Traceback" not in stderr and stdout == ""


@pytest.mark.parametrize("command", list(_command_params()))
@pytest.mark.parametrize("name", _case_params(CASES))
def test_refused_under_every_command(corpus, cli, name, command):
    out, cases = corpus
    case = cases[name]
    args = [str(case.path) if a == "{}" else a for a in command]
    if case.bomb:
        code, stdout, stderr = _limited(args)
    else:
        r = cli(*args)
        code, stdout, stderr = r.exit_code, r.stdout, r.stderr
    _check_refusal(case, code, stdout, stderr)
    assert _sentinels(out) == [], f"{name}: a payload ran"


@pytest.mark.parametrize("name", [n for n in CASES if n not in BOMBS])
def test_load_raises_only_bufinspect_errors(corpus, name):
    """The library API: `bufinspect.load` raises InputError, nothing else, for every case (bombs
    run in a limited subprocess instead, in test_refused_under_every_command)."""
    import bufinspect

    out, cases = corpus
    case = cases[name]
    with pytest.raises(bufinspect.InputError) as info:
        bufinspect.load(str(case.path))
    assert info.value.path == str(case.path)
    assert _sentinels(out) == []


_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
from bufinspect.cli import app
app(sys.argv[1:], prog_name="bufinspect")
"""


def _limited(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI in a subprocess under RLIMIT_AS and a wall-clock timeout."""
    code = _LIMITED.format(mem=MEMORY_LIMIT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           timeout=TIME_LIMIT, env=env, errors="surrogateescape")
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args}: still running after {TIME_LIMIT} s")
    return r.returncode, r.stdout, r.stderr


def test_corpus_is_complete(corpus):
    """Every class of input the issue names has at least one case."""
    _, cases = corpus
    kinds = {c.kind for c in cases.values()}
    assert kinds == {"pickle", "zip", "legacy", "safetensors", "torchscript", "pt2", "dcp"}
    assert sum(c.bomb for c in cases.values()) >= 10
    assert all(os.path.lexists(c.path) for c in cases.values())
    # round 2: every defect class of the second attack has a case (tests/hostile/README.md)
    assert {c.klass for c in cases.values()} >= set(range(1, 12))
    json.dumps([c.name for c in cases.values()])
