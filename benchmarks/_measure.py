"""What the benchmark scripts share: run a command as a child, time it, read its peak RSS."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).resolve().parent / "_work"  # git-ignored; emptied at the end


def env(**extra: str) -> dict[str, str]:
    """The environment for a measured child: this checkout's bufinspect first on the path."""
    out = {**os.environ, "PYTHONPATH": str(ROOT)}
    out.update(extra)
    return out


def run_once(cmd: list[str], extra_env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process, from os.wait4's own rusage."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env(**(extra_env or {})))
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def measure(cmd: list[str], repeats: int = 5, extra_env: dict[str, str] | None = None,
            fastest: list[float] | None = None) -> tuple[float, float]:
    """(median wall seconds, max peak RSS MB) over `repeats` runs; appends the fastest run's
    wall to `fastest` when given (on a shared, busy machine the minimum is the steadier figure)."""
    runs = [run_once(cmd, extra_env) for _ in range(repeats)]
    if fastest is not None:
        fastest.append(min(w for w, _ in runs))
    return statistics.median(w for w, _ in runs), max(r for _, r in runs)


def warm_bytecode() -> None:
    """Compile bufinspect's modules into __pycache__ (git-ignored) before measuring.

    This machine sets PYTHONDONTWRITEBYTECODE=1, so without this every measured run would
    compile bufinspect's sources again (~50-100 ms); a user's first run writes the cache and
    later runs read it. Like warming the page cache, this measures the steady state."""
    import compileall

    compileall.compile_dir(str(ROOT / "bufinspect"), quiet=1)


def bufinspect(*args: str) -> list[str]:
    return [sys.executable, "-m", "bufinspect", *map(str, args)]


def machine() -> str:
    """A few lines describing this machine and the software measured (torch is not imported:
    this process's RSS would be inherited by every measured child through fork)."""
    from importlib.metadata import version

    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"- CPU: {cpu}, {os.cpu_count()} cores visible "
            f"({len(os.sched_getaffinity(0))} usable), memory {mem}\n"
            f"- {platform.platform()}\n"
            f"- Python {platform.python_version()}, torch {version('torch')}, "
            f"numpy {version('numpy')}, safetensors {version('safetensors')}\n"
            f"- load average when measured: {os.getloadavg()[0]:.1f} (other jobs share this "
            f"machine; compare ratios measured in one run)\n")


def fmt_s(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def write_section(name: str, text: str) -> None:
    """Replace this script's section of benchmarks/RESULTS.md (between its markers)."""
    path = ROOT / "benchmarks" / "RESULTS.md"
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    old = path.read_text() if path.exists() else "# bufinspect benchmark results\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)
