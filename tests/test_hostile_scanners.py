"""The scanners users know (picklescan, fickling, modelscan) on the hostile corpus: everything
they flag, bufinspect refuses; the benign pickled module they flag, bufinspect reads without
running it. Each scanner's test is skipped when it is not installed.

The bomb cases are left out here: the scanners themselves hang or balloon on some of them
(picklescan and modelscan on zip_zip_bomb_pkl, fickling on the shared-list bombs), which is
their problem, not a verdict. test_hostile runs the bombs against bufinspect under limits."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import SAMPLES

from bufinspect.escape import path_excerpt


def _pickle_parts(path: Path) -> list[bytes]:
    """The pickles inside a case: zip members that look like pickles, or the file itself."""
    if path.is_dir():
        return [p.read_bytes() for p in sorted(path.rglob("*")) if p.name == ".metadata"]
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return [z.read(i) for i in z.infolist()
                        if i.file_size < (8 << 20) and z.read(i)[:1] == b"\x80"]
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError):
            return []
    return [path.read_bytes()]


def _picklescan(path: Path) -> bool:
    from picklescan.scanner import SafetyLevel, scan_file_path

    target = next(iter(path.rglob(".metadata")), path) if path.is_dir() else path
    r = scan_file_path(str(target))
    return bool(r.infected_files) or any(g.safety is not SafetyLevel.Innocuous for g in r.globals)


def _fickling(path: Path) -> bool:
    from fickling.analysis import Severity, check_safety
    from fickling.fickle import Pickled

    flagged = False
    for raw in _pickle_parts(path):
        try:
            flagged |= check_safety(Pickled.load(raw)).severity > Severity.LIKELY_SAFE
        except Exception:  # fickling cannot parse it: not a flag
            pass
    return flagged


def _modelscan(path: Path) -> bool:
    from modelscan.modelscan import ModelScan

    target = next(iter(path.rglob(".metadata")), path) if path.is_dir() else path
    ms = ModelScan()
    ms.scan(str(target))
    return bool(ms.issues.all_issues)


SCANNERS = {"picklescan": _picklescan, "fickling": _fickling, "modelscan": _modelscan}


def _safely(flags, path: Path) -> bool:
    """A scanner's verdict; a scanner that crashes on a case did not flag it."""
    try:
        return flags(path)
    except Exception:
        return False


def _scanner(name: str):
    pytest.importorskip(name)
    return SCANNERS[name]


@pytest.mark.parametrize("name", list(SCANNERS))
def test_bufinspect_refuses_what_scanners_flag(name, cli, corpus):
    out, cases = corpus
    flags = _scanner(name)
    flagged = [c for c in cases.values() if not c.bomb and c.expect == "refused"
               and _safely(flags, c.path)]
    assert flagged, f"{name} flagged nothing in the hostile corpus: the harness is broken"
    for case in flagged:
        r = cli("show", case.path)
        assert r.exit_code == 2 and path_excerpt(str(case.path)) in r.stderr, \
            (name, case.name, r.stdout)
        assert list((out / "sentinels").iterdir()) == []
    # what a scanner misses, bufinspect still refuses (test_hostile): print it for the README
    missed = [c.name for c in cases.values() if c.payload and c not in flagged]
    print(f"{name}: flagged {len(flagged)} of {len(cases)}; payload cases it missed: {missed}")


_READ = """
import sys
from bufinspect.cli import app
try:
    app(["show", sys.argv[1], "--format", "json"])
except SystemExit as e:
    assert e.code in (0, None), e.code
assert "sample_modules" not in sys.modules and "torch" not in sys.modules, "something ran"
"""


@pytest.mark.parametrize("name", list(SCANNERS))
def test_benign_pickled_module_they_flag_is_read(name, tmp_path):
    flags = _scanner(name)
    path = SAMPLES / "buffer_zoo_module.pt"
    if not flags(path):
        pytest.skip(f"{name} does not flag {path.name}")
    r = subprocess.run([sys.executable, "-c", _READ, str(path)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"module:pickled"' in r.stdout
