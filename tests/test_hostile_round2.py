"""Hostile inputs, round 2: what the corpus run (test_hostile.py) cannot show by an exit code.

- readable hostile files (lone surrogates, a 10 MB key, planted links) print safely;
- no output option can overwrite an input or write through a symlink (class 3);
- many DCP items read under a 2 GiB address-space limit (class 6, slow);
- a 1 MB pickle of colliding keys is refused (the documented gap, class 2);
- a 100,000-deep --from-metrics JSON and a `$\\foo$` key under trend --plot (class 11);
- a property test: generated pickles (deep nesting, shared-reference towers, huge ints,
  colliding keys) through the reader, each in a forked child under a time and memory budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bufinspect.escape import unsafe
from hostile import make_corpus

MEMORY_LIMIT = 2 << 30  # RLIMIT_AS, as for the corpus bombs (test_hostile.py)
TIME_LIMIT = 20
_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
from bufinspect.cli import app
app(sys.argv[1:], prog_name="bufinspect")
"""


def _limited(args: list[str], timeout: int = TIME_LIMIT) -> tuple[int, str, str]:
    """The CLI in a subprocess under RLIMIT_AS and a wall-clock timeout."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        r = subprocess.run([sys.executable, "-c", _LIMITED.format(mem=MEMORY_LIMIT), *args],
                           capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args}: still running after {timeout} s")
    return r.returncode, r.stdout, r.stderr


READABLE = ["r2_c3_planted_sidecar_link", "r2_c3_planted_tmp_link", "r2_c5_surrogate_key",
            "r2_c5_huge_key", "r2_c6_dcp_many_items"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sentinels(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "sentinels").iterdir())


def _clean_output(text: str) -> None:
    """No raw control character, bidi override or lone surrogate (newlines and the table's
    own box drawing are fine)."""
    bad = unsafe().search(text.replace("\n", ""))
    assert bad is None, ascii(text[max(0, bad.start() - 80): bad.end() + 80])


# ---- readable hostile files print safely (class 5) -------------------------------------------

@pytest.mark.parametrize("args", [["show", "{}"], ["show", "{}", "--format", "markdown"],
                                  ["show", "{}", "--format", "json"], ["show", "{}", "--stats"],
                                  ["check", "{}"], ["diff", "{}", "{}", "--all"]],
                         ids=lambda a: "-".join(x for x in a if x != "{}"))
@pytest.mark.parametrize("name", READABLE)
def test_readable_hostile_files_print_safely(corpus, cli, name, args):
    out, cases = corpus
    case = cases[name]
    assert case.expect == "readable"
    r = cli(*[str(case.path) if a == "{}" else a for a in args])
    assert r.exit_code in (0, 1), (r.exit_code, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stderr == ""
    # a 10 MB key is cut in tables (rich padded every row to it: 2 GB of output); JSON keeps
    # it exact (key and module name), once per place
    assert len(r.stdout) < (4 << 20) + (30 << 20 if "json" in args else 0), len(r.stdout)
    if "json" in args:
        doc = json.loads(r.stdout)  # strict JSON; surrogates survive as \\ud800 escapes
        if name == "r2_c5_surrogate_key":
            assert doc["entries"][0]["key"] == "k\ud800"
    else:
        _clean_output(r.stdout)
    assert _sentinels(out) == []


def test_huge_key_is_cut_in_tables_but_exact_in_json(corpus, cli):
    _, cases = corpus
    path = str(cases["r2_c5_huge_key"].path)
    table = cli("show", path).stdout
    assert max(len(line) for line in table.splitlines()) < 2000
    assert "more characters" in table
    doc = json.loads(cli("show", path, "--format", "json").stdout)
    assert max(len(e["key"]) for e in doc["entries"]) == 10 << 20


# ---- no output option overwrites an input or writes through a symlink (class 3) ------------

@pytest.fixture
def pair(tmp_path):
    import torch

    sys.path.insert(0, str(make_corpus.SAMPLES))
    from sample_modules import SmallCNN

    torch.manual_seed(0)
    a, b = SmallCNN(), SmallCNN()
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save(b.state_dict(), tmp_path / "b.pt")
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def _targets(root: Path) -> dict[str, str]:
    """Output names an attacker (or a typo) can offer, each aimed at something to protect."""
    os.link(root / "a.pt", root / "a_hardlink.pt")
    os.symlink(root / "elsewhere" / "victim", root / "link_out.json")
    os.mkfifo(root / "fifo_out.json")
    return {"input A": str(root / "a.pt"), "input B": str(root / "b.pt"),
            "A by another name": str(root / "." / "a.pt"),
            "a hard link to A": str(root / "a_hardlink.pt"),
            "a symlink": str(root / "link_out.json"), "a FIFO": str(root / "fifo_out.json")}


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (os.readlink(p) if p.is_symlink() else
                                       _sha(p) if p.is_file() else "special")
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("option", ["diff --save-metrics", "trend --plot"])
def test_no_output_option_overwrites_an_input_or_follows_a_link(pair, cli, option):
    targets = _targets(pair)
    before = _snapshot(pair)
    for what, target in targets.items():
        a, b = str(pair / "a.pt"), str(pair / "b.pt")
        if option == "diff --save-metrics":
            r = cli("diff", a, b, "--all", "--save-metrics", target)
        else:
            r = cli("trend", a, b, "--plot", target)
        assert r.exit_code == 2, (what, r.exit_code, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bufinspect: error: "), (what, r.stderr)
        assert _snapshot(pair) == before, what
        assert not (pair / "elsewhere" / "victim").exists(), what


def test_save_metrics_still_writes_a_new_file(pair, cli):
    out = pair / "m.json"
    r = cli("diff", str(pair / "a.pt"), str(pair / "b.pt"), "--all", "--save-metrics", str(out))
    assert r.exit_code in (0, 1), r.stderr
    assert json.loads(out.read_text())["command"] == "diff"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's 0600
    assert [p.name for p in pair.iterdir() if "bufinspect-tmp" in p.name] == []


def test_save_metrics_refuses_a_file_inside_an_input_folder(tmp_path, cli, samples):
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(samples / "cnn.safetensors", folder / "model-00001.safetensors")
    r = cli("diff", str(folder), str(folder), "--save-metrics", str(folder / "m.json"))
    assert r.exit_code == 2 and "inside the input folder" in r.stderr, r.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["model-00001.safetensors"]


def test_annotate_never_writes_through_planted_links(corpus, cli, tmp_path):
    out, cases = corpus
    victim = cases["r2_c3_planted_sidecar_link"].path
    r = cli("annotate", str(victim), "--model", "sample_modules:SmallCNN")
    assert r.exit_code == 2 and "symlink" in r.stderr, r.stderr
    assert os.path.islink(str(victim) + ".bufinspect.json")
    assert _sentinels(out) == []
    # the safetensors rewrite: its old fixed temp name is a planted link; on a copy (annotate
    # rewrites the file itself, which the corpus must not)
    src = cases["r2_c3_planted_tmp_link"].path
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(src, work / "victim.safetensors")
    trap = tmp_path / "trap"
    os.symlink(trap, work / "victim.safetensors.bufinspect-tmp")
    r = cli("annotate", str(work / "victim.safetensors"), "--model", "sample_modules:SmallCNN")
    assert r.exit_code == 0, r.stderr
    assert not trap.exists() and os.path.islink(work / "victim.safetensors.bufinspect-tmp")
    assert sorted(p.name for p in work.iterdir()) == ["victim.safetensors",
                                                     "victim.safetensors.bufinspect-tmp"]
    doc = json.loads(cli("show", str(work / "victim.safetensors"), "--format", "json").stdout)
    assert {e["evidence"] for e in doc["entries"]} == {"metadata:bufinspect"}


def test_annotate_refuses_a_symlinked_safetensors_file(samples, tmp_path, cli):
    real = tmp_path / "real.safetensors"
    shutil.copy(samples / "cnn.safetensors", real)
    os.symlink(real, tmp_path / "link.safetensors")
    before = _sha(real)
    r = cli("annotate", str(tmp_path / "link.safetensors"), "--model", "sample_modules:SmallCNN")
    assert r.exit_code == 2 and "symlink" in r.stderr, r.stderr
    assert _sha(real) == before


def test_writer_creates_temp_files_exclusively(tmp_path):
    from bufinspect.errors import UsageError
    from bufinspect.formats import write

    target = tmp_path / "out.json"
    write.write_atomic(str(target), "one\n")
    write.write_atomic(str(target), b"two\n")  # replaced in one rename
    assert target.read_text() == "two\n"
    os.symlink(tmp_path / "gone", tmp_path / "ln")
    with pytest.raises(UsageError, match="symlink"):
        write.write_atomic(str(tmp_path / "ln"), "x")
    with pytest.raises(UsageError, match="input"):
        write.write_atomic(str(target), "x", inputs=[str(tmp_path / "." / "out.json")])
    assert not (tmp_path / "gone").exists() and target.read_text() == "two\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith("bufinspect-tmp")] == []


# ---- memory while reading many DCP items (class 6) --------------------------------------------

@pytest.mark.slow
def test_many_dcp_items_read_under_a_2_gib_limit(tmp_path):
    folder = make_corpus.dcp_many(tmp_path / "dcp", 20_000)
    code, stdout, stderr = _limited(["show", str(folder), "--format", "json"])
    assert code == 0, stderr[-2000:]
    assert len(json.loads(stdout)["entries"]) == 20_000


def test_unpickler_is_freed_without_the_collector():
    """The allowlist holds no bound method: an unpickler dies with its last reference."""
    import gc
    import io
    import weakref

    from bufinspect.formats import _unpickle

    gc.disable()
    try:
        u = _unpickle._Unpickler(io.BytesIO(b"\x80\x02}."), _unpickle.storage_from_pid,
                                 _unpickle.UnpickleLog())
        ref = weakref.ref(u)
        u.load()
        del u
        assert ref() is None
    finally:
        gc.enable()


# ---- the documented hash-collision gap (class 2) -------------------------------------------

def test_one_megabyte_of_colliding_keys_is_refused(tmp_path):
    keys = b"".join(make_corpus._colliding_int(k) + make_corpus.NONE for k in range(1, 80_000))
    pkl = make_corpus.PROTO2 + make_corpus.EMPTY_DICT + make_corpus.MARK + keys \
        + make_corpus.SETITEMS + make_corpus.STOP
    assert len(pkl) > 1_000_000
    path = tmp_path / "collide.pt"
    make_corpus._write_zip(path, [("collide/data.pkl", pkl)])
    started = time.monotonic()
    code, _, stderr = _limited(["show", str(path)])  # under the corpus time and memory caps
    assert code == 2 and "hash-collision" in stderr, stderr
    print(f"1 MB of colliding keys refused in {time.monotonic() - started:.2f} s (process)")


# ---- specific messages (class 11) ------------------------------------------------------------

def test_deep_metrics_json_is_a_clear_error(tmp_path, cli):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    r = cli("diff", "--from-metrics", str(path))
    assert r.exit_code == 2 and "nested too deeply" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_trend_plot_prints_keys_as_literal_text(tmp_path, cli):
    pytest.importorskip("matplotlib")
    import torch
    from safetensors.torch import save_file

    for i in range(2):
        save_file({"$\\foo$": torch.full((3,), float(i)), "a$b$c{": torch.ones(2) * i,
                   "x_^{}": torch.zeros(2) + i}, str(tmp_path / f"{i}.safetensors"))
    out = tmp_path / "plot.png"
    r = cli("trend", str(tmp_path / "0.safetensors"), str(tmp_path / "1.safetensors"), "--all",
            "--plot", str(out))
    assert r.exit_code == 0, r.stderr
    (line,) = r.stderr.strip().splitlines()  # one line: "wrote FILE (N of M keys)"
    assert line.startswith(f"bufinspect: wrote {out} ("), line
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- property: generated pickles under a time and memory budget -----------------------------

BUDGET_S = 20  # per example (the corpus cap), in a forked child: SIGALRM ends even C code
BUDGET_BYTES = 768 << 20  # address space the child may add to its parent's

_P = make_corpus


def _deep(depth: int, kind: str) -> bytes:
    if kind == "tuple":
        return _P._deep_tuple(depth)
    if kind == "list":
        return _P.MARK * depth + b"l" * depth
    return (_P.EMPTY_DICT + _P.s("k")) * depth + _P.NONE + _P.SETITEM * depth


piece = st.one_of(
    st.builds(lambda d, k: ("deep", _deep(d, k)), st.integers(1, 400_000),
              st.sampled_from(["tuple", "list", "dict"])),
    st.builds(lambda n: ("tower", _P._tuple_tower(n, 0)), st.integers(1, 60)),
    st.builds(lambda n: ("ltower", _P._list_tower(n, 0)), st.integers(1, 60)),
    st.builds(lambda bits: ("int", b"\x8b" + struct.pack("<i", (bits + 8) // 8)
                            + ((1 << bits) - 1).to_bytes((bits + 8) // 8, "little")),
              st.integers(1, 2_000_000)),
    st.builds(lambda n: ("collide", _P.EMPTY_DICT + _P.MARK + b"".join(
        _P._colliding_int(k) + _P.NONE for k in range(1, n)) + _P.SETITEMS),
        st.integers(1, 60_000)),
)
use = st.sampled_from(["value", "key", "set item", "dimension"])


def _pickle(p: tuple[str, bytes], how: str) -> bytes:
    value = p[1]
    if how == "key":
        body = _P.EMPTY_DICT + value + _P.NONE + _P.SETITEM
    elif how == "set item":
        body = _P.call(_P.glob("builtins", "set"), _P.EMPTY_LIST + _P.MARK + value + _P.APPENDS)
    elif how == "dimension":
        body = _P.dct(w=_P._tensor(_P.tup(value), _P.tup(_P.i(1))))
    else:
        body = _P.dct(model=value)
    return _P.PROTO2 + body + _P.STOP


def _child_load(path: str) -> int:
    """In the forked child: 0 for a Checkpoint or a BufinspectError, 3 for anything else."""
    import bufinspect

    with open("/proc/self/status") as f:
        vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + BUDGET_BYTES, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(BUDGET_S)
    try:
        bufinspect.load(path)
    except bufinspect.BufinspectError as exc:
        return 0 if exc.path == path and "\n" not in str(exc) else 4
    except BaseException:
        return 3
    return 0


@pytest.mark.slow  # 40 forked examples: 20-70 s on the shared 2-core machine
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(p=piece, how=use)
def test_generated_pickles_stay_within_budget(tmp_path, p, how):
    path = tmp_path / f"gen_{p[0]}_{how.replace(' ', '_')}.pt"
    _P._write_zip(path, [("gen/data.pkl", _pickle(p, how))])
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 5
        try:
            code = _child_load(str(path))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        pytest.fail(f"{p[0]} as {how}: killed by {sig} (SIGALRM: over {BUDGET_S} s)")
    assert os.WEXITSTATUS(status) == 0, (p[0], how, os.WEXITSTATUS(status))


# ---- the pre-scan itself: it must walk every valid pickle to its end -------------------------

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=5)
    | st.frozensets(st.integers(), max_size=5) | st.sets(st.text(max_size=3), max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None, database=None)
@given(obj=plain, protocol=st.integers(0, 5), shared=st.booleans())
def test_prescan_walks_every_valid_pickle_to_its_end(obj, protocol, shared):
    """A walk that stopped early ("malformed") would leave the rest to the unpickler unscanned:
    every pickle the standard pickler writes is walked to its STOP."""
    import pickle

    from bufinspect.formats import _prescan

    value = [obj, obj, (obj, [obj])] if shared else obj  # memo references
    raw = pickle.dumps(value, protocol=protocol)
    assert _prescan.scan(raw) == len(raw)


@pytest.mark.parametrize("what", ["deep key", "tuple tower key", "colliding keys",
                                  "colliding set items", "huge int", "memo slot"])
def test_prescan_refuses_each_kind_of_bomb(what):
    from bufinspect.formats import _prescan

    bombs = {
        "deep key": _P.PROTO2 + _P.EMPTY_DICT + _P._deep_tuple(5000) + _P.NONE + _P.SETITEM,
        "tuple tower key": _P.PROTO2 + _P.EMPTY_DICT + _P._tuple_tower(40) + _P.NONE
        + _P.SETITEM,
        "colliding keys": _P.PROTO2 + _P.EMPTY_DICT + _P.MARK + b"".join(
            _P._colliding_int(k) + _P.NONE for k in range(1, 300)) + _P.SETITEMS,
        "colliding set items": _P.PROTO2 + _P.call(_P.glob("builtins", "set"), _P.lst(*(
            _P._colliding_int(k) for k in range(1, 300)))),
        "huge int": _P.PROTO2 + b"\x8a\xff" + b"\x01" * 255 + _P.POP + b"\x8b"
        + struct.pack("<i", 4096) + b"\x01" * 4096,
        "memo slot": _P.PROTO2 + _P.NONE + b"r" + struct.pack("<I", 1 << 30),
    }
    with pytest.raises(_prescan.Refused):
        _prescan.scan(bombs[what] + _P.STOP)
