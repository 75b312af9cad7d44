"""How long `pip install .` of the light core takes in a fresh venv, and what it brings (issue 15).

Each round creates a venv without system site packages, times `pip install .` of a copy of the
checkout (and, for comparison, of the wheel it builds), checks that no torch, CUDA or triton
wheel came along, and prints the figures: median and range over the rounds, the packages, the
venv's size. pip's download cache is used as a user's would be (`--cold` disables it: then the
figure includes fetching every wheel from the index).

    python benchmarks/bench_install.py [--rounds 3] [--cold]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import fresh_venv  # noqa: E402


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _timed_install(python: Path, target: str, cwd: Path, cold: bool) -> float:
    args = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    args += ["--no-cache-dir"] if cold else []
    t = time.perf_counter()
    subprocess.run([*args, target], check=True, cwd=cwd, env=fresh_venv.clean_env(),
                   capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="no pip cache: fetch every wheel")
    opts = ap.parse_args()
    load = os.getloadavg()[0]
    dot, wheel_s, venv_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = fresh_venv.project_copy(tmp / "src")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir",
                        str(tmp / "dist"), str(src)], check=True, env=fresh_venv.clean_env())
        wheel, = (tmp / "dist").glob("bufinspect-*.whl")
        for i in range(opts.rounds):
            t = time.perf_counter()
            python = fresh_venv.make(tmp / f"venv{i}")
            venv_s.append(time.perf_counter() - t)
            dot.append(_timed_install(python, ".", src, opts.cold))
            fresh_venv.assert_light(python)
            python_w = fresh_venv.make(tmp / f"wheel{i}")
            wheel_s.append(_timed_install(python_w, str(wheel), tmp, opts.cold))
            fresh_venv.assert_light(python_w)
        names = sorted(fresh_venv.distributions(python))
        size = _size(tmp / "venv0")

    def fig(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} s (range {min(xs):.1f}-{max(xs):.1f})"

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load:.2f} at start, "
          f"{opts.rounds} rounds, pip cache {'off' if opts.cold else 'on'}")
    print(f"python -m venv (fresh, no system site packages): {fig(venv_s)}")
    print(f"pip install . (light core):                      {fig(dot)}")
    print(f"pip install bufinspect-*.whl:                    {fig(wheel_s)}")
    print(f"installed: {', '.join(names)}")
    print(f"no torch / nvidia / triton wheel; venv size {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
