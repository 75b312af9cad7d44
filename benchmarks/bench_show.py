"""Listing cost depends on the number of tensors, not on bytes (issue 2's benchmark).

Writes a ~10 MB and a ~1 GB checkpoint with the same 256 tensors (as torch.save .pt and as
.safetensors) under benchmarks/_work/, runs the whole `bufinspect show FILE` process 5 times on
each, prints median wall time and peak RSS, and deletes the files.

    python benchmarks/bench_show.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from _measure import WORK, bufinspect, fmt_s, machine, measure, write_section

TENSORS = 256
LIMIT_S = 0.3


def make(path_stem, total_bytes: int) -> list:
    """Write the pair in a child process, so this process's RSS never leaks into the measured
    children (Linux counts a parent's RSS at fork in the child's ru_maxrss)."""
    subprocess.run([sys.executable, __file__, "--make", str(path_stem), str(total_bytes)],
                   check=True)
    return [path_stem.with_suffix(".pt"), path_stem.with_suffix(".safetensors")]


def _make(path_stem, total_bytes: int) -> None:
    import torch
    from safetensors.torch import save_file

    per = total_bytes // TENSORS // 4
    gen = torch.Generator().manual_seed(0)
    sd = {f"layers.{i // 4}.{['q', 'k', 'v', 'o'][i % 4]}.weight":
          torch.randn(per, generator=gen) for i in range(TENSORS)}
    pt = path_stem.with_suffix(".pt")
    st = path_stem.with_suffix(".safetensors")
    torch.save(sd, pt)
    save_file(sd, str(st))


def main() -> int:
    WORK.mkdir(exist_ok=True)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(machine())
    base, _ = measure([sys.executable, "-c", "pass"], repeats=5)
    say(f"python -c pass (process start-up on this machine now): {fmt_s(base)}\n")
    rows = []
    try:
        files = {"10 MB": make(WORK / "small", 10 << 20), "1 GB": make(WORK / "large", 1 << 30)}
        say(f"{'file':<20} {'size':>9} {'tensors':>8} {'output':>7} {'wall (median of 5)':>19} "
              f"{'fastest':>8} {'peak RSS':>9}")
        for label, paths in files.items():
            for p in paths:
                for fmt in ("table", "json"):
                    cmd = bufinspect("show", p, "--format", fmt)
                    measure(cmd, repeats=1)  # warm the page cache
                    best: list[float] = []
                    wall, rss = measure(cmd, repeats=5, fastest=best)
                    rows.append((p.suffix, label, fmt, wall, rss, best[0]))
                    say(f"{p.name:<20} {p.stat().st_size / 2**20:>7.0f}MB {TENSORS:>8} "
                          f"{fmt:>7} {fmt_s(wall):>19} {fmt_s(best[0]):>8} {rss:>7.0f}MB")
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    ok = True
    say()
    for suffix in (".pt", ".safetensors"):
        for fmt in ("table", "json"):
            small = next(r for r in rows if r[:3] == (suffix, "10 MB", fmt))
            large = next(r for r in rows if r[:3] == (suffix, "1 GB", fmt))
            under = max(small[3], large[3]) < LIMIT_S
            ok &= under
            say(f"{suffix:<12} {fmt:<5}: 1 GB / 10 MB listing time = {large[3] / small[3]:.2f}x "
                  f"(median), {large[5] / small[5]:.2f}x (fastest); median under {LIMIT_S} s: "
                  f"{'yes' if under else 'NO'}; fastest under {LIMIT_S} s: "
                  f"{'yes' if max(small[5], large[5]) < LIMIT_S else 'NO'}")
    write_section("bench_show", "## Listing (`python benchmarks/bench_show.py`)\n\n"
                  "256 tensors in each file; whole `bufinspect show` process.\n\n```\n"
                  + "\n".join(lines) + "\n```")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make"]:  # (the script's own child command)
        _make(Path(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    sys.exit(main())
