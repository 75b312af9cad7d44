"""Fresh virtual environments for the packaging tests: no system site packages, so no torch.

Used by tests/test_install.py and tests/test_ci.py. Installing needs a package index (PyPI or
the pip configuration's own); where none answers, the tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# wheels that mean "torch came along": torch itself, its CUDA runtime and its compiler
HEAVY = re.compile(r"^(torch|triton|nvidia[-_].*|cuda[-_].*)$")
# what a build needs from the checkout (the rest is tests, samples and benchmarks)
_NOT_BUILT = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", ".whl", "tests", "benchmarks",
                                    "sample_checkpoints", "scripts", ".ci")


def project_copy(dest: Path) -> Path:
    """The project's files as a build sees them, copied to `dest` (builds write into the tree)."""
    shutil.copytree(ROOT, dest, ignore=_NOT_BUILT)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus whatever points Python at other packages."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
                        "__PYVENV_LAUNCHER__", "PYTHONNOUSERSITE")}
    env.update(extra)
    return env


def bin_dir(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


def make(venv: Path) -> Path:
    """Create a venv without system site packages; return its python."""
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], env=clean_env(),
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:  # e.g. a Debian Python without python3-venv (no ensurepip)
        pytest.skip("cannot create a venv here: " + (r.stderr.strip().splitlines() or ["?"])[-1])
    return bin_dir(venv) / "python"


def pip_install(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m pip install ARGS`; skip the test when no package index answers."""
    r = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                        *args], capture_output=True, text=True, cwd=cwd, env=clean_env(),
                       timeout=900)
    if r.returncode != 0:
        skip_if_offline(python)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def skip_if_offline(python: Path) -> None:
    """Skip when pip cannot fetch a core dependency (no index reachable from here)."""
    with tempfile.TemporaryDirectory() as dest:
        probe = subprocess.run([str(python), "-m", "pip", "download", "--no-deps", "--dest",
                                dest, "typer>=0.26,<0.29"],
                               capture_output=True, text=True, env=clean_env(), timeout=300)
    if probe.returncode != 0:
        pytest.skip("no package index reachable to install into a fresh venv: "
                    + (probe.stderr.strip().splitlines() or ["?"])[-1])


def distributions(python: Path) -> set[str]:
    """Names of every distribution installed in the venv of `python` (lower case)."""
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps(sorted({d.metadata['Name'].lower() for d in m.distributions()})))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                         env=clean_env(), timeout=120)
    return set(json.loads(out.stdout))


def assert_light(python: Path) -> None:
    """No torch, CUDA or triton wheel in the venv, and `import torch` fails there."""
    heavy = sorted(d for d in distributions(python) if HEAVY.match(d))
    assert not heavy, f"the light core pulled {heavy}"
    r = subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=clean_env(),
                       timeout=120)
    assert r.returncode != 0, "torch is importable in the fresh venv"
